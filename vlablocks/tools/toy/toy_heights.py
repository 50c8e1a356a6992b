"""The `heights` variant of the toy task: blocks that only depth tells apart (docs/toy_task.md, docs/spatial_fusion.md).

Every block of an episode has the same colour and a distinct height out of `LEVELS`; the instruction
names the tallest or the shortest block ("go to the tallest block"). The top view must not tell the
blocks apart, so each block's top face is placed and sized so that the top camera (a pinhole at
(0.5, 0.5, camera_height) looking straight down) sees exactly the square a block of the default height
`BLOCK_HEIGHT` on its lattice cell would show. With H = camera_height, e = (0.5, 0.5) the camera's
ground point, c the lattice cell centre and h the block's height:

    centre(h)    = e + (c - e) * (H - h) / (H - BLOCK_HEIGHT)       (x, y of the top face's centre)
    half_side(h) = block_half * (H - h) / (H - BLOCK_HEIGHT)

A ray of slope s (x = e + s * (H - z)) hits that face iff |s * (H - BLOCK_HEIGHT) - (c - e)| <= block_half,
which does not depend on h: the same pixels, the same colour, for every height. Only the depth of those
pixels (H - h) differs. So the top view's RGB is identical under any permutation of which block has
which height (tests/test_toy_heights.py checks this pixel for pixel), and an RGB-only policy can do no
better than 1 / num_objects. The wrist camera (a different eye) does see the heights as different sizes.
"""

from __future__ import annotations

import numpy as np

from vlablocks.tools.toy.toy_scene import BLOCK_HEIGHT, COLOURS, Layout

LEVELS = (0.04, 0.12, 0.20, 0.28)  # block heights in table widths; depth steps of 0.08 between levels
AGENT_HEIGHT = 0.36  # the puck (a gripper) hovers above the tallest level
EXTREMES = ("tallest", "shortest")  # what an instruction may name
INSTRUCTION_TEMPLATES = (
    "move to the {name} block",
    "go to the {name} square",
    "reach the {name} cube",
    "touch the {name} block",
    "put the gripper on the {name} one",
)


def rank_names(heights: np.ndarray) -> tuple[str, ...]:
    """Per block: "tallest", "shortest", or "middle" (neither extreme). heights: [N] distinct."""
    top, bottom = int(np.argmax(heights)), int(np.argmin(heights))
    return tuple("tallest" if i == top else "shortest" if i == bottom else "middle" for i in range(len(heights)))


def sample_heights_layout(
    rng: np.random.Generator, grid: int, num_objects: int, camera_height: float, block_half: float
) -> Layout:
    """Blocks of one random colour on distinct random cells, with distinct random heights out of LEVELS; the
    target is the tallest or the shortest (equally likely), so each block is the target with chance 1 / N."""
    if not 2 <= num_objects <= min(len(LEVELS), grid * grid):
        raise ValueError(f"the heights variant needs num_objects in [2, {min(len(LEVELS), grid * grid)}]")
    cells = rng.choice(grid * grid, size=num_objects, replace=False)
    lattice = np.stack([(cells % grid + 0.5) / grid, (cells // grid + 0.5) / grid], axis=1)
    colour = str(rng.choice(list(COLOURS)))
    heights = rng.choice(np.asarray(LEVELS), size=num_objects, replace=False)
    extreme = EXTREMES[int(rng.integers(len(EXTREMES)))]
    template = INSTRUCTION_TEMPLATES[int(rng.integers(len(INSTRUCTION_TEMPLATES)))]
    return heights_layout(lattice, colour, heights, template.format(name=extreme), camera_height, block_half)


def heights_layout(
    lattice: np.ndarray, colour: str, heights: np.ndarray, instruction: str, camera_height: float, block_half: float
) -> Layout:
    """lattice: [N, 2] cell centres; heights: [N] distinct; the instruction names "tallest" or "shortest".

    -> the Layout whose top faces look, from the top camera, like default-height blocks on those cells."""
    heights = np.asarray(heights, dtype=np.float64)
    names = rank_names(heights)
    extreme = next(name for name in EXTREMES if name in instruction)
    scale = (camera_height - heights) / (camera_height - BLOCK_HEIGHT)  # [N]
    positions = 0.5 + (np.asarray(lattice, dtype=np.float64) - 0.5) * scale[:, None]
    return Layout(
        positions,
        (colour,) * len(heights),
        names.index(extreme),
        instruction,
        heights=heights,
        half_sides=block_half * scale,
        names=names,
    )
