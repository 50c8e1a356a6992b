"""The toy tabletop scene: layout, instructions and a pinhole renderer, in pure numpy.

World frame: the table is the unit square z = 0, x to the right, y away from the viewer, z up.
Coloured blocks (tops at `BLOCK_HEIGHT`) sit on the centres of a coarse `grid x grid` lattice, at most
one per cell; the agent is a white puck (top at `AGENT_HEIGHT`) moving freely over the table.

Cameras look straight down. A camera frame is right-handed with x_c = x_w, y_c = -y_w, z_c pointing
down, so `depth` (z_c) = camera height - surface height and a pixel (u, v) back-projects through the
intrinsics K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] (pixel centres at u + 0.5). Only the top faces
of blocks are rendered (their sides would cover a pixel or two at the image edges): enough for a toy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 205, 40),
}
TABLE_RGB = (140, 140, 140)
FLOOR_RGB = (50, 50, 50)
AGENT_RGB = (250, 250, 250)
FLOOR_Z = -0.5
BLOCK_HEIGHT = 0.06
AGENT_HEIGHT = 0.10
# Every phrasing names the colour: the instruction is the only way to know which block to reach.
INSTRUCTION_TEMPLATES = (
    "move to the {colour} block",
    "go to the {colour} square",
    "reach the {colour} cube",
    "touch the {colour} block",
    "put the gripper on the {colour} one",
)


@dataclass(frozen=True)
class Layout:
    """One episode's scene. positions: [N, 2] block centres (x, y); colours: N names; target: index.

    heights / half_sides: [N] top-face height and half side per block (None: BLOCK_HEIGHT and the env's
    block_half, the `colours` task); names: what the instruction calls each block (None: its colour).
    """

    positions: np.ndarray
    colours: tuple[str, ...]
    target: int
    instruction: str
    heights: np.ndarray | None = None
    half_sides: np.ndarray | None = None
    names: tuple[str, ...] | None = None

    @property
    def target_position(self) -> np.ndarray:
        return self.positions[self.target]

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.names if self.names is not None else self.colours

    def block_heights(self) -> np.ndarray:
        """[N] top-face heights."""
        return self.heights if self.heights is not None else np.full(len(self.colours), BLOCK_HEIGHT)

    def block_halves(self, default: float) -> np.ndarray:
        """[N] top-face half sides."""
        return self.half_sides if self.half_sides is not None else np.full(len(self.colours), default)


def sample_layout(rng: np.random.Generator, grid: int, num_objects: int) -> Layout:
    """Blocks on distinct random cells with distinct random colours; one is named as the target."""
    if not 1 <= num_objects <= min(len(COLOURS), grid * grid):
        raise ValueError(f"num_objects must be in [1, {min(len(COLOURS), grid * grid)}], got {num_objects}")
    cells = rng.choice(grid * grid, size=num_objects, replace=False)
    positions = np.stack([(cells % grid + 0.5) / grid, (cells // grid + 0.5) / grid], axis=1)
    colours = tuple(str(c) for c in rng.choice(list(COLOURS), size=num_objects, replace=False))
    target = int(rng.integers(num_objects))
    template = INSTRUCTION_TEMPLATES[int(rng.integers(len(INSTRUCTION_TEMPLATES)))]
    return Layout(positions.astype(np.float64), colours, target, template.format(colour=colours[target]))


@dataclass(frozen=True)
class Camera:
    """A downward-looking pinhole camera of `size` x `size` pixels (its position is given to `render`)."""

    size: int
    focal: float

    @property
    def intrinsics(self) -> np.ndarray:
        """[3, 3] float32."""
        c = self.size / 2.0
        return np.array([[self.focal, 0.0, c], [0.0, self.focal, c], [0.0, 0.0, 1.0]], dtype=np.float32)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel ray slopes (dx/dz, dy/dz) in the world frame: two [size, size] arrays."""
        offsets = (np.arange(self.size) + 0.5 - self.size / 2.0) / self.focal
        return np.broadcast_to(offsets[None, :], (self.size, self.size)), np.broadcast_to(
            -offsets[:, None], (self.size, self.size)
        )


def render(
    camera: Camera,
    eye: np.ndarray,
    height: float,
    layout: Layout,
    block_half: float,
    agent: np.ndarray | None,
    agent_radius: float,
    agent_height: float = AGENT_HEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Renders the scene from a camera at (eye_x, eye_y, height) -> (rgb [S, S, 3] uint8, depth [S, S] float32 m).

    `agent=None` leaves the puck out (a camera mounted on it). Blocks are drawn lowest first, the puck last.
    """
    slope_x, slope_y = camera.rays()

    def hit(z: float) -> tuple[np.ndarray, np.ndarray]:  # where each ray crosses the plane at height z
        return eye[0] + slope_x * (height - z), eye[1] + slope_y * (height - z)

    x, y = hit(0.0)
    on_table = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    surface = np.where(on_table, 0.0, FLOOR_Z)
    rgb = np.where(on_table[..., None], np.array(TABLE_RGB), np.array(FLOOR_RGB)).astype(np.uint8)
    heights, halves = layout.block_heights(), layout.block_halves(block_half)
    for i in np.argsort(heights, kind="stable"):
        x, y = hit(float(heights[i]))
        bx, by = layout.positions[i]
        top = (np.abs(x - bx) <= halves[i]) & (np.abs(y - by) <= halves[i])
        rgb[top] = COLOURS[layout.colours[i]]
        surface = np.where(top, heights[i], surface)
    if agent is not None:
        x, y = hit(agent_height)
        puck = (x - agent[0]) ** 2 + (y - agent[1]) ** 2 <= agent_radius**2
        rgb[puck] = AGENT_RGB
        surface = np.where(puck, agent_height, surface)
    return rgb, (height - surface).astype(np.float32)
