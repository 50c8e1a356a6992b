"""Value-function algorithms against hand computations: returns, HL-Gauss value targets and loss, advantage
weights, ROC AUC (formulas in vlablocks/core/dataloader/returns.py, framework/value_head.py,
dataloader/value_guided.py and evaluation/value_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlablocks.core.config import ConfigError
from vlablocks.core.dataloader.returns import ReturnsConfig, dataset_returns, discounted_returns, outcome_rewards
from vlablocks.methods.value.metrics import calibration_table, roc_auc
from vlablocks.methods.value.value_guided import AdvantageConfig, advantage_weights
from vlablocks.methods.value.value_head import ValueHead, ValueHeadConfig


def test_returns_restart_at_every_episode_boundary():
    episodes = np.array([3, 3, 3, 7, 7, 9])
    rewards = np.array([0.0, 0.0, 1.0, 2.0, 1.0, 5.0])
    # by hand, gamma 0.5: episode 3 -> 0.25, 0.5, 1; episode 7 -> 2 + 0.5 * 1 = 2.5, 1; episode 9 -> 5.
    # A leak across the boundary would give frame 2 the value 1 + 0.5 * 2.5 = 2.25.
    expected = [0.25, 0.5, 1.0, 2.5, 1.0, 5.0]
    np.testing.assert_allclose(discounted_returns(rewards, episodes, 0.5), expected, rtol=1e-6)
    np.testing.assert_allclose(discounted_returns(rewards, episodes, 0.0), rewards)


def test_outcome_returns_reward_the_last_frame_of_successful_episodes_only():
    episodes = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    success = np.array([[False], [True], [False], [False], [False], [False], [False], [True]])
    # episode 0 succeeded mid-way (flag on frame 1): its reward still sits on its last frame.
    np.testing.assert_array_equal(outcome_rewards(success, episodes), [0, 0, 1, 0, 0, 0, 0, 1])
    config = ReturnsConfig(source="outcome", gamma=0.9)
    np.testing.assert_allclose(
        dataset_returns(config, success, episodes), [0.81, 0.9, 1.0, 0.0, 0.0, 0.81, 0.9, 1.0], rtol=1e-6
    )


def test_returns_refuse_interleaved_episodes_and_a_bad_gamma():
    with pytest.raises(ValueError, match="not contiguous"):
        discounted_returns(np.zeros(4), np.array([0, 1, 0, 1]), 0.9)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        discounted_returns(np.zeros(2), np.array([0, 0]), 1.5)


@pytest.mark.parametrize("sigma_ratio", [0.25, 0.5, 0.75])
def test_hl_gauss_value_targets_sum_to_one_and_their_mean_recovers_the_return(sigma_ratio):
    head = ValueHead(ValueHeadConfig(num_bins=51, v_min=-1.0, v_max=2.0, sigma_ratio=sigma_ratio), in_dim=4)
    torch.testing.assert_close(head.centres[[0, -1]], torch.tensor([-1.0, 2.0]))  # the range ends are centres
    returns = torch.tensor([-1.0, -0.97, 0.0, 0.123, 0.5, 1.0, 1.99, 2.0, 1.5])
    targets = head.targets(returns)
    torch.testing.assert_close(targets.sum(-1), torch.ones(len(returns)))
    mean = (targets * head.centres).sum(-1)
    assert (mean - returns).abs().max() < head.bin_width / 2  # the range ends truncate the Gaussian: pulled in
    if sigma_ratio >= 0.5:  # a Gaussian spread over several bins reads back almost exactly away from the ends
        interior = (returns > -0.5) & (returns < 1.5)
        assert (mean - returns)[interior].abs().max() < 1e-3


def test_hl_gauss_loss_is_minimised_by_the_target_histogram():
    torch.manual_seed(0)
    head = ValueHead(ValueHeadConfig(num_bins=11, sigma_ratio=0.75), in_dim=3)
    target = head.targets(torch.tensor([0.37]))[0]
    logits = target.log().clone().requires_grad_(True)
    loss = -(target * logits.log_softmax(-1)).sum()
    loss.backward()
    assert logits.grad.abs().max() < 1e-6  # stationary at q = p
    entropy = -(target * target.log()).sum()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-5)  # the minimum of cross-entropy is H(p)
    for _ in range(20):
        other = logits.detach() + 0.3 * torch.randn(11)
        assert -(target * other.log_softmax(-1)).sum() > loss.detach()


def test_value_head_reads_the_expectation_over_bin_centres_and_mse_regresses():
    head = ValueHead(ValueHeadConfig(num_bins=5, v_min=0.0, v_max=1.0, hidden_dim=8), in_dim=2)
    torch.testing.assert_close(head.centres, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    out = head(torch.zeros(3, 2), torch.tensor([0.0, 0.5, 1.0]))
    probs = out["log_probs"].exp()
    torch.testing.assert_close(out["value"], (probs * head.centres).sum(-1))
    mse = ValueHead(ValueHeadConfig(loss="mse", hidden_dim=8), in_dim=2)
    got = mse(torch.ones(2, 2), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(got["loss"], ((got["value"] - torch.tensor([0.0, 1.0])) ** 2).mean())


def test_advantage_filter_and_weight_match_their_formulas():
    advantages = np.array([-0.5, 0.0, 0.2, 0.7, -0.1])
    np.testing.assert_array_equal(advantage_weights(advantages, AdvantageConfig("filter")), [0, 0, 1, 1, 0])
    # quantile 0.6 of the 5 values (numpy's linear rule): sorted -0.5, -0.1, 0, 0.2, 0.7 -> position 2.4 -> 0.08
    np.testing.assert_array_equal(
        advantage_weights(advantages, AdvantageConfig("filter", quantile=0.6)), [0, 0, 1, 1, 0]
    )
    np.testing.assert_array_equal(
        advantage_weights(advantages, AdvantageConfig("filter", quantile=0.2)), [0, 1, 1, 1, 1]
    )
    weighted = advantage_weights(advantages, AdvantageConfig("weight", beta=0.5, max_weight=3.0))
    expected = [math.exp(-1.0), 1.0, math.exp(0.4), 3.0, math.exp(-0.2)]  # exp(0.7 / 0.5) = 4.06 clipped to 3
    np.testing.assert_allclose(weighted, expected, rtol=1e-12)
    with pytest.raises(ConfigError, match="no frame has a positive weight"):
        advantage_weights(np.array([-1.0, -2.0]), AdvantageConfig("filter"))


def test_roc_auc_by_hand_with_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: pairs (0.5 vs 0.5) 0.5, (0.5 vs 0.2) 1 -> 0.75
    assert roc_auc(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0])) == pytest.approx(0.75)
    assert roc_auc(np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1])) == 0.0
    with pytest.raises(ValueError, match="both outcomes"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_calibration_table_groups_by_predicted_value():
    table = calibration_table(np.array([0.0, 0.1, 0.9, 1.0]), np.array([0.0, 0.0, 1.0, 0.5]), bins=2)
    assert [row["count"] for row in table] == [2, 2]
    assert table[0]["observed"] == 0.0 and table[1]["observed"] == 0.75
    assert table[1]["predicted"] == pytest.approx(0.95)
