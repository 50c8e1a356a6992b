"""GRPO with DAPO's clip-higher and dynamic sampling, for trajectory-level 0/1 rewards (SimpleVLA-RL).

For one initial state, G episodes are sampled (a group); episode i earns

    r_i = verifier_reward_coef * success_i                                       (0 or coef)

and every choice (action scalar, or token) of that episode shares its group-normalized advantage

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)        std unbiased (G - 1), eps = 1e-6

Groups whose rewards are all equal carry no signal (A = 0 for all): dynamic sampling drops them and
refills the batch with new groups. With per-choice ratios rho = exp(log pi_theta - log pi_old) the
loss is PPO-clip with asymmetric bounds, averaged over all valid choices in the minibatch (token mean):

    L = -(1 / |valid|) sum_valid min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)

eps_high > eps_low ("clip-higher") lets unlikely choices of good episodes grow further before their
gradient is cut, which keeps the policy's entropy from collapsing. Optional terms, off by default:
kl_coef * KL(pi_theta || pi_ref) with the k3 estimator  exp(q - p) - (q - p) - 1  (p = log pi_theta,
q = log pi_ref), and -entropy_coef * entropy. Logged: clip fraction (choices whose clipped term was
taken), approx KL to pi_old (mean of the k3 estimator), entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

EPS = 1e-6


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards: [groups, G] -> advantages [groups, G] (normalized within each group; all-equal groups -> 0)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"group_advantages takes rewards [groups, G >= 2], got {list(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased
    return (rewards - mean) / (std + EPS)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """rewards: [groups, G] -> [groups] bool: True where not all rewards are equal (dynamic sampling keeps these)."""
    return rewards.max(dim=1).values > rewards.min(dim=1).values


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor  # scalar, differentiable
    clip_fraction: float
    approx_kl: float  # to the rollout policy
    entropy: float


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> PolicyLoss:
    """log_probs, old_log_probs, mask: [B, N]; advantages: [B] (one per episode step) -> PolicyLoss (token mean)."""
    mask = mask.float()
    count = mask.sum().clamp_min(1.0)
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    adv = advantages.unsqueeze(-1).to(ratio.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    per_choice = -torch.minimum(unclipped, clipped)
    if entropy is not None and entropy_coef:
        per_choice = per_choice - entropy_coef * entropy
    if ref_log_probs is not None and kl_coef:
        diff = ref_log_probs - log_probs
        per_choice = per_choice + kl_coef * (diff.exp() - diff - 1.0)
    loss = (per_choice * mask).sum() / count
    with torch.no_grad():
        clip_fraction = ((clipped < unclipped).float() * mask).sum() / count
        approx_kl = (((ratio - 1.0) - log_ratio) * mask).sum() / count
        mean_entropy = (entropy * mask).sum() / count if entropy is not None else torch.tensor(float("nan"))
    return PolicyLoss(loss, float(clip_fraction), float(approx_kl), float(mean_entropy))


def fill_with_informative_groups(
    sample_round: Callable[[int], tuple[list, torch.Tensor]], groups: int, max_rounds: int, dynamic_sampling: bool
) -> tuple[list[tuple[object, torch.Tensor]], int]:
    """Dynamic sampling: calls `sample_round(r)` -> (groups' items [n], rewards [n, G]) for r = 0, 1, ... and keeps
    the informative groups (with their advantages [G]) until `groups` are kept or `max_rounds` rounds were run.

    Without dynamic sampling one round is run and every group is kept. -> (kept[:groups], groups sampled)
    """
    kept, sampled = [], 0
    for round_index in range(max_rounds if dynamic_sampling else 1):
        items, rewards = sample_round(round_index)
        sampled += len(items)
        useful = informative_groups(rewards) if dynamic_sampling else torch.ones(len(items), dtype=torch.bool)
        advantages = group_advantages(rewards)
        kept += [(items[g], advantages[g]) for g in torch.nonzero(useful).flatten().tolist()]
        if len(kept) >= groups:
            break
    return kept[:groups], sampled
