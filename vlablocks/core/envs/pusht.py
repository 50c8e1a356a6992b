"""`pusht`: gym-pusht's PushT-v0 (2-D pymunk physics) as a vlablocks env.

A circular agent pushes a T-shaped block onto a fixed T-shaped target. State: the agent position [x, y] and
action: the agent's target position [x, y], both in the 512 x 512 workspace's pixel units; one top-down view
(96 x 96 like the lerobot/pusht dataset). Success is gym-pusht's `is_success`: the block covers more than 95%
of the target area, which ends the episode.

Needs the `sim` extra (`pip install -e .[sim]`); renders with pygame surfaces, no display needed.

    env = PushTEnv(PushTEnv.Config())
    obs = env.reset(seed=0)          # obs["images"]["image"]: uint8 [96, 96, 3], obs["state"]: float32 [2]
    obs, reward, done, info = env.step(obs["state"])  # stay put; reward = coverage / 0.95, clipped to 1
    obs = env.reset(options={"reset_to_state": [x, y, block_x, block_y, block_angle]})  # gym-pusht's option
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from vlablocks.core.envs.gym_adapter import GymnasiumEnv, import_sim_package
from vlablocks.core.registry import EVAL_ENVS

GYM_ID = "gym_pusht/PushT-v0"
CAMERAS = ("image",)  # lerobot/pusht's `observation.image`, so its policies read this view
ACTION_DIM = STATE_DIM = 2


@EVAL_ENVS.register("pusht")
class PushTEnv(GymnasiumEnv):
    """gym-pusht (pymunk, 2-D): push the T block onto the target; [x, y] agent state and target actions."""

    @dataclass(frozen=True)
    class Config:
        name: str = "pusht"
        cameras: list[str] = field(default_factory=lambda: list(CAMERAS))  # keys of obs["images"]
        image_size: int = 96  # pixels per side of the observed view
        max_steps: int = 300  # lerobot's evaluation episode length for PushT (30 s at 10 Hz)
        instruction: str = "Push the T-shaped block onto the T-shaped target."  # lerobot/pusht's task string
        dataset_name: str = "pusht"  # tag put in obs, keys the normalization stats

    def __init__(self, config: Config | None = None) -> None:
        super().__init__()
        self.config = config or self.Config()
        if list(self.config.cameras) != list(CAMERAS):
            raise ValueError(f"{self.config.name} cameras must be {list(CAMERAS)}, got {self.config.cameras}")
        if self.config.max_steps < 1 or self.config.image_size < 1:
            raise ValueError(
                f"{self.config.name} max_steps and image_size must be >= 1, "
                f"got {self.config.max_steps} and {self.config.image_size}"
            )
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame greets on stdout at import
        import_sim_package("gym_pusht", self.config.name)  # registers the gym id
        import gymnasium

        with warnings.catch_warnings():  # making the env imports pygame, which imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            self.env = gymnasium.make(
                GYM_ID,
                obs_type="pixels_agent_pos",
                observation_width=self.config.image_size,
                observation_height=self.config.image_size,
                max_episode_steps=self.config.max_steps,
            )
        self.action_dim = ACTION_DIM
        self.state_dim = STATE_DIM

    def observation(self, raw_obs: dict) -> dict:
        """gym-pusht {"pixels": [H, W, 3], "agent_pos": [2]} -> observation (sample.py contract)."""
        return {
            "images": {CAMERAS[0]: raw_obs["pixels"]},
            "state": np.asarray(raw_obs["agent_pos"], dtype=np.float32),
            "prompt": self.config.instruction,
            "dataset_name": self.config.dataset_name,
            "embodiment": "pusht",
        }
