"""Readout regression (vlablocks/core/framework/readout.py): the auxiliary L1 loss of QwenFlowMatching and
knowledge insulation, checked against hand computations on a tiny model."""

from __future__ import annotations

import pytest
import torch

from vlablocks.core.action_model.masking import masked_mean
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
HEAD = {"name": "flow_matching", "hidden_dim": 32, "num_layers": 1, "num_heads": 2, "cross_attention_gate_init": 1.0}


def tiny(**options):
    experiment = parse_experiment(
        {"platform": PLATFORM, "framework": {"name": "QwenFlowMatching", "action_model": HEAD, **options}}
    )
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4)
    torch.manual_seed(0)
    return build_policy(experiment, synthetic_norm_stats(examples)), examples  # (Policy, samples)


def vlm_grads(framework, loss: torch.Tensor) -> torch.Tensor:
    framework.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return torch.cat([p.grad.flatten() for p in framework.vlm.parameters() if p.grad is not None])


def test_readout_loss_is_the_l1_of_the_readout_states_projection_added_to_the_flow_loss():
    policy, examples = tiny(readout_loss_weight=0.5)
    framework, batch = policy.model, policy.processor(examples)
    assert batch.vlm.input_ids[0, -4:].tolist() == framework.readout.token_ids  # the readouts close the prompt
    torch.manual_seed(1)
    losses = framework(batch)
    out = framework.vlm(batch.vlm, requested_token_ids=framework.readout.token_ids)
    hidden = out.last_hidden_state[:, -4:] + framework.readout.proprio(batch.state).unsqueeze(1)
    expected = masked_mean((framework.readout.proj(hidden) - batch.actions).abs(), batch.action_is_pad)
    torch.testing.assert_close(losses["readout_loss"], expected)
    torch.testing.assert_close(losses["loss"], losses["head_loss"] + 0.5 * expected)


def test_insulated_vlm_learns_from_the_readout_loss_alone():
    policy, examples = tiny(readout_loss_weight=1.0, insulate_vlm=True)
    framework, batch = policy.model, policy.processor(examples)
    torch.manual_seed(1)
    losses = framework(batch)
    total, readout = vlm_grads(framework, losses["loss"]), None
    out = framework.vlm(batch.vlm, requested_token_ids=framework.readout.token_ids)
    readout = vlm_grads(framework, framework.readout.loss(out, batch.actions, batch.action_is_pad, batch.state))
    torch.testing.assert_close(total, readout)
    open_framework = tiny(readout_loss_weight=1.0)[0].model
    torch.manual_seed(1)
    open_losses = open_framework(batch)
    open_total = vlm_grads(open_framework, open_losses["loss"])
    assert not torch.allclose(open_total, readout)  # without insulation the flow loss reaches the VLM too


def test_insulation_without_a_readout_loss_is_refused():
    with pytest.raises(ValueError, match="insulated VLM needs readout_loss_weight > 0"):
        tiny(insulate_vlm=True)
