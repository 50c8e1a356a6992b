"""The shared half of the third-party simulator adapters (`aloha_transfer_cube`, `pusht`): gymnasium -> vlablocks.

A gymnasium env speaks `reset(seed) -> (obs, info)` and `step(a) -> (obs, reward, terminated, truncated, info)`;
vlablocks envs speak the toy env's API: `reset(seed) -> obs`, `step(a) -> (obs, reward, done, info)` with
`info["success"]`, and observations in the sample.py contract (`images`: {camera: uint8 [H, W, 3]}, `state`,
`prompt`). Subclasses say how to build the gymnasium env and how to read its observation.

The simulator packages are the `sim` extra: they are imported when an env is built, never when the registry
imports this package, so `vlablocks list eval_envs` works without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np


def import_sim_package(module: str, env_name: str) -> ModuleType:
    """Imports a simulator package, or fails in one line naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"eval env {env_name!r} needs the simulator package {module!r}, which cannot be imported ({exc}); "
            f"install the sim extra: pip install -e .[sim]"
        ) from exc


class GymnasiumEnv:
    """Base adapter: episode bookkeeping and the 5-tuple -> 4-tuple step; subclasses build `self.env`.

    Subclasses set `self.env` (a gymnasium env), `self.config` (with `max_steps`), `action_dim`, `state_dim`,
    and implement `observation(raw_obs) -> dict` (the observation of the sample.py contract).
    """

    env: Any
    config: Any
    action_dim: int
    state_dim: int

    def __init__(self) -> None:
        self.steps = 0
        self._started = False

    def reset(self, seed: int | None = None, options: dict | None = None) -> dict:
        """New episode (the simulator seeds its initial layout with `seed`; `options` go to gymnasium) -> obs."""
        raw_obs, _ = self.env.reset(seed=seed, options=options)
        self.steps = 0
        self._started = True
        return self.observation(raw_obs)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        """action: [action_dim] -> (obs, reward, done, info); done on success or after `config.max_steps` steps."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"{self.config.name} action must be {self.action_dim} finite numbers, got shape {action.shape}: "
                f"{np.array2string(action, threshold=20)}"
            )
        raw_obs, reward, terminated, truncated, raw_info = self.env.step(action)
        self.steps += 1
        success = bool(raw_info.get("is_success", False))
        done = success or bool(terminated) or bool(truncated) or self.steps >= self.config.max_steps
        info = {"success": success, "steps": self.steps, "reward": float(reward)}
        return self.observation(raw_obs), float(reward), done, info

    def observation(self, raw_obs: Any) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        self.env.close()
