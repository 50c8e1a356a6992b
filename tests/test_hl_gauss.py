"""HL-Gauss targets against a hand computation, and QwenFAST's ordinal FAST loss built on them."""

from __future__ import annotations

import pytest
import torch

from vlablocks.core.action_model.hl_gauss import hl_gauss_targets
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy


def test_targets_match_the_normal_mass_per_bin_by_hand():
    # 3 unit bins centred on 0, 1, 2 (edges -0.5, 0.5, 1.5, 2.5), sigma 0.75. For y = 1: z = -2, -2/3, 2/3, 2;
    # Phi = 0.022750, 0.252493, 0.747507, 0.977250; masses 0.229743, 0.495014, 0.229743 over 0.954500.
    targets = hl_gauss_targets(torch.tensor([1.0, 0.2]), num_bins=3, sigma=0.75)
    torch.testing.assert_close(targets[0], torch.tensor([0.240694, 0.518612, 0.240694]), atol=1e-6, rtol=0)
    torch.testing.assert_close(targets[1], torch.tensor([0.582930, 0.367973, 0.049097]), atol=1e-6, rtol=0)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="sigma > 0"):
        hl_gauss_targets(torch.zeros(1), 3, 0.0)


def test_fast_soft_targets_spread_over_neighbouring_coefficients_and_keep_the_stop_token_hard():
    platform = {"name": "test", "action_horizon": 4, "action_dim": 2, "state_dim": 2}
    framework_options = {"name": "QwenFAST", "fast": {"scale": 5.0, "bpe_merges": False}, "hl_gauss_sigma": 0.75}
    experiment = parse_experiment({"platform": platform, "framework": framework_options})
    examples = synthetic_examples(PlatformConfig(**platform), 8, seed=2)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    policy.processor.fit(examples)
    framework = policy.model
    batch = policy.processor(examples)
    labels = batch.vlm.labels[batch.vlm.labels != -100]
    soft = framework.soft_targets(labels, batch.action_vocab)
    fast = torch.tensor(framework.fast_token_ids[: batch.action_vocab])
    for label, row in zip(labels.tolist(), soft, strict=True):
        if label == framework.stop_token_id:
            assert row[label] == 1.0 and row.sum() == 1.0
        else:
            j = framework.fast_token_ids.index(label)
            expected = hl_gauss_targets(torch.tensor([float(j)]), batch.action_vocab, 0.75)[0]
            torch.testing.assert_close(row[fast], expected)
            assert row.sum().item() == pytest.approx(1.0)
    assert torch.isfinite(framework(batch)["loss"])
    with pytest.raises(ValueError, match="bpe_merges: false"):
        parse_bad = {"name": "QwenFAST", "hl_gauss_sigma": 0.75}
        build_policy(parse_experiment({"platform": platform, "framework": parse_bad}), synthetic_norm_stats(examples))
