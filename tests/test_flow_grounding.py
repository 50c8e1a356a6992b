"""The flow-matching frameworks' root-cause fix (docs/results/toy_results.md). Under adaLN-Zero every DiT block's
cross-attention gate starts at 0, so at initialization no gradient at all reaches the VLM, and what later
arrives is weak and noisy: the VLM never learns to ground the instruction. The shipped toy configs open the
cross-attention gates and add the readout regression (an L1 loss from readout tokens, as QwenOFT's). These
tests fail on the old mechanism (gradient exactly 0) and pass on the new one."""

from __future__ import annotations

import pytest
import torch

from vlablocks.core.action_model.dit import DiTBlock
from vlablocks.core.config import load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy

SHIPPED = ["configs/experiments/toy/qwen_flow_matching.yaml", "configs/experiments/toy/qwen_layerwise_fm_3d.yaml"]


def vlm_gradient_norm(config: str, overrides: list[str]) -> float:
    experiment = load_config(config, overrides)
    examples = synthetic_examples(experiment.platform, 4, image_size=56, seed=1, camera_keys=None)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples), camera_keys=list(examples[0]["images"]))
    framework = policy.model
    torch.manual_seed(0)
    framework(policy.processor(examples))["loss"].backward()
    grads = [p.grad.flatten() for p in framework.vlm.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


@pytest.mark.parametrize("config", SHIPPED)
def test_the_shipped_flow_frameworks_train_the_vlm_from_the_first_step(config):
    head_only = ["framework.auxiliary_losses.readout.weight=0.0"]
    assert vlm_gradient_norm(config, head_only) > 1e-3  # the open gates pass the head's gradient
    assert vlm_gradient_norm(config, head_only + ["framework.action_model.cross_attention_gate_init=0.0"]) == 0.0
    # With the readout regression the VLM's gradient is of QwenOFT's order (measured 18.3 at initialization).
    oft = vlm_gradient_norm("configs/experiments/toy/qwen_oft.yaml", [])
    assert vlm_gradient_norm(config, []) > 0.3 * oft


def test_cross_gate_init_sets_only_the_cross_attention_gate():
    block = DiTBlock(8, 2, cross_gate_init=1.0)
    x, temb = torch.randn(2, 3, 8), torch.randn(2, 8)
    tokens = torch.randn(2, 5, 8, requires_grad=True)
    mods = block.modulation(torch.nn.functional.silu(temb)).detach().chunk(9, dim=-1)
    assert all(float(m.abs().max()) == (1.0 if i == 5 else 0.0) for i, m in enumerate(mods))
    out = block(x, temb, block.context(tokens, torch.ones(2, 5, dtype=torch.bool)))
    out.sum().backward()
    assert tokens.grad.abs().sum() > 0  # the context is read from the first step
    closed = DiTBlock(8, 2)
    tokens.grad = None
    closed(x, temb, closed.context(tokens, torch.ones(2, 5, dtype=torch.bool))).sum().backward()
    assert tokens.grad is None or tokens.grad.abs().sum() == 0
