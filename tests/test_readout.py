"""Readout regression (vlablocks/core/auxiliary/readout.py): the auxiliary L1 loss of QwenFlowMatching and
knowledge insulation, checked against hand computations on a tiny model; the auxiliary-loss config field."""

from __future__ import annotations

import pytest
import torch

from vlablocks.core.action_model.masking import masked_mean
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
HEAD = {"name": "flow_matching", "hidden_dim": 32, "num_layers": 1, "num_heads": 2, "cross_attention_gate_init": 1.0}


def readout(weight: float) -> dict:
    return {"auxiliary_losses": {"readout": {"weight": weight}}}


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
    policy, examples = tiny(**readout(0.5))
    framework, batch = policy.model, policy.processor(examples)
    module = framework.auxiliary_losses["readout"]
    assert batch.vlm.input_ids[0, -4:].tolist() == module.token_ids  # the readouts close the prompt
    torch.manual_seed(1)
    losses = framework(batch)
    torch.manual_seed(1)
    head = framework.action_model.compute_loss(
        framework.encode(batch)[1], batch.actions, batch.action_is_pad, batch.state
    )["loss"]
    out = framework.vlm(batch.vlm, requested_token_ids=module.token_ids)
    hidden = out.last_hidden_state[:, -4:] + module.proprio(batch.state).unsqueeze(1)
    expected = masked_mean((module.proj(hidden) - batch.actions).abs(), batch.action_is_pad)
    torch.testing.assert_close(losses["readout_loss"], expected)
    torch.testing.assert_close(losses["log"]["readout_loss"], expected.detach())
    torch.testing.assert_close(losses["loss"], head + 0.5 * expected)
    # the readout predicts actions: a loss schedule weights it with the head's loss
    torch.testing.assert_close(losses["action_loss"], losses["loss"])


def test_readout_with_hidden_dim_is_the_l1_of_a_gelu_mlp_of_the_readout_states():
    policy, examples = tiny(auxiliary_losses={"readout": {"weight": 1.0, "hidden_dim": 8}})
    framework, batch = policy.model, policy.processor(examples)
    module = framework.auxiliary_losses["readout"]
    first, last = module.proj[0], module.proj[2]
    assert first.weight.shape == (8, framework.vlm.hidden_size) and last.weight.shape == (3, 8)
    losses = framework(batch)
    out = framework.vlm(batch.vlm, requested_token_ids=module.token_ids)
    hidden = out.last_hidden_state[:, -4:] + module.proprio(batch.state).unsqueeze(1)
    erf_gelu = (
        0.5 * (hidden @ first.weight.T + first.bias) * (1 + torch.erf((hidden @ first.weight.T + first.bias) / 2**0.5))
    )
    predicted = erf_gelu @ last.weight.T + last.bias
    torch.testing.assert_close(
        losses["readout_loss"], masked_mean((predicted - batch.actions).abs(), batch.action_is_pad)
    )


def test_a_negative_readout_hidden_dim_is_refused():
    with pytest.raises(ValueError, match="hidden_dim must be >= 0"):
        tiny(auxiliary_losses={"readout": {"weight": 1.0, "hidden_dim": -1}})


def test_insulated_vlm_learns_from_the_readout_loss_alone():
    policy, examples = tiny(**readout(1.0), insulate_vlm=True)
    framework, batch = policy.model, policy.processor(examples)
    module = framework.auxiliary_losses["readout"]
    torch.manual_seed(1)
    losses = framework(batch)
    total = vlm_grads(framework, losses["loss"])
    out = framework.vlm(batch.vlm, requested_token_ids=module.token_ids)
    alone = vlm_grads(framework, module.regression(out, batch.actions, batch.action_is_pad, batch.state))
    torch.testing.assert_close(total, alone)
    open_framework = tiny(**readout(1.0))[0].model
    torch.manual_seed(1)
    open_losses = open_framework(batch)
    open_total = vlm_grads(open_framework, open_losses["loss"])
    assert not torch.allclose(open_total, alone)  # without insulation the flow loss reaches the VLM too


def test_insulation_without_a_readout_loss_is_refused():
    with pytest.raises(ValueError, match="learns nothing; add auxiliary_losses.readout.weight > 0"):
        tiny(insulate_vlm=True)
    with pytest.raises(ValueError, match="learns nothing"):
        tiny(insulate_vlm=True, **readout(0.0))


def test_weight_zero_builds_nothing_and_the_prompt_is_unchanged():
    plain, examples = tiny()
    zero = tiny(**readout(0.0))[0]
    assert len(zero.model.auxiliary_losses) == 0
    assert sorted(zero.model.state_dict()) == sorted(plain.model.state_dict())
    torch.testing.assert_close(zero.processor(examples).vlm.input_ids, plain.processor(examples).vlm.input_ids)


def test_auxiliary_losses_config_names_the_problem():
    from vlablocks.core.config import ConfigError

    with pytest.raises(ConfigError, match="unknown auxiliary_loss 'redout'; did you mean 'readout'"):
        tiny(auxiliary_losses={"redout": {"weight": 1.0}})
    with pytest.raises(ConfigError, match=r"auxiliary_losses.readout.wieght — did you mean .*weight"):
        tiny(auxiliary_losses={"readout": {"wieght": 1.0}})
    with pytest.raises(ConfigError, match="readout_loss_weight moved to framework.auxiliary_losses.readout.weight"):
        tiny(readout_loss_weight=1.0)
    with pytest.raises(ValueError, match="reads the geometric fusion's tokens"):
        tiny(auxiliary_losses={"alg1_reg": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"auxiliary_losses.readout.weight must be >= 0"):
        tiny(**readout(-1.0))
