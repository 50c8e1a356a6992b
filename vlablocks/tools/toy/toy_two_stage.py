"""The `two_stage` variant of the toy task: "touch the red block, then the blue block", scored in order.

An eval-only extrapolation task (docs/toy_task.md): policies train on the single-target `colours` data and are
asked to chain two of those base tasks. The scene is a `colours` scene (distinct colours on the lattice); two
distinct blocks are named, A (first) and B (second). The env counts stages: stage 1 is done the first time the
puck is within `success_radius` of A, stage 2 the first time after that it is within reach of B; reaching B
before A, or A again later, does nothing. Success is both stages in order.

Each two-stage phrasing is paired with the single-target training phrasing it extends
("touch the red block, then the blue block" <-> "touch the {colour} block", one of
toy_scene.INSTRUCTION_TEMPLATES), so `TwoStageLayout.stage_instructions()` gives per-stage instructions
worded exactly like the training data, e.g. for steering a policy with the latent of stage 1, then of stage 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlablocks.tools.toy.toy_scene import Layout, sample_layout

# (two-stage phrasing, the training phrasing of its stages: one of toy_scene.INSTRUCTION_TEMPLATES, tested)
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("touch the {first} block, then the {second} block", "touch the {colour} block"),
    ("go to the {first} square and then to the {second} square", "go to the {colour} square"),
    ("move to the {first} block, then to the {second} block", "move to the {colour} block"),
)
MAX_STEPS = 60  # the variant's default episode length: 2 x the single-target default of 30 (two targets)
EVAL_ONLY = (
    "the toy variant two_stage is eval-only: its training data is the ordinary single-target data "
    "(make-toy-data --variant colours); evaluate it with `vlablocks eval --env toy variant=two_stage`"
)


@dataclass(frozen=True)
class TwoStageLayout(Layout):
    """A `colours` scene naming two blocks in order: `target` is A (first), `second` is B; `template` indexes
    TEMPLATES (the instruction's phrasing and its stages' single-target phrasing)."""

    second: int = 1
    template: int = 0

    @property
    def targets(self) -> tuple[int, int]:
        """The block indices to reach, in order: (A, B)."""
        return self.target, self.second

    def stage_instructions(self) -> tuple[str, str]:
        """The single-target instruction of each stage, in the training phrasing: ("touch the A block", "... B ...")."""
        stage = TEMPLATES[self.template][1]
        return stage.format(colour=self.colours[self.target]), stage.format(colour=self.colours[self.second])

    def swapped_instruction(self) -> str:
        """The instruction with A and B swapped, same phrasing (the language control: right blocks, wrong order)."""
        return two_stage_instruction(self.template, self.colours[self.second], self.colours[self.target])


def two_stage_instruction(template: int, first: str, second: str) -> str:
    """TEMPLATES[template]'s two-stage phrasing naming the colours `first`, then `second`."""
    return TEMPLATES[template][0].format(first=first, second=second)


def sample_two_stage_layout(rng: np.random.Generator, grid: int, num_objects: int) -> TwoStageLayout:
    """A `colours` scene (distinct cells, distinct colours) with two distinct random blocks named A then B."""
    if num_objects < 2:
        raise ValueError(f"the two_stage toy variant needs num_objects >= 2 (two targets), got {num_objects}")
    scene = sample_layout(rng, grid, num_objects)
    first, second = (int(i) for i in rng.choice(num_objects, size=2, replace=False))
    template = int(rng.integers(len(TEMPLATES)))
    instruction = two_stage_instruction(template, scene.colours[first], scene.colours[second])
    return TwoStageLayout(scene.positions, scene.colours, first, instruction, second=second, template=template)


def stage_targets(layout: Layout) -> tuple[int, ...]:
    """The block indices an episode must reach in order: (A, B) for a TwoStageLayout, else (target,)."""
    return layout.targets if isinstance(layout, TwoStageLayout) else (layout.target,)


def stage_instructions(layout: Layout) -> tuple[str, str]:
    """The layout's per-stage single-target instructions; a ValueError for a single-target layout."""
    if not isinstance(layout, TwoStageLayout):
        raise ValueError("stage_instructions() needs the two_stage toy variant (variant=two_stage)")
    return layout.stage_instructions()
