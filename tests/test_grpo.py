"""GRPO pieces against hand computations: group advantages, dynamic sampling, clip-higher, the k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from vlablocks.methods.rl.grpo import clipped_policy_loss, group_advantages, informative_groups


def test_group_advantages_match_a_hand_computation():
    rewards = torch.tensor([[5.0, 0.0, 0.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 5.0]])
    # group 0: mean 2.5, unbiased std sqrt(4 * 2.5^2 / 3) = 2.88675 -> +-0.86603
    # group 2: mean 1.25, unbiased std sqrt((3 * 1.25^2 + 3.75^2) / 3) = 2.5 -> -0.5 (x3), 1.5
    expected = torch.tensor([[0.86603, -0.86603, -0.86603, 0.86603], [0.0] * 4, [-0.5, -0.5, -0.5, 1.5]])
    assert torch.allclose(group_advantages(rewards), expected, atol=1e-4)
    assert informative_groups(rewards).tolist() == [True, False, True]


def test_group_advantages_need_groups_of_two():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def _gradient(ratio: float, advantage: float) -> float:
    old = torch.zeros(1, 1)
    new = torch.tensor([[math.log(ratio)]], requires_grad=True)
    result = clipped_policy_loss(new, old, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool), 0.2, 0.28)
    result.loss.backward()
    return float(new.grad)


def test_clip_higher_is_asymmetric():
    # Positive advantage: the upper bound is 1 + 0.28, so 1.25 still moves the policy and 1.3 is cut.
    assert _gradient(1.25, 1.0) == pytest.approx(-1.25)  # d(-rho A)/d log pi = -rho A
    assert _gradient(1.3, 1.0) == 0.0
    # Negative advantage: the lower bound is 1 - 0.2, so 0.85 moves and 0.75 is cut.
    assert _gradient(0.85, -1.0) == pytest.approx(0.85)
    assert _gradient(0.75, -1.0) == 0.0
    # A ratio of 1.25 with the symmetric bound eps = 0.2 would have been cut.
    new = torch.tensor([[math.log(1.25)]], requires_grad=True)
    clipped_policy_loss(new, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.2).loss.backward()
    assert float(new.grad) == 0.0


def test_loss_is_a_token_mean_and_reports_clip_fraction_and_kl():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.0, 1.1, 1.5, 0.5]]))
    mask = torch.tensor([[True, True, True, False]])
    result = clipped_policy_loss(new, old, torch.tensor([2.0]), mask, 0.2, 0.28)
    # valid choices: ratios 1.0, 1.1, 1.5 -> terms min(r A, clip(r) A) = 2.0, 2.2, 2.56; mean of the negatives
    assert float(result.loss) == pytest.approx(-(2.0 + 2.2 + 2.56) / 3, rel=1e-5)
    assert result.clip_fraction == pytest.approx(1 / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.0, 1.1, 1.5)]
    assert result.approx_kl == pytest.approx(sum(k3) / 3, rel=1e-5)


def test_reference_kl_term_vanishes_at_the_reference_and_grows_away_from_it():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    zero_adv = torch.zeros(1)
    same = clipped_policy_loss(logp, logp, zero_adv, torch.ones(1, 2), 0.2, 0.28, ref_log_probs=logp, kl_coef=1.0)
    assert float(same.loss) == pytest.approx(0.0, abs=1e-7)
    ref = torch.log(torch.tensor([[0.25, 0.2]]))  # k3 at the first choice: exp(q - p) - (q - p) - 1
    moved = clipped_policy_loss(logp, logp, zero_adv, torch.ones(1, 2), 0.2, 0.28, ref_log_probs=ref, kl_coef=1.0)
    assert float(moved.loss) == pytest.approx((0.5 - math.log(0.5) - 1) / 2, rel=1e-5)
