"""`metaworld`: one Meta-World v3 task (MuJoCo Sawyer arm, metaworld 3.1.1) as a vlablocks env.

Built the way LeRobot's `lerobot.envs.metaworld.MetaworldEnv` builds it, so a policy trained on data from either
reads the other's observations: the MT1 benchmark of the task (`metaworld.MT1(task, seed=42)`, its first train
task), object positions drawn at each reset from the env's seeded generator (`env.seed(seed)`: the same seed, the
same layout), the `corner2` camera moved to LeRobot's position and its image flipped on both axes (that camera's
frames come out upside down and mirrored). State: the first 4 numbers of Meta-World's observation, the hand
position [x, y, z] and the gripper opening (LeRobot's `agent_pos`); action: [dx, dy, dz, grip] in [-1, 1].
The instruction is LeRobot's `TASK_DESCRIPTIONS[task]`; success is the env's `info["success"]`, which ends the
episode, as do `max_steps` steps.

Rendering: MuJoCo's default scene quality (a 4096-pixel shadow map, 4x multisampling) costs about 100 ms a frame
on a CPU at any image size; `fast_render` (default) sets `model.vis.quality.shadowsize = 0` and `offsamples = 0`
before the first frame, which leaves the frames readable at a fraction of the cost (figures in docs/metaworld.md).

Needs the `sim` extra (`pip install -e .[sim]`); `MUJOCO_GL` defaults to `config.mujoco_gl` ("osmesa", CPU).

    env = MetaWorldEnv(MetaWorldEnv.Config(task="push-v3"))
    obs = env.reset(seed=0)      # obs["images"]["corner2"]: uint8 [128, 128, 3], obs["state"]: float32 [4]
    obs, reward, done, info = env.step(env.expert_action())   # info["success"]
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from vlablocks.core.envs import metaworld_tasks
from vlablocks.core.envs.gym_adapter import import_sim_package
from vlablocks.core.registry import EVAL_ENVS

CAMERA = "corner2"
CAMERA_POSITION = (0.75, 0.075, 0.7)  # LeRobot's corner2 position (model.cam_pos of that camera)
ACTION_DIM = STATE_DIM = 4
MAX_PATH_LENGTH = 500  # Meta-World refuses to step an episode past this
BENCHMARK_SEED = 42  # LeRobot's metaworld.MT1(task, seed=42)


@EVAL_ENVS.register("metaworld")
class MetaWorldEnv:
    """One Meta-World v3 task: corner2 camera (LeRobot's fix), 4-D hand state, 4-D actions, success from info."""

    @dataclass(frozen=True)
    class Config:
        name: str = "metaworld"
        task: str = "reach-v3"  # a v3 task name (vlablocks/core/envs/metaworld_tasks.py lists them)
        # the key of the corner2 view in obs["images"]: "corner2", or "image" for policies trained on LeRobot's
        # metaworld datasets (their `observation.image` is this view)
        cameras: list[str] = field(default_factory=lambda: [CAMERA])
        image_size: int = 128  # pixels per side of the rendered view
        max_steps: int = 200  # steps per episode (Meta-World allows 500; the experts need 40-150, docs/metaworld.md)
        fast_render: bool = True  # shadowsize = 0 and offsamples = 0: ~5x cheaper frames on a CPU
        wrong_task: str = ""  # whose instruction the wrong-instruction control gives (default: the next MT10 task)
        dataset_name: str = "metaworld"  # tag put in obs, keys the normalization stats
        mujoco_gl: str = "osmesa"  # MUJOCO_GL when unset: osmesa renders on CPU, egl on a GPU

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        name = self.config.name
        if list(self.config.cameras) not in ([CAMERA], ["image"]):
            raise ValueError(
                f"{name} cameras must be [{CAMERA!r}] or ['image'] (LeRobot's dataset key for that view), "
                f"got {self.config.cameras}"
            )
        if not 1 <= self.config.max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"{name} max_steps must be in 1..{MAX_PATH_LENGTH}, got {self.config.max_steps}")
        if self.config.image_size < 8:
            raise ValueError(f"{name} image_size must be >= 8, got {self.config.image_size}")
        self.task = metaworld_tasks.check_task(self.config.task)
        self.instruction = metaworld_tasks.instruction(self.task)
        wrong = self.config.wrong_task or metaworld_tasks.next_task(self.task, [])
        self.wrong_task = metaworld_tasks.check_task(wrong)
        if self.wrong_task == self.task:
            raise ValueError(f"{name} wrong_task must be another task than {self.task!r}")
        os.environ.setdefault("MUJOCO_GL", self.config.mujoco_gl)  # read when mujoco first renders
        metaworld = import_sim_package("metaworld", name)
        policies = import_sim_package("metaworld.policies", name)

        benchmark = metaworld.MT1(self.task, seed=BENCHMARK_SEED)
        size = self.config.image_size
        self.env = benchmark.train_classes[self.task](
            render_mode="rgb_array", camera_name=CAMERA, width=size, height=size
        )
        self.env.set_task(benchmark.train_tasks[0])
        self.env.model.cam_pos[self.env.model.camera(CAMERA).id] = CAMERA_POSITION
        if self.config.fast_render:  # read when the renderer's GL context is made, at the first frame
            self.env.model.vis.quality.shadowsize = 0
            self.env.model.vis.quality.offsamples = 0
        self.env._freeze_rand_vec = False  # a new layout at each reset ...
        self.env.seeded_rand_vec = True  # ... drawn from the generator env.seed(seed) seeds
        self.expert = getattr(policies, metaworld_tasks.expert_class_name(self.task))()
        self.action_dim, self.state_dim = ACTION_DIM, STATE_DIM
        self.steps = 0
        self._raw_obs: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> dict:
        """New episode; `seed` draws the object and goal positions (the same seed, the same layout) -> obs."""
        if seed is not None:
            self.env.seed(int(seed))
        self._raw_obs, _ = self.env.reset()
        self.steps = 0
        return self.observation(self._raw_obs)

    def step(self, action: np.ndarray, observe: bool = True) -> tuple[dict | None, float, bool, dict]:
        """action [4] in [-1, 1] -> (obs, reward, done, info); done on success or after `max_steps` steps.

        observe=False skips rendering (obs None): the rollout engine reads only the frame after each chunk."""
        if self._raw_obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"{self.config.name} action must be {ACTION_DIM} finite numbers, got shape {action.shape}: "
                f"{np.array2string(action, threshold=20)}"
            )
        self._raw_obs, reward, _, truncated, raw_info = self.env.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(raw_info.get("success", 0.0))
        done = success or bool(truncated) or self.steps >= self.config.max_steps
        info = {"success": success, "steps": self.steps, "reward": float(reward), "task": self.task}
        return (self.observation(self._raw_obs) if observe else None), float(reward), done, info

    def render(self) -> np.ndarray:
        """The corner2 view as LeRobot shows it: uint8 [image_size, image_size, 3] (both axes flipped back)."""
        return np.ascontiguousarray(np.flip(self.env.render(), (0, 1)))

    def observation(self, raw_obs: np.ndarray) -> dict:
        """Meta-World's 39-D observation -> observation (sample.py contract): the view, the 4-D hand state."""
        return {
            "images": {self.config.cameras[0]: self.render()},
            "state": np.asarray(raw_obs[:STATE_DIM], dtype=np.float32),
            "prompt": self.instruction,
            "dataset_name": self.config.dataset_name,
            "embodiment": "metaworld",
        }

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert for this task at the current state -> action [4] in [-1, 1]."""
        if self._raw_obs is None:
            raise RuntimeError("call reset() before expert_action()")
        with warnings.catch_warnings():  # metaworld warns at every step that its gains may exceed [-1, 1]
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            action = self.expert.get_action(self._raw_obs)
        return np.clip(np.asarray(action, np.float32), -1.0, 1.0)

    def wrong_instruction(self) -> str:
        """The language control: another task's instruction (config.wrong_task, default the next MT10 task)."""
        return metaworld_tasks.instruction(self.wrong_task)

    def close(self) -> None:
        """Frees the GL context now: left to interpreter exit, mujoco 3.3's OSMesa context frees itself a second
        time after its module is gone (an error printed at every exit), so the viewers are dropped here too."""
        self.env.close()
        renderer = self.env.mujoco_renderer
        renderer._viewers.clear()
        renderer.viewer = None
