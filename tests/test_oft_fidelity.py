"""QwenOFT's OpenVLA-OFT options (docs/fidelity.md), each against a hand-built expectation on a tiny model:
bidirectional action attention, the proprio input token, and FiLM inside every vision-transformer block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.film import patch_samples
from vlablocks.core.framework.proprio import PROPRIO_TOKEN
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.vlm.attention import group_attention_mask

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}


def tiny(**options):
    """(Policy, its batch of 3 synthetic samples) for a tiny QwenOFT with `options`."""
    experiment = parse_experiment({"platform": PLATFORM, "framework": {"name": "QwenOFT", **options}})
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples)).eval()
    return policy, policy.processor(examples, targets=False)


# ---- bidirectional action attention -----------------------------------------------------------------


def test_group_mask_by_hand():
    # one left-padded row: [pad, a, b, Q, Q]; the two Q positions see each other, the rest is causal, the pad is
    # seen by no real token and reads itself alone
    ids = torch.tensor([[0, 5, 6, 9, 9]])
    mask = group_attention_mask(ids, torch.tensor([[0, 1, 1, 1, 1]]), [9], torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 1],
        [0, 1, 1, 1, 1],
    ]
    assert mask.shape == (1, 1, 5, 5) and float(mask.min()) == torch.finfo(torch.float32).min


def query_states_after_perturbing_a_later_query(action_attention: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (query states [B, Q, H] before and after the input embedding of the last query alone changes; the
    number of prompt positions before the queries, whose states must not move either way)."""
    policy, batch = tiny(action_attention=action_attention)
    model = policy.model
    with torch.no_grad():
        before = model.encode(batch)
        embedding = model.vlm.model.get_input_embeddings()
        embedding.weight[model.query_token_ids[-1]] += 1.0  # only the last query's input changes
        after = model.encode(batch)
    first_query = int(before.token_positions[model.query_token_ids[0]][0, 0])
    states = [model.queries(out, batch).tokens for out in (before, after)]
    prefix = [out.last_hidden_state[:, :first_query] for out in (before, after)]
    assert torch.equal(prefix[0], prefix[1])  # the prompt stays causal: nothing before the queries moves
    return states[0], states[1], first_query


def test_bidirectional_queries_read_later_queries_and_causal_ones_do_not():
    before, after, _ = query_states_after_perturbing_a_later_query("bidirectional")
    moved = (after - before).abs().amax(dim=(0, 2))  # [Q]: how far each query's state moved
    assert bool((moved[:-1] > 1e-4).all()), moved  # every earlier query reads the changed one
    before, after, _ = query_states_after_perturbing_a_later_query("causal")
    moved = (after - before).abs().amax(dim=(0, 2))
    assert bool((moved[:-1] == 0).all()) and float(moved[-1].detach()) > 1e-4, moved


def test_bidirectional_attention_refuses_flash_attention():
    from vlablocks.core.vlm.attention import with_group_attention

    policy, batch = tiny(action_attention="bidirectional")
    base = policy.model.vlm.model.model
    base.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="attn_implementation: sdpa"):
            with_group_attention(base, policy.model.vlm.model_kwargs(batch.vlm), policy.model.query_token_ids)
    finally:
        base.config._attn_implementation = "sdpa"


# ---- the proprio token ---------------------------------------------------------------------------------


def test_proprio_token_sits_before_the_queries_and_carries_the_projected_state():
    policy, batch = tiny(proprio="llm_token")
    model = policy.model
    assert model.proprio is None  # nothing is added to the query outputs in this mode
    token = model.proprio_token.token_id
    ids = batch.vlm.input_ids
    first_query = (ids == model.query_token_ids[0]).nonzero()[:, 1]
    assert torch.equal((ids == token).nonzero()[:, 1], first_query - 1)  # one per prompt, right before the queries
    assert PROPRIO_TOKEN in model.vlm.tokenizer.decode(ids[0])
    with torch.no_grad():
        out = model.encode(batch)
        embedded = out.hidden_states[0][ids == token]  # the LLM's input embedding at the token: [B, H]
        expected = model.proprio_token.proj(batch.state)
        torch.testing.assert_close(embedded, expected)
        moved = model.queries(model.encode(batch.__class__(**{**vars(batch), "state": batch.state + 1.0})), batch)
    change = (moved.tokens - model.queries(out, batch).tokens).abs().max()
    assert float(change.detach()) > 1e-4  # the state moves the queries


def test_proprio_token_needs_a_state():
    policy, batch = tiny(proprio="llm_token")
    with pytest.raises(ValueError, match="needs a `state`"):
        policy.model.encode(batch.__class__(**{**vars(batch), "state": None}))


