"""Action heads: one contract suite over every registered continuous head, plus per-head behaviour.

A new head file is covered by the contract tests automatically (they iterate the registry); the tiny
builds and inputs are in tests/head_helpers.py, the position-encoding tests in test_head_position_encoding.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from head_helpers import (
    CONTINUOUS_HEADS,
    OVERFIT_OPTIONS,
    OVERFIT_OPTIONS_PER_HEAD,
    OVERFIT_STEPS,
    SIZES,
    B,
    D,
    H,
    T,
    build,
    make_batch,
    make_conditioning,
    seeded_loss,
    wake,
)

from vlablocks.core.action_model.base import Conditioning, SamplesFromNoise
from vlablocks.core.action_model.flow_matching import euler_integrate, sample_beta
from vlablocks.core.action_model.masking import hold_last_valid
from vlablocks.core.build import build as build_component
from vlablocks.core.config import ConfigError
from vlablocks.core.registry import ACTION_MODELS


def test_every_action_model_declares_its_typed_config():
    assert {"l1_regression", "diffusion", "flow_matching", "layerwise_flow_matching"} <= set(CONTINUOUS_HEADS)
    # FAST is an action tokenizer, not a head: it lives in the processor (vlablocks/core/processor/fast_tokenizer.py).
    assert "fast" not in ACTION_MODELS
    for entry in ACTION_MODELS.entries():
        fields = dataclasses.fields(entry.config_class)
        assert fields[0].name == "name" and fields[0].default == entry.name, entry.name
        assert entry.config_class.__dataclass_params__.frozen, entry.name


def test_misspelled_option_names_the_closest_key():
    with pytest.raises(ConfigError, match="did you mean action_model.hidden_dim"):
        build_component(ACTION_MODELS, {"name": "flow_matching", "hiden_dim": 8}, **SIZES)


# ---------------------------------------------------------------------------------------------
# The contract, over every registered continuous head.


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_shapes_finite_loss_and_gradients(name):
    head = build(name)
    conditioning = make_conditioning(head)
    actions, is_pad, state = make_batch()
    out = head.compute_loss(conditioning, actions, is_pad, state)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    predicted = head.predict(conditioning, state, generator=torch.Generator().manual_seed(0))
    assert predicted.shape == (B, T, D) and torch.isfinite(predicted).all()


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_a_bfloat16_context_feeds_a_float32_head(name):
    head = build(name)
    conditioning = make_conditioning(head)
    low = dataclasses.replace(
        conditioning, tokens=conditioning.tokens.bfloat16(), layers=[x.bfloat16() for x in conditioning.layers]
    )
    actions, is_pad, state = make_batch()
    assert torch.isfinite(head.compute_loss(low, actions, is_pad, state)["loss"])
    assert head.predict(low, state).dtype == torch.float32


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_padded_targets_do_not_reach_the_loss(name):
    head = build(name)
    conditioning = make_conditioning(head)
    actions, is_pad, state = make_batch()
    reference = seeded_loss(head, conditioning, actions, is_pad, state)
    garbage = actions.clone()
    garbage[is_pad] = torch.randn(int(is_pad.sum()), D) * 100
    garbage[1, -1] = float("nan")
    assert torch.equal(seeded_loss(head, conditioning, garbage, is_pad, state), reference)
    # The same change on a valid step does move the loss (so the check above can fail).
    moved = actions.clone()
    moved[0, -1] = -moved[0, -1].sign() * 0.9  # inside [-1, 1], so a binned head's target moves too
    assert not torch.allclose(seeded_loss(head, conditioning, moved, is_pad, state), reference)


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_predict_is_deterministic_for_a_seed(name):
    head = build(name)
    conditioning = make_conditioning(head)
    _, _, state = make_batch()
    first = head.predict(conditioning, state, generator=torch.Generator().manual_seed(3))
    second = head.predict(conditioning, state, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_overfits_a_fixed_tiny_batch(name):
    fields = {f.name for f in dataclasses.fields(ACTION_MODELS.entry(name).config_class)}
    options = {k: v for k, v in OVERFIT_OPTIONS.items() if k in fields} | OVERFIT_OPTIONS_PER_HEAD.get(name, {})
    head = build(name, **options)
    conditioning = make_conditioning(head)
    actions, is_pad, state = make_batch()
    with torch.no_grad():
        before = seeded_loss(head, conditioning, actions, is_pad, state, draws=4).item()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(OVERFIT_STEPS):
        loss = head.compute_loss(conditioning, actions, is_pad, state)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = seeded_loss(head, conditioning, actions, is_pad, state, draws=4).item()
    assert after * 10 <= before, f"{name}: loss {before:.4f} -> {after:.4f} in {OVERFIT_STEPS} steps"


def test_generative_heads_draw_different_samples_for_different_seeds():
    for name in ("diffusion", "flow_matching", "layerwise_flow_matching"):
        head = build(name)
        conditioning = make_conditioning(head)
        _, _, state = make_batch()
        first = head.predict(conditioning, state, generator=torch.Generator().manual_seed(0))
        other = head.predict(conditioning, state, generator=torch.Generator().manual_seed(1))
        assert not torch.allclose(first, other), name


def test_hold_last_valid_fills_padding_from_valid_steps_only():
    actions = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    is_pad = torch.tensor([[False, False, True, True], [True, True, True, True]])
    filled = hold_last_valid(actions, is_pad)
    assert filled[0, :, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert filled[1, :, 0].tolist() == [0.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Flow matching.


def test_euler_integration_of_a_linear_field_matches_the_closed_form():
    a = torch.tensor([[-0.5, 0.3], [0.2, -1.0]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.25]], dtype=torch.float64)

    def field(x, t):
        return x @ a.T

    # Exactly Euler's closed form, and (many steps) the ODE's closed form x(1) = expm(A) x0.
    for steps in (1, 4, 10):
        expected = x0 @ torch.linalg.matrix_power(torch.eye(2, dtype=torch.float64) + a / steps, steps).T
        torch.testing.assert_close(euler_integrate(field, x0, steps), expected)
    exact = x0 @ torch.linalg.matrix_exp(a).T
    torch.testing.assert_close(euler_integrate(field, x0, 2000), exact, atol=1e-3, rtol=0)


def test_euler_follows_the_time_convention_noise_at_0_data_at_1():
    # The flow-matching target field of one data point a: v(x, t) = (a - x) / (1 - t). Its paths are
    # straight lines x_t = (1 - t) x0 + t a, so Euler lands on a exactly for any step count.
    a = torch.tensor([[0.7, -0.2, 0.1]], dtype=torch.float64)
    x0 = torch.tensor([[-1.0, 2.0, 0.5]], dtype=torch.float64)
    for steps in (1, 3, 8):
        landed = euler_integrate(lambda x, t: (a - x) / (1 - t[:, None]), x0, steps)
        torch.testing.assert_close(landed, a)


def test_training_time_follows_the_configured_beta():
    head = build("flow_matching")
    t = head.sample_time(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert 0.0 <= t.min() and t.max() <= 0.999
    # t = 0.999 * (1 - u), u ~ Beta(1.5, 1): E[t] = 0.999 * 0.4; more mass at the noisy end (t < 0.5).
    assert abs(t.mean().item() - 0.999 * 0.4) < 0.01
    assert (t < 0.5).float().mean() > 0.6
    u = sample_beta(2.0, 3.0, 20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs(u.mean().item() - 0.4) < 0.01 and abs(u.var().item() - 0.04) < 0.003  # Beta(2, 3)


@pytest.mark.parametrize("name", ["flow_matching", "layerwise_flow_matching"])
def test_sampling_encodes_the_context_once_and_integrates_n_steps(name):
    head = build(name, num_inference_steps=5)
    calls = {"context": 0, "block": 0}
    for encoder in head.context_encoders:
        encoder.register_forward_hook(lambda *_: calls.__setitem__("context", calls["context"] + 1))
    head.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("block", calls["block"] + 1))
    _, _, state = make_batch()
    head.predict(make_conditioning(head), state, generator=torch.Generator().manual_seed(0))
    assert calls == {"context": len(head.context_encoders), "block": 5}
    calls.update(context=0, block=0)
    head.predict(make_conditioning(head), state, generator=torch.Generator().manual_seed(0), num_steps=2)
    assert calls["block"] == 2


@pytest.mark.parametrize("repeats", [1, 3])
def test_repeated_diffusion_steps_draws_each_sample_k_times(repeats):
    head = build("flow_matching", repeated_diffusion_steps=repeats)
    seen = []
    head.action_encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    actions, is_pad, state = make_batch()
    head.compute_loss(make_conditioning(head), actions, is_pad, state)
    (x_t,) = seen
    assert x_t.shape == (B * repeats, T, D)
    if repeats > 1:  # the copies of one sample got different noise / time
        assert not torch.allclose(x_t[0], x_t[1])


def test_missing_state_is_a_clear_error():
    head = build("flow_matching")
    actions, is_pad, _ = make_batch()
    with pytest.raises(ValueError, match="state .* is required; pass state or set use_state: false"):
        head.compute_loss(make_conditioning(head), actions, is_pad, None)


# ---------------------------------------------------------------------------------------------
# Layerwise flow matching.


@pytest.mark.parametrize("selection, used, unused", [("first", 1, 3), ("last", 3, 1)])
def test_vl_layer_selection_reads_the_chosen_layers(selection, used, unused):
    head = wake(build("layerwise_flow_matching", num_layers=2, vl_layer_selection=selection))
    conditioning = make_conditioning(head)  # 3 VLM layers + embeddings
    _, _, state = make_batch()

    def predict(c):
        return head.predict(c, state, generator=torch.Generator().manual_seed(0))

    reference = predict(conditioning)
    for index, should_change in ((used, True), (unused, False), (0, False)):
        layers = list(conditioning.layers)
        layers[index] = layers[index] + 3.0 * torch.randn_like(layers[index])
        changed = not torch.allclose(predict(dataclasses.replace(conditioning, layers=layers)), reference)
        assert changed == should_change, (selection, index)


def test_concat_cross_context_changes_the_context_not_the_parameters():
    plain = wake(build("layerwise_flow_matching", use_concat_cross_context=False))
    concat = build("layerwise_flow_matching", use_concat_cross_context=True)
    concat.load_state_dict(plain.state_dict())  # the same parameter set: only the context differs
    conditioning = make_conditioning(plain)
    _, _, state = make_batch()
    outputs = [h.predict(conditioning, state, generator=torch.Generator().manual_seed(0)) for h in (plain, concat)]
    assert not torch.allclose(*outputs)


def test_layerwise_needs_enough_layers():
    head = build("layerwise_flow_matching", num_layers=4)
    _, _, state = make_batch()
    with pytest.raises(ValueError, match="num_layers=4 DiT blocks need 4 VLM layers, but conditioning.layers holds 3"):
        head.predict(make_conditioning(head), state)
    conditioning = dataclasses.replace(make_conditioning(head), layers=None)
    with pytest.raises(ValueError, match="needs conditioning.layers"):
        head.predict(conditioning, state)


# ---------------------------------------------------------------------------------------------
# 2-D position encoding of the vision tokens in the context.

# ---------------------------------------------------------------------------------------------
# L1 regression and diffusion specifics.


def test_l1_groups_several_query_tokens_per_step():
    head = build("l1_regression", tokens_per_step=3)
    assert head.num_query_tokens == 3 * T
    conditioning = make_conditioning(head)
    assert conditioning.tokens.shape[1] == 3 * T
    assert head.predict(conditioning).shape == (B, T, D)
    # Step t reads only its own group of queries.
    tokens = conditioning.tokens.clone()
    tokens[:, 3:6] += 1.0  # the group of step 1
    delta = (head.predict(dataclasses.replace(conditioning, tokens=tokens)) - head.predict(conditioning)).abs()
    assert delta[:, 1].sum() > 0 and delta[:, [0, 2, 3]].sum() == 0
    with pytest.raises(ValueError, match=r"action-query hidden states \[B, 12, 16\]"):
        head.predict(Conditioning(tokens=torch.zeros(B, T, H)))


def test_l1_uses_state_only_when_asked():
    _, _, state = make_batch()
    for use_state in (True, False):
        head = build("l1_regression", use_state=use_state)
        conditioning = make_conditioning(head)
        changed = not torch.allclose(head.predict(conditioning, state), head.predict(conditioning, state + 1.0))
        assert changed == use_state


def test_diffusion_uses_ddim_with_the_configured_steps():
    head = build("diffusion", num_train_timesteps=30, num_inference_steps=6)
    assert isinstance(head.scheduler, DDIMScheduler)
    assert head.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert head.scheduler.config.num_train_timesteps == 30
    timesteps = []
    head.time_encoder.register_forward_hook(lambda module, inputs, output: timesteps.append(inputs[0][0].item()))
    _, _, state = make_batch()
    head.predict(make_conditioning(head), state, generator=torch.Generator().manual_seed(0))
    assert timesteps == [25, 20, 15, 10, 5, 0]
    assert np.all(np.diff(timesteps) < 0)


def test_diffusion_predict_is_reconstruct_from_its_drawn_start_and_steps_match_the_scheduler_s():
    """predict(c, s, g) == reconstruct(c, draw_noise(B, g), s); another step count mid-way and back again reuses the
    right timesteps and the scheduler state that goes with them."""
    head = wake(build("diffusion", num_train_timesteps=30, num_inference_steps=6))
    assert isinstance(head, SamplesFromNoise)
    conditioning, (_, _, state) = make_conditioning(head), make_batch()
    drawn = head.predict(conditioning, state, generator=torch.Generator().manual_seed(3))
    start = head.draw_noise(B, torch.Generator().manual_seed(3), torch.device("cpu"))
    torch.testing.assert_close(head.reconstruct(conditioning, start, state), drawn, rtol=0, atol=0)
    assert head.sampling_timesteps(3) == (20, 10, 0) and head.scheduler.num_inference_steps == 3
    assert head.sampling_timesteps() == (25, 20, 15, 10, 5, 0) and head.scheduler.num_inference_steps == 6
    torch.testing.assert_close(head.reconstruct(conditioning, start, state), drawn, rtol=0, atol=0)


def test_diffusion_clips_the_x0_estimate_to_the_action_range():
    # Visiting the last squaredcos_cap_v2 timestep (alpha_bar ~ 0) divides the x0 estimate by ~0.
    _, _, state = make_batch()
    for clip, bounded in ((True, True), (False, False)):
        head = build("diffusion", num_train_timesteps=20, num_inference_steps=20, clip_sample=clip)
        sample = head.predict(make_conditioning(head), state, generator=torch.Generator().manual_seed(0))
        assert bool(sample.abs().max() <= 1.0) == bounded, clip
