"""`aloha_transfer_cube`: gym-aloha's AlohaTransferCube-v0 (MuJoCo bimanual ViperX arms) as a vlablocks env.

The right arm must pick up a red cube and hand it to the left arm. State: the 14 joint positions (qpos: per
arm 6 joints + a normalized gripper, left arm first); action: 14 absolute joint targets in the same layout;
one 480 x 640 camera, `top`. Success is the task's maximum reward (4: the left gripper holds the cube off the
table), which gym-aloha reports as `is_success` and which ends the episode.

Needs the `sim` extra (`pip install -e .[sim]`). Rendering on CPU uses OSMesa (Debian libosmesa6): `MUJOCO_GL`
defaults to `config.mujoco_gl` ("osmesa") when the environment does not set it; use "egl" on a GPU machine.

    env = AlohaTransferCubeEnv(AlohaTransferCubeEnv.Config(max_steps=400))
    obs = env.reset(seed=0)          # obs["images"]["top"]: uint8 [480, 640, 3], obs["state"]: float32 [14]
    obs, reward, done, info = env.step(obs["state"])  # hold still; info["success"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from vlablocks.core.envs.gym_adapter import GymnasiumEnv, import_sim_package
from vlablocks.core.registry import EVAL_ENVS

GYM_ID = "gym_aloha/AlohaTransferCube-v0"
CAMERAS = ("top",)  # the only view gym-aloha puts in its observation
ACTION_DIM = STATE_DIM = 14


@EVAL_ENVS.register("aloha_transfer_cube")
class AlohaTransferCubeEnv(GymnasiumEnv):
    """gym-aloha transfer-cube (MuJoCo, CPU via OSMesa): 14-D qpos state, top camera, 14-D joint actions."""

    @dataclass(frozen=True)
    class Config:
        name: str = "aloha_transfer_cube"
        cameras: list[str] = field(default_factory=lambda: ["top"])  # keys of obs["images"]
        max_steps: int = 400  # 8 s at 50 Hz: lerobot's evaluation episode length for ALOHA sim
        # The task string of lerobot/aloha_sim_transfer_cube_human, so a policy trained on it reads its prompt.
        instruction: str = "Pick up the cube with the right arm and transfer it to the left arm."
        dataset_name: str = "aloha_sim_transfer_cube_human"  # tag put in obs, keys the normalization stats
        mujoco_gl: str = "osmesa"  # MUJOCO_GL when unset: osmesa renders on CPU, egl on a GPU

    def __init__(self, config: Config | None = None) -> None:
        super().__init__()
        self.config = config or self.Config()
        if list(self.config.cameras) != list(CAMERAS):
            raise ValueError(f"{self.config.name} cameras must be {list(CAMERAS)}, got {self.config.cameras}")
        if self.config.max_steps < 1:
            raise ValueError(f"{self.config.name} max_steps must be >= 1, got {self.config.max_steps}")
        # dm_control picks its GL backend when first imported, so this must precede the import below.
        os.environ.setdefault("MUJOCO_GL", self.config.mujoco_gl)
        # Render on the calling thread: an env is stepped from one thread, and dm_control's render thread
        # would otherwise be gone before its GL context is freed at interpreter exit (an error at every exit).
        os.environ.setdefault("DISABLE_RENDER_THREAD_OFFLOADING", "1")
        import_sim_package("gym_aloha", self.config.name)  # registers the gym ids
        import gymnasium

        self.env = gymnasium.make(GYM_ID, obs_type="pixels_agent_pos", max_episode_steps=self.config.max_steps)
        self.action_dim = ACTION_DIM
        self.state_dim = STATE_DIM

    @property
    def physics(self):
        """The dm_control `Physics` of the running simulation (for scripted checks and debugging)."""
        return self.env.unwrapped._env.physics

    def observation(self, raw_obs: dict) -> dict:
        """gym-aloha {"pixels": {"top": [480, 640, 3]}, "agent_pos": [14]} -> observation (sample.py contract)."""
        return {
            "images": {camera: raw_obs["pixels"][camera] for camera in self.config.cameras},
            "state": np.asarray(raw_obs["agent_pos"], dtype=np.float32),
            "prompt": self.config.instruction,
            "dataset_name": self.config.dataset_name,
            "embodiment": "aloha",
        }

    def close(self) -> None:
        self.physics.free()  # the GL context and MuJoCo buffers, now rather than at garbage collection
        super().close()