def test_proprio_token_hook_refuses_a_prompt_with_two_and_leaves_other_embeddings_alone():
    policy, batch = tiny(proprio="llm_token")
    model = policy.model
    token, embedding = model.proprio_token.token_id, model.vlm.model.get_input_embeddings()
    plain = torch.tensor([[5, 6, 7]] * 3)
    with torch.no_grad(), model.proprio_token.applied(model.vlm, batch.state):
        torch.testing.assert_close(embedding(plain), embedding.weight[plain])  # no proprio token: unchanged
        with pytest.raises(ValueError, match="exactly once"):
            embedding(torch.tensor([[token, 6, token]] * 3))


# ---- FiLM in every vision block --------------------------------------------------------------------------


def test_film_scales_and_shifts_every_vision_block_by_hand_computed_values():
    """OFT's placement: y = x + Attn(norm1 x); y <- y (1 + gamma_l) + beta_l; out = y + MLP(norm2 y)."""
    policy, batch = tiny(use_film=True, film="vision_blocks")
    model = policy.model
    blocks = model.vlm.model.model.visual.blocks
    film = model.vision_film
    assert len(film.to_scale_shift) == len(blocks) >= 2 and model.film is None
    # gamma_l = 0.5 (l + 1), beta_l = -0.1 (l + 1) whatever the instruction: W_l = 0, c_l set by hand
    with torch.no_grad():
        for layer, linear in enumerate(film.to_scale_shift):
            width = linear.out_features // 2
            gamma, beta = torch.full((width,), 0.5 * (layer + 1)), torch.full((width,), -0.1 * (layer + 1))
            linear.bias.copy_(torch.cat([gamma, beta]))
    seen = []  # (block input, its kwargs, its output)
    pooled = torch.zeros(3, model.vlm.hidden_size)
    with film.applied(model.vlm, batch.vlm, pooled):
        handles = [
            b.register_forward_hook(lambda m, args, kwargs, out: seen.append((args[0], kwargs, out)), with_kwargs=True)
            for b in blocks
        ]
        try:
            with torch.no_grad():
                model.vlm(batch.vlm)
        finally:
            for handle in handles:
                handle.remove()
    assert len(seen) == len(blocks)
    assert all(not b._forward_hooks and not b._forward_pre_hooks and not b.attn._forward_hooks for b in blocks)
    for layer, (block, (x, kwargs, filmed)) in enumerate(zip(blocks, seen)):
        with torch.no_grad():  # by hand, FiLM's hooks removed
            attn_kwargs = {k: kwargs[k] for k in ("cu_seqlens", "position_embeddings")}
            y = x + block.attn(block.norm1(x), **attn_kwargs)
            y = y * (1 + 0.5 * (layer + 1)) - 0.1 * (layer + 1)
            expected = y + block.mlp(block.norm2(y))
        torch.testing.assert_close(filmed, expected)


def test_film_reads_the_prompt_text_not_the_answer_nor_the_special_tokens():
    """A co-training VL row's answer (labels != -100) and the action queries do not enter the instruction embedding:
    changing them leaves it unchanged, while changing an instruction word moves it."""
    from vlablocks.core.framework.film import instruction_embedding

    policy, batch = tiny(use_film=True)
    model = policy.model
    inputs = batch.vlm
    special = model.query_token_ids
    base = instruction_embedding(model.vlm, inputs, special)
    text = inputs.attention_mask.bool() & (inputs.input_ids != model.vlm.image_token_id)
    text &= ~torch.isin(inputs.input_ids, torch.tensor(special))
    last_text = int(text[0].nonzero()[-1])  # pretend the last prompt-text token of row 0 is an answer token
    labels = torch.full_like(inputs.input_ids, -100)
    labels[0, last_text] = inputs.input_ids[0, last_text]
    ids = inputs.input_ids.clone()
    ids[0, last_text] = 7  # a different answer token
    answered = inputs.__class__(**{**vars(inputs), "input_ids": ids, "labels": labels})
    unanswered = inputs.__class__(**{**vars(inputs), "labels": labels})
    torch.testing.assert_close(
        instruction_embedding(model.vlm, answered, special)[0], instruction_embedding(model.vlm, unanswered, special)[0]
    )
    moved = instruction_embedding(model.vlm, inputs.__class__(**{**vars(inputs), "input_ids": ids}), special)
    assert float((moved[0] - base[0]).abs().max().detach()) > 0  # as an instruction token it counts
    expected = model.vlm.model.get_input_embeddings().weight[inputs.input_ids[1][text[1]]].mean(0)
    torch.testing.assert_close(base[1], expected)  # the plain mean over row 1's prompt text, by hand


