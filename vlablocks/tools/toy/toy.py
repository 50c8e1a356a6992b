"""`toy`: a language-conditioned tabletop task in pure numpy, the CPU-scale stand-in for LIBERO.

A white puck must reach the block whose colour the instruction names, among `num_objects` blocks of
distinct colours on a coarse grid (`variant: colours`), or the tallest / shortest of blocks that look
identical from the top camera and differ only in depth (`variant: heights`, vlablocks/tools/toy/toy_heights.py), or
two named blocks in order (`variant: two_stage`, eval-only, vlablocks/tools/toy/toy_two_stage.py). Actions are planar
displacements [dx, dy] (norm capped at `max_move`), the state is the puck position [x, y]; success is the puck
centre within `success_radius` of the named block's centre (two_stage: of A, then of B). See docs/toy_task.md.

    env = ToyTabletopEnv(ToyTabletopEnv.Config())
    obs = env.reset(seed=0)
    while True:
        obs, reward, done, info = env.step(env.expert_action())
        if done:
            break
    assert info["success"]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vlablocks.core.registry import EVAL_ENVS
from vlablocks.tools.toy import toy_heights, toy_two_stage
from vlablocks.tools.toy.toy_scene import AGENT_HEIGHT, Camera, Layout, render, sample_layout

ACTION_DIM = 2
STATE_DIM = 2
CAMERAS = ("top", "wrist")
TOP_HEIGHT = 1.5
WRIST_HEIGHT = 0.45
WRIST_HALF_VIEW = 0.2  # half the table width the wrist camera sees


class Colours:
    """The base task: the instruction names the target block's colour. A variant says how a scene is drawn, where
    the puck may start, what the wrong instruction is and what it adds to an observation."""

    max_steps = 30  # the episode length when `max_steps` is None
    agent_height = AGENT_HEIGHT

    def sample_layout(self, rng: np.random.Generator, config) -> Layout:
        return sample_layout(rng, config.grid, config.num_objects)

    def start_is_clear(self, env: ToyTabletopEnv) -> bool:
        """Whether the puck's start is not already within reach of the target."""
        return env.distance() > 2 * env.config.success_radius

    def wrong_instruction(self, layout: Layout) -> str:
        """The instruction naming the next block (in scene order) of another colour."""
        names = layout.block_names
        return layout.instruction.replace(names[layout.target], names[(layout.target + 1) % len(names)])

    def extra_observation(self, layout: Layout) -> dict:
        return {}


def away_from_every_block(env: ToyTabletopEnv) -> bool:
    """The puck starts away from every block (heights: its start says nothing of the target)."""
    return np.linalg.norm(env.layout.positions - env.agent, axis=1).min() > 2 * env.config.success_radius


class Heights(Colours):
    """Blocks that look identical from the top differ in height: "the tallest / shortest" (toy_heights.py)."""

    agent_height = toy_heights.AGENT_HEIGHT

    def sample_layout(self, rng: np.random.Generator, config) -> Layout:
        return toy_heights.sample_heights_layout(rng, config.grid, config.num_objects, TOP_HEIGHT, config.block_half)

    def start_is_clear(self, env: ToyTabletopEnv) -> bool:
        return away_from_every_block(env)

    def wrong_instruction(self, layout: Layout) -> str:
        """The other extreme."""
        right = layout.block_names[layout.target]
        return layout.instruction.replace(right, "shortest" if right == "tallest" else "tallest")


class TwoStage(Colours):
    """Two named blocks in order, eval-only (toy_two_stage.py); the puck starts away from every block."""

    max_steps = toy_two_stage.MAX_STEPS

    def sample_layout(self, rng: np.random.Generator, config) -> Layout:
        return toy_two_stage.sample_two_stage_layout(rng, config.grid, config.num_objects)

    def start_is_clear(self, env: ToyTabletopEnv) -> bool:
        return away_from_every_block(env)

    def wrong_instruction(self, layout: Layout) -> str:
        """A and B swapped ("touch the B block, then the A block")."""
        return layout.swapped_instruction()

    def extra_observation(self, layout: Layout) -> dict:
        """Each stage's base-task instruction (text-latent interpolation reads them)."""
        return {"subtasks": list(toy_two_stage.stage_instructions(layout))}


VARIANTS = {"colours": Colours(), "heights": Heights(), "two_stage": TwoStage()}


