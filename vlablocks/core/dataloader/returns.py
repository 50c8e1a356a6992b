"""Per-frame discounted Monte-Carlo returns, computed when a dataset is loaded (docs/value_functions.md).

For an episode with frames t = 0 .. T-1 and rewards r_t (the reward of the transition out of frame t):

    G_t = r_t + gamma * G_{t+1},   G_{T-1} = r_{T-1}        i.e.  G_t = sum_{k=0}^{T-1-t} gamma^k r_{t+k}

Episodes end at their last frame: nothing of one episode reaches the frames of another. With the
outcome form (one 0/1 success flag per episode, as robot logs keep) the reward is the flag on the
episode's last frame and 0 elsewhere, so G_t = success * gamma^(T-1-t).

    dataset:
      name: lerobot
      returns: {source: outcome, key: next.success, gamma: 0.9}   # or source: reward, key: next.reward
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ReturnsConfig:
    """Where rewards come from and the discount. `source: none` (default) computes no returns; `outcome` reads a
    success flag (any True in an episode makes it a success, rewarded 1 on its last frame); `reward` reads a
    per-frame reward column. Samples then carry `return` (float32 scalar)."""

    source: Literal["none", "outcome", "reward"] = "none"
    key: str = "next.success"
    gamma: float = 0.9


def episode_ends(episode_index: np.ndarray) -> np.ndarray:
    """episode_index: [N] per frame, each episode's frames contiguous -> [N] bool, True at each episode's last frame."""
    episode_index = np.asarray(episode_index).reshape(-1)
    ends = np.ones(len(episode_index), dtype=bool)
    ends[:-1] = episode_index[1:] != episode_index[:-1]
    seen = episode_index[ends]
    if len(np.unique(seen)) != len(seen):
        raise ValueError("episode frames are not contiguous: an episode index reappears after another episode")
    return ends


def outcome_rewards(success: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """success: [N] per-frame flags -> [N] rewards: 1.0 on the last frame of every episode with any True flag."""
    success = np.asarray(success).reshape(-1).astype(bool)
    episode_index = np.asarray(episode_index).reshape(-1)
    ends = episode_ends(episode_index)
    successful = set(np.unique(episode_index[success]).tolist())
    rewards = np.zeros(len(success), dtype=np.float64)
    rewards[ends] = [1.0 if e in successful else 0.0 for e in episode_index[ends]]
    return rewards


def discounted_returns(rewards: np.ndarray, episode_index: np.ndarray, gamma: float) -> np.ndarray:
    """rewards, episode_index: [N] -> [N] float32 returns G_t, the recursion restarted at every episode end."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"returns.gamma must be in [0, 1], got {gamma}")
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    ends = episode_ends(episode_index)
    returns = np.zeros_like(rewards)
    following = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        following = rewards[t] + (0.0 if ends[t] else gamma * following)
        returns[t] = following
    return returns.astype(np.float32)


def dataset_returns(config: ReturnsConfig, column: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """The per-frame returns of a dataset from its reward or success column (the config says which)."""
    if config.source == "outcome":
        rewards = outcome_rewards(column, episode_index)
    elif config.source == "reward":
        rewards = np.asarray(column, dtype=np.float64).reshape(len(episode_index), -1)[:, 0]
    else:
        raise ValueError(f"returns.source must be 'outcome' or 'reward', got {config.source!r}")
    return discounted_returns(rewards, episode_index, config.gamma)
