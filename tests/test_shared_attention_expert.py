"""pi0's shared-attention expert (`expert_attention: every_layer`, vlablocks/core/action_model/shared_attention.py):
expert layer l reads the VLM's own layer-l keys and values, and knowledge insulation stops the gradient at each."""

from __future__ import annotations

import pytest
import torch

from vlablocks.core.action_model.shared_attention import SharedAttentionFlowHead
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.vlm.attention import language_layers

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
HEAD = {"name": "flow_matching", "hidden_dim": 32, "num_heads": 2, "cross_attention_gate_init": 1.0}


def tiny(framework: str = "QwenFlowMatching", **options):
    """(Policy, a training batch of 3 synthetic samples) with the every-layer expert."""
    section = {"name": framework, "expert_attention": "every_layer", **options}
    section["action_model"] = {**HEAD, **section.get("action_model", {})}
    if framework == "QwenPI05":
        section["fast"] = {"vocab_size": 256}
    experiment = parse_experiment({"platform": PLATFORM, "framework": section})
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    if framework == "QwenPI05":
        policy.processor.fit(examples)  # its FAST answers
    return policy, policy.processor(examples)


def test_each_layers_keys_and_values_are_the_vlms_own_projections():
    policy, batch = tiny(action_model={"num_layers": 2})
    model = policy.model
    assert isinstance(model.action_model, SharedAttentionFlowHead)
    with torch.no_grad():
        out, conditioning = model.encode(batch)
    layers = language_layers(model.vlm)
    assert len(conditioning.layer_keys_values) == len(layers) == 2
    head_dim = model.action_model.config.vlm_head_dim
    for index, (layer, (keys, values)) in enumerate(zip(layers, conditioning.layer_keys_values)):
        normed = layer.input_layernorm(out.hidden_states[index])  # the layer's input: hidden_states[l], normed
        with torch.no_grad():
            expected_k = layer.self_attn.k_proj(normed)
            expected_v = layer.self_attn.v_proj(normed)
        batch_size, length, _ = expected_k.shape
        torch.testing.assert_close(keys, expected_k.view(batch_size, length, -1, head_dim).transpose(1, 2))
        torch.testing.assert_close(values, expected_v.view(batch_size, length, -1, head_dim).transpose(1, 2))


def block_outputs(head, conditioning, x_t, t) -> list[torch.Tensor]:
    seen = []
    handles = [b.register_forward_hook(lambda m, args, out: seen.append(out)) for b in head.blocks]
    try:
        with torch.no_grad():
            head.velocity(head.encode_context(conditioning), x_t, t, None)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_expert_layer_l_reads_vlm_layer_l_and_nothing_else():
    policy, batch = tiny(action_model={"num_layers": 2, "use_state": False})
    model = policy.model
    with torch.no_grad():
        _, conditioning = model.encode(batch)
    x_t, t = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0)), torch.full((3,), 0.5)
    base = block_outputs(model.action_model, conditioning, x_t, t)
    original = list(conditioning.layer_keys_values)
    for perturbed in (0, 1):  # only layer `perturbed`'s keys change
        conditioning.layer_keys_values = [
            (k + 1.0, v) if i == perturbed else (k, v) for i, (k, v) in enumerate(original)
        ]
        moved = block_outputs(model.action_model, conditioning, x_t, t)
        changed = [float((a - b).abs().max()) for a, b in zip(base, moved)]
        # expert block l reads VLM layer l: blocks before `perturbed` are untouched, block `perturbed` moves
        assert all(c == 0.0 for c in changed[:perturbed]), changed
        assert changed[perturbed] > 1e-5, changed


def test_fewer_expert_layers_read_the_last_vlm_layers():
    policy, batch = tiny(action_model={"num_layers": 1, "use_state": False})
    model = policy.model
    with torch.no_grad():
        _, conditioning = model.encode(batch)
    contexts = model.action_model.encode_context(conditioning)
    assert len(contexts) == 1 and contexts[0].keys is conditioning.layer_keys_values[-1][0]


@pytest.mark.parametrize("framework", ["QwenFlowMatching", "QwenPI05"])
def test_insulation_gives_exactly_zero_vlm_gradient_from_the_expert_loss(framework):
    extra = {"auxiliary_losses": {"readout": {"weight": 1.0}}} if framework == "QwenFlowMatching" else {}
    policy, batch = tiny(framework, insulate_vlm=True, action_model={"num_layers": 2}, **extra)
    model = policy.model

    def expert_loss(model, batch):
        if framework == "QwenPI05":
            return model.loss_terms(batch)["flow"]
        _, conditioning = model.encode(batch)
        return model.action_model.compute_loss(conditioning, batch.actions, batch.action_is_pad, batch.state)["loss"]

    model.zero_grad(set_to_none=True)
    expert_loss(model, batch).backward()
    vlm_grads = [p.grad for p in model.vlm.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in vlm_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.action_model.parameters())
    # without insulation the expert's loss reaches every layer's key and value projections
    open_policy, open_batch = tiny(framework, insulate_vlm=False, action_model={"num_layers": 2})
    open_model = open_policy.model
    open_model.zero_grad(set_to_none=True)
    expert_loss(open_model, open_batch).backward()
    for layer in language_layers(open_model.vlm):
        for projection in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_every_layer_needs_flow_matching_options_and_sample_actions_runs_the_shared_expert():
    with pytest.raises(ValueError, match="set it to flow_matching"):
        tiny(action_model={"name": "layerwise_flow_matching", "num_layers": 2})
    with pytest.raises(ValueError, match="lower num_layers"):
        tiny(action_model={"num_layers": 3})
    policy, batch = tiny(action_model={"num_layers": 2})
    with torch.no_grad():
        actions = policy.model.eval().sample_actions(batch, torch.Generator().manual_seed(0))["actions"]
    assert actions.shape == (3, 4, 3) and bool(torch.isfinite(actions).all())