@EVAL_ENVS.register("toy")
class ToyTabletopEnv:
    """Pure-numpy tabletop: move the puck to the block of the named colour (2-D moves, 1-2 cameras + depth)."""

    @dataclass(frozen=True)
    class Config:
        name: str = "toy"
        variant: str = "colours"  # colours: the colour names the block; heights: tallest / shortest (depth only);
        # two_stage: "touch the A block, then the B block" (eval-only)
        image_size: int = 112  # pixels per side; 112 = a 4 x 4 grid of Qwen's 28-pixel merged tokens
        grid: int = 4  # blocks sit on the centres of a grid x grid lattice
        num_objects: int = 3
        cameras: list[str] = field(default_factory=lambda: ["top"])  # keys of obs["images"], from CAMERAS
        max_steps: int | None = None  # None: the variant's default, its `max_steps` (30; two_stage 60)
        max_move: float = 0.1  # action norm cap, in table widths
        success_radius: float = 0.08  # = block_half: the puck centre is over the block (docs/toy_task.md)
        block_half: float = 0.08  # half side of a block
        agent_radius: float = 0.05
        dataset_name: str = "toy"  # tag put in obs, selects the normalization stats at serving time

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        unknown = [c for c in self.config.cameras if c not in CAMERAS]
        if unknown or not self.config.cameras:
            raise ValueError(
                f"toy env cameras must be a non-empty subset of {list(CAMERAS)}, got {self.config.cameras}"
            )
        if self.config.variant not in VARIANTS:
            raise ValueError(f"toy env variant must be one of {list(VARIANTS)}, got {self.config.variant!r}")
        self.variant = VARIANTS[self.config.variant]
        if self.config.max_steps is None:
            self.config = replace(self.config, max_steps=self.variant.max_steps)
        if self.config.max_steps < 1:
            raise ValueError(
                f"toy env max_steps must be >= 1 (or None: the variant's default), got {self.config.max_steps}"
            )
        self.agent_height = self.variant.agent_height
        size = self.config.image_size
        self.cameras = {
            "top": (Camera(size, focal=size / 2 * TOP_HEIGHT / 0.5), TOP_HEIGHT),
            "wrist": (Camera(size, focal=size / 2 * WRIST_HEIGHT / WRIST_HALF_VIEW), WRIST_HEIGHT),
        }
        self.action_dim = ACTION_DIM
        self.state_dim = STATE_DIM
        self.layout: Layout | None = None
        self.agent = np.zeros(2)
        self.steps = 0
        self.stage = 0  # how many of `targets` are done, in order

    # -- gym-like API ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> dict:
        """New layout and puck position (never already within reach of the target) -> obs.

        heights, two_stage: the puck starts away from every block (heights: its start says nothing of the target).
        """
        rng = np.random.default_rng(seed)
        self.layout = self.variant.sample_layout(rng, self.config)
        self.stage = 0
        while True:
            self.agent = rng.uniform(0.05, 0.95, size=2)
            if self.variant.start_is_clear(self):
                break
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray, observe: bool = True) -> tuple[dict | None, float, bool, dict]:
        """action: [2] displacement (norm capped at max_move) -> (obs, reward, done, info).

        observe=False skips rendering (obs None): for the open-loop steps of a chunk, whose observations nobody reads.
        """
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"toy env action must be {ACTION_DIM} finite numbers, got {action.tolist()}")
        self.agent = np.clip(self.agent + self.cap(action), 0.0, 1.0)
        self.steps += 1
        while self.stage < len(self.targets) and self.distance() <= self.config.success_radius:
            self.stage += 1  # the current target is reached: on to the next (in order; one target: done)
        success = self.stage == len(self.targets)
        done = success or self.steps >= self.config.max_steps
        info = {
            "success": bool(success),
            "stage": self.stage,  # targets reached so far, in order (0 / 1; two_stage 0 / 1 / 2)
            "distance": self.distance(),  # to the current target (the last one once all are reached)
            "target": self.layout.block_names[self.current_target()],
            "reached": self.reached(),
        }
        return self.observation() if observe else None, float(success), bool(done), info

    def expert_action(self) -> np.ndarray:
        """The scripted expert: straight at the current target (two_stage: A, then B) at full speed -> [2] float32."""
        return self.cap(self.layout.positions[self.current_target()] - self.agent).astype(np.float32)

    def wrong_instruction(self) -> str:
        """The current instruction naming another block of the scene (a control for language use): the next
        block (in scene order) whose name differs, i.e. another colour, or for heights the other extreme;
        two_stage: A and B swapped ("touch the B block, then the A block")."""
        if len(self.layout.block_names) < 2:
            raise ValueError("wrong_instruction needs num_objects >= 2")
        return self.variant.wrong_instruction(self.layout)

    def stage_instructions(self) -> tuple[str, str]:
        """two_stage only: each stage's single-target instruction in the training phrasing, (A's, B's)."""
        return toy_two_stage.stage_instructions(self.layout)

    # -- helpers --------------------------------------------------------------------------------

    @property
    def targets(self) -> tuple[int, ...]:
        """The block indices to reach, in order: (target,), or for two_stage (A, B)."""
        return toy_two_stage.stage_targets(self.layout)

    def current_target(self) -> int:
        """The index of the block to reach now: targets[stage] (the last target once all are reached)."""
        return self.targets[min(self.stage, len(self.targets) - 1)]

    def cap(self, move: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(move))
        return move if norm <= self.config.max_move else move * (self.config.max_move / norm)

    def reached(self) -> str | None:
        """The name (colour, or tallest / middle / shortest) of the block the puck is on (within success_radius of
        its centre), else None."""
        distances = np.linalg.norm(self.layout.positions - self.agent, axis=1)
        nearest = int(distances.argmin())
        return self.layout.block_names[nearest] if distances[nearest] <= self.config.success_radius else None

    def distance(self) -> float:
        return float(np.linalg.norm(self.agent - self.layout.positions[self.current_target()]))

    def observation(self) -> dict:
        """The observation contract (sample.py): images/depth/intrinsics keyed by camera name, state [2], prompt."""
        images, depths, intrinsics = {}, {}, {}
        for name in self.config.cameras:
            camera, height = self.cameras[name]
            if name == "top":
                rgb, depth = render(
                    camera,
                    np.array([0.5, 0.5]),
                    height,
                    self.layout,
                    self.config.block_half,
                    self.agent,
                    self.config.agent_radius,
                    self.agent_height,
                )
            else:  # mounted above the puck, which it therefore does not see
                rgb, depth = render(camera, self.agent, height, self.layout, self.config.block_half, None, 0.0)
            images[name], depths[name], intrinsics[name] = rgb, depth, camera.intrinsics
        obs = {
            "images": images,
            "depth": depths,
            "intrinsics": intrinsics,
            "state": self.agent.astype(np.float32),
            "prompt": self.layout.instruction,
            "dataset_name": self.config.dataset_name,
            "embodiment": "toy",
            **self.variant.extra_observation(self.layout),
        }
        return obs
