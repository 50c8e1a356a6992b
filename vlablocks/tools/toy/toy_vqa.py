"""Questions about toy scenes, with answers correct by construction (co-training data, docs/cotraining.md).

A scene is a toy-task reset (`ToyTabletopEnv.reset(seed)`: blocks on the grid, the puck somewhere, the same
renderer and top camera as the robot data) with 1 to `max_objects` blocks. Three kinds of question, answered
from the scene's layout:

    count:   "how many blocks are there?"                                   -> "1" .. "4"
    colour:  "what colour is the block in the top-left cell?"                -> a colour, or "none" (empty cell)
             "what colour is the block in row 2, column 3?"  (rows counted from the top, columns from the left)
    exists:  "is there a red block?"                                        -> "yes" / "no"

The top camera sees exactly the table (x to the right, y up the image), so grid cell (row r from the top,
column c from the left) is the image's r-th, c-th `grid`-th of the height and width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlablocks.tools.toy.toy_scene import COLOURS, Layout

KINDS = ("count", "colour", "exists")
CORNERS = {(0, 0): "top-left", (0, -1): "top-right", (-1, 0): "bottom-left", (-1, -1): "bottom-right"}


@dataclass(frozen=True)
class Question:
    """One question about a scene: its kind, text and normalized answer."""

    kind: str
    question: str
    answer: str


def block_cells(layout: Layout, grid: int) -> dict[tuple[int, int], str]:
    """{(row from the top, column from the left): colour} of the scene's blocks (0-based)."""
    cells = {}
    for (x, y), colour in zip(layout.positions, layout.colours):
        column, row_up = int(np.floor(x * grid)), int(np.floor(y * grid))
        cells[(grid - 1 - row_up, column)] = colour
    return cells


def cell_name(row: int, column: int, grid: int) -> str:
    """(row, column) 0-based -> "the top-left cell" for corners, else "row 2, column 3" (1-based)."""
    for (r, c), name in CORNERS.items():
        if (row, column) == (r % grid, c % grid):
            return f"the {name} cell"
    return f"row {row + 1}, column {column + 1}"


def count_question(layout: Layout) -> Question:
    return Question("count", "how many blocks are there?", str(len(layout.colours)))


def colour_question(layout: Layout, grid: int, rng: np.random.Generator, occupied_share: float = 0.5) -> Question:
    """About an occupied cell with probability `occupied_share` (when any is free), else an empty one ("none")."""
    cells = block_cells(layout, grid)
    empty = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in cells]
    occupied = sorted(cells)
    pool = occupied if (rng.random() < occupied_share or not empty) else empty
    row, column = pool[int(rng.integers(len(pool)))]
    answer = cells.get((row, column), "none")
    return Question("colour", f"what colour is the block in {cell_name(row, column, grid)}?", answer)


def exists_question(layout: Layout, rng: np.random.Generator) -> Question:
    """About a colour in the scene with probability 1/2 (when one is absent), else an absent one."""
    present = list(layout.colours)
    absent = [c for c in COLOURS if c not in present]
    pool = present if (rng.random() < 0.5 or not absent) else absent
    colour = pool[int(rng.integers(len(pool)))]
    return Question("exists", f"is there a {colour} block?", "yes" if colour in present else "no")


def scene_questions(
    layout: Layout,
    grid: int,
    rng: np.random.Generator,
    per_scene: int,
    kinds: tuple[str, ...] = KINDS,
    occupied_share: float = 0.5,
) -> list[Question]:
    """`per_scene` questions: `kinds` in turn (by default count, colour, exists, count, ...), drawn with `rng`."""
    questions = []
    for i in range(per_scene):
        kind = kinds[i % len(kinds)]
        if kind == "count":
            questions.append(count_question(layout))
        elif kind == "colour":
            questions.append(colour_question(layout, grid, rng, occupied_share))
        else:
            questions.append(exists_question(layout, rng))
    return questions


def make_toy_vqa(
    num_scenes: int,
    seed: int,
    per_scene: int = 3,
    max_objects: int = 4,
    image_size: int = 112,
    kinds: tuple[str, ...] = KINDS,
    occupied_share: float = 0.5,
) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
    """-> (scenes: per scene {"top": uint8 [S, S, 3]}, records: {"scene", "question", "answer", "kind", "seed"}).

    Scene i is the toy env reset with seed `seed + i` and 1 + i % max_objects blocks. `kinds` are asked in turn;
    a colour question names an occupied cell with probability `occupied_share` (evaluation sets keep 0.5).
    """
    from vlablocks.tools.toy.toy import ToyTabletopEnv

    if num_scenes < 1 or per_scene < 1 or not 1 <= max_objects <= len(COLOURS):
        raise ValueError(
            f"need scenes >= 1, questions per scene >= 1 and 1 <= max_objects <= {len(COLOURS)}; got "
            f"{num_scenes}, {per_scene}, {max_objects}"
        )
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"question kinds must be a non-empty subset of {', '.join(KINDS)}; got {list(kinds)}")
    if not 0.0 <= occupied_share <= 1.0:
        raise ValueError(f"occupied_share is a probability in [0, 1], got {occupied_share}")
    envs = [ToyTabletopEnv(ToyTabletopEnv.Config(image_size=image_size, num_objects=n + 1)) for n in range(max_objects)]
    scenes, records = [], []
    for i in range(num_scenes):
        env = envs[i % max_objects]
        observation = env.reset(seed=seed + i)
        rng = np.random.default_rng([seed + i, 0x51A])
        scenes.append({"top": observation["images"]["top"]})
        for q in scene_questions(env.layout, env.config.grid, rng, per_scene, kinds, occupied_share):
            records.append({"scene": i, "question": q.question, "answer": q.answer, "kind": q.kind, "seed": seed + i})
    return scenes, records