def test_patch_samples_from_the_precomputed_layout_equal_those_from_the_grids():
    """Compiled calls map tower patches to samples from the layout's host ints; eager from the grids' values."""
    experiment = parse_experiment({"platform": PLATFORM, "framework": {"name": "QwenOFT"}})
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, num_views=2, seed=4)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    inputs, vlm = policy.processor(examples, targets=False).vlm, policy.model.vlm
    from_grids = patch_samples(inputs, vlm.merge_size)
    from_layout = patch_samples(dataclasses.replace(inputs, layout=vlm.layout(inputs)), vlm.merge_size)
    assert torch.equal(from_layout, from_grids)
    assert from_grids.tolist() == sorted(from_grids.tolist()) and set(from_grids.tolist()) == {0, 1, 2}
    assert len(from_grids) == int(inputs.image_grid_thw.prod(-1).sum())  # every patch of the 6 views


def test_film_in_vision_blocks_starts_as_the_identity_and_depends_on_the_instruction():
    policy, batch = tiny(use_film=True, film="vision_blocks")
    plain_policy, _ = tiny()
    with torch.no_grad():
        filmed = policy.model.encode(batch).last_hidden_state
        plain = plain_policy.model.encode(batch).last_hidden_state
        torch.testing.assert_close(filmed, plain)  # zero-initialised: the same network at step 0
        for linear in policy.model.vision_film.to_scale_shift:
            torch.nn.init.normal_(linear.weight, std=0.5)
        pooled_changes = policy.model.encode(batch).last_hidden_state
    assert float((pooled_changes - plain).abs().max()) > 1e-3


# ---- the diffusion variant: noisy actions through the LLM ------------------------------------------------

DDIM = {"name": "diffusion", "hidden_dim": 32, "num_blocks": 1, "num_train_timesteps": 20, "num_inference_steps": 3}


def test_noisy_actions_enter_the_query_inputs_with_the_time():
    policy, batch = tiny(noisy_actions="llm_input", action_model=DDIM)
    model = policy.model
    noisy = model.noisy_actions
    x_t = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([0, 7, 19])
    embedding = model.vlm.model.get_input_embeddings()
    ids = batch.vlm.input_ids
    queries = torch.isin(ids, torch.tensor(model.query_token_ids))
    with torch.no_grad(), noisy.applied(model.vlm, x_t, timesteps):
        out = model.encode(batch)
        # by hand: E[<act_i>] + W_a x_t[:, i] + tau(k) at the T query positions, the plain embedding elsewhere
        expected = embedding.weight[ids] * 1.0
        added = noisy.proj(x_t) + noisy.time(timesteps.float()).unsqueeze(1)
        expected[queries] = expected[queries] + added.reshape(-1, added.shape[-1])
    text = ~out.vision_mask  # the vision positions hold the image features instead
    torch.testing.assert_close(out.hidden_states[0][text], expected[text])
    with torch.no_grad(), noisy.applied(model.vlm, x_t + 1.0, timesteps):
        moved = model.queries(model.encode(batch), batch).tokens
    change = (moved - model.queries(out, batch).tokens).abs().max()
    assert float(change.detach()) > 1e-4  # the chunk goes through the LLM


def test_noisy_actions_hook_refuses_a_prompt_missing_a_query_and_leaves_other_embeddings_alone():
    policy, _ = tiny(noisy_actions="llm_input", action_model=DDIM)
    model = policy.model
    embedding, queries = model.vlm.model.get_input_embeddings(), model.query_token_ids
    x_t, timesteps = torch.zeros(2, 4, 3), torch.tensor([3, 4])
    plain = torch.tensor([[5, 6, 7]] * 2)
    with torch.no_grad(), model.noisy_actions.applied(model.vlm, x_t, timesteps):
        torch.testing.assert_close(embedding(plain), embedding.weight[plain])  # no query: unchanged
        with pytest.raises(ValueError, match="needs the 4 action queries"):
            embedding(torch.tensor([[5, *queries[:3]]] * 2))


def test_noisy_actions_sampling_runs_the_vlm_once_per_denoising_step_and_the_loss_trains():
    policy, batch = tiny(noisy_actions="llm_input", action_model=DDIM)
    model = policy.model
    calls = []
    handle = model.vlm.register_forward_hook(lambda *args: calls.append(1))
    try:
        actions = model.sample_actions(batch, torch.Generator().manual_seed(0))["actions"]
    finally:
        handle.remove()
    assert len(calls) == DDIM["num_inference_steps"] and actions.shape == (3, 4, 3)
    train_batch = policy.processor(synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4))  # with actions
    model = policy.model.train()
    loss = model(train_batch)["loss"]
    loss.backward()
    assert loss.item() > 0 and model.noisy_actions.proj.weight.grad.abs().sum() > 0  # the projector learns


def test_noisy_actions_need_the_ddim_head():
    with pytest.raises(ValueError, match="action_model.name: diffusion with repeated_diffusion_steps: 1"):
        tiny(noisy_actions="llm_input")
    with pytest.raises(ValueError, match="repeated_diffusion_steps: 1"):
        tiny(noisy_actions="llm_input", action_model={**DDIM, "repeated_diffusion_steps": 2})
