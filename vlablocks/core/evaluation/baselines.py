"""Baseline policies behind the `infer(request) -> {"actions": [T, D]}` interface: uniform random and the env's
scripted expert (which validates an env and its success metric)."""

from __future__ import annotations

import numpy as np


def action_bounds(env) -> tuple[np.ndarray, np.ndarray]:
    """The env's action range: a gymnasium `action_space` (sim adapters), else +-`config.max_move` (toy)."""
    space = getattr(getattr(env, "env", None), "action_space", None)
    if space is not None:
        return np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    max_move = getattr(env.config, "max_move", None)
    if max_move is None:
        raise ValueError(f"env {env.config.name!r} exposes no action range for the random baseline")
    return np.full(env.action_dim, -max_move, np.float32), np.full(env.action_dim, max_move, np.float32)


class RandomPolicy:
    """Baseline: actions drawn uniformly from [low, high] per dimension, chunks of `horizon` -> [horizon, D].

    One generator serves every request in call order: episodes run one at a time draw what they drew before."""

    def __init__(self, low: np.ndarray, high: np.ndarray, horizon: int, seed: int = 0) -> None:
        self.low, self.high, self.horizon = np.asarray(low), np.asarray(high), horizon
        self.rng = np.random.default_rng(seed)

    def infer(self, request: dict) -> dict:
        return {"actions": self.rng.uniform(self.low, self.high, (self.horizon, len(self.low))).astype(np.float32)}


class ExpertPolicy:
    """The scripted expert of one env (`env.expert_action()`) as a policy -> chunks [1, D]; it reads the env's
    state, not the request, so it drives that env alone (a vector env of one)."""

    def __init__(self, env) -> None:
        self.env = env

    def infer(self, request: dict) -> dict:
        return {"actions": self.env.expert_action()[None]}
