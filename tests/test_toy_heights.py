"""The `heights` toy variant: the top view's RGB cannot tell the blocks apart, its depth map can.

Oracles see the first observation and then drive the puck (from its state) to the block they picked:
RGB-only oracles (every deterministic rule over the top view's pixels) must sit at chance, 1 / num_objects,
within a two-sided binomial bound; the depth oracle, which reads each block's depth, must succeed always.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlablocks.tools.toy.toy import TOP_HEIGHT, ToyTabletopEnv
from vlablocks.tools.toy.toy_heights import LEVELS, heights_layout
from vlablocks.tools.toy.toy_scene import AGENT_RGB, BLOCK_HEIGHT, FLOOR_RGB, TABLE_RGB

EPISODES = 300
Z = 3.29  # two-sided 99.9% normal quantile


def heights_env(**options) -> ToyTabletopEnv:
    return ToyTabletopEnv(ToyTabletopEnv.Config(variant="heights", **options))


def block_pixels(rgb: np.ndarray) -> np.ndarray:
    """[S, S] True where a block's top face shows (neither table, floor nor puck)."""
    background = [np.all(rgb == np.array(c), axis=-1) for c in (TABLE_RGB, FLOOR_RGB, AGENT_RGB)]
    return ~np.any(background, axis=0)


def candidates(obs: dict, grid: int) -> list[tuple[int, int]]:
    """(row, col) of every lattice cell of the top view that shows a block (the puck never hides a whole face)."""
    mask = block_pixels(obs["images"]["top"])
    cell = mask.shape[0] // grid
    return [
        (r, c)
        for r in range(grid)
        for c in range(grid)
        if mask[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].any()
    ]


def cell_to_world(obs: dict, grid: int, cell: tuple[int, int], depth: float) -> np.ndarray:
    """Back-projects the cell's centre pixel at `depth` through the top camera's K -> world (x, y)."""
    k = obs["intrinsics"]["top"]
    size = obs["images"]["top"].shape[0]
    u, v = (cell[1] + 0.5) * size / grid, (cell[0] + 0.5) * size / grid  # continuous pixel coordinates
    return np.array([0.5 + (u - k[0, 2]) / k[0, 0] * depth, 0.5 - (v - k[1, 2]) / k[1, 1] * depth])


def rgb_oracles(obs: dict, grid: int) -> dict[str, tuple[int, int]]:
    """Rules that read only the top RGB view (and the puck state): each picks one candidate block."""
    cells = candidates(obs, grid)
    mask = block_pixels(obs["images"]["top"])
    cell_px = mask.shape[0] // grid
    world = {c: cell_to_world(obs, grid, c, TOP_HEIGHT - BLOCK_HEIGHT) for c in cells}
    area = {
        c: int(mask[c[0] * cell_px : (c[0] + 1) * cell_px, c[1] * cell_px : (c[1] + 1) * cell_px].sum()) for c in cells
    }
    puck = obs["state"]
    return {
        "first": cells[0],
        "last": cells[-1],
        "largest_area": max(cells, key=lambda c: area[c]),
        "nearest_centre": min(cells, key=lambda c: np.linalg.norm(world[c] - 0.5)),
        "farthest_centre": max(cells, key=lambda c: np.linalg.norm(world[c] - 0.5)),
        "nearest_puck": min(cells, key=lambda c: np.linalg.norm(world[c] - puck)),
    }


def depth_oracle(obs: dict, grid: int) -> np.ndarray:
    """Reads each candidate's top-face depth; picks the tallest (smallest depth) or shortest as instructed."""
    mask, depth = block_pixels(obs["images"]["top"]), obs["depth"]["top"]
    cell_px = mask.shape[0] // grid
    block_depth = {}
    for r, c in candidates(obs, grid):
        region = (slice(r * cell_px, (r + 1) * cell_px), slice(c * cell_px, (c + 1) * cell_px))
        block_depth[(r, c)] = float(np.median(depth[region][mask[region]]))
    pick = min if "tallest" in obs["prompt"] else max
    cell = pick(block_depth, key=block_depth.get)
    return cell_to_world(obs, grid, cell, block_depth[cell])


def drive(env: ToyTabletopEnv, goal: np.ndarray) -> bool:
    """Straight at `goal` at full speed until the episode ends -> success."""
    while True:
        _, _, done, info = env.step(env.cap(goal - env.agent), observe=False)
        if done:
            return info["success"]


def test_top_rgb_is_identical_under_any_permutation_of_heights_depth_is_not():
    env = heights_env(num_objects=3)
    for seed in range(20):
        obs = env.reset(seed=seed)
        layout = env.layout
        lattice = 0.5 + (layout.positions - 0.5) * (TOP_HEIGHT - BLOCK_HEIGHT) / (TOP_HEIGHT - layout.heights)[:, None]
        for permutation in ([1, 2, 0], [2, 0, 1], [1, 0, 2]):
            env.layout = heights_layout(
                lattice, layout.colours[0], layout.heights[permutation], layout.instruction, TOP_HEIGHT, 0.08
            )
            other = env.observation()
            np.testing.assert_array_equal(other["images"]["top"], obs["images"]["top"])
            assert not np.array_equal(other["depth"]["top"], obs["depth"]["top"])
        env.layout = layout


def test_layout_instruction_and_controls():
    env = heights_env()
    kinds = set()
    for seed in range(40):
        obs = env.reset(seed=seed)
        layout = env.layout
        assert len(set(layout.colours)) == 1 and sorted(layout.heights) == sorted(set(layout.heights))
        assert set(layout.heights) <= set(LEVELS)
        name = layout.block_names[layout.target]
        kinds.add(name)
        assert name in obs["prompt"] and name in ("tallest", "shortest")
        expected = layout.heights.max() if name == "tallest" else layout.heights.min()
        assert layout.heights[layout.target] == expected
        wrong = env.wrong_instruction()
        assert name not in wrong and ({"tallest", "shortest"} - {name}).pop() in wrong
        assert np.linalg.norm(layout.positions - obs["state"], axis=1).min() > 2 * env.config.success_radius
        for _ in range(env.config.max_steps):
            _, _, done, info = env.step(env.expert_action(), observe=False)
            if done:
                break
        assert info["success"] and info["target"] == name
    assert kinds == {"tallest", "shortest"}


def test_depth_oracle_always_succeeds_rgb_oracles_sit_at_chance():
    env = heights_env(num_objects=3)
    grid, chance = env.config.grid, 1 / 3
    bound = Z * math.sqrt(chance * (1 - chance) / EPISODES)
    depth_wins, rgb_wins = 0, {}
    for seed in range(EPISODES):
        obs = env.reset(seed=10_000 + seed)
        depth_wins += drive(env, depth_oracle(obs, grid))
        for name, cell in rgb_oracles(obs, grid).items():
            env.reset(seed=10_000 + seed)
            goal = cell_to_world(obs, grid, cell, TOP_HEIGHT - BLOCK_HEIGHT)
            rgb_wins[name] = rgb_wins.get(name, 0) + drive(env, goal)
    assert depth_wins == EPISODES
    for name, wins in rgb_wins.items():
        assert abs(wins / EPISODES - chance) <= bound, f"RGB oracle {name!r}: {wins}/{EPISODES}, chance {chance:.3f}"


@pytest.mark.parametrize("variant", ["colours", "heights"])
def test_variants_are_deterministic(variant):
    a, b = ToyTabletopEnv(ToyTabletopEnv.Config(variant=variant)), ToyTabletopEnv(
        ToyTabletopEnv.Config(variant=variant)
    )
    oa, ob = a.reset(seed=5), b.reset(seed=5)
    np.testing.assert_array_equal(oa["depth"]["top"], ob["depth"]["top"])
    assert oa["prompt"] == ob["prompt"]


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="variant must be one of"):
        ToyTabletopEnv(ToyTabletopEnv.Config(variant="shelf"))


def test_make_toy_data_variant_option(tmp_path):
    import argparse

    from vlablocks.cli.commands import make_toy_data

    parser = argparse.ArgumentParser()
    make_toy_data.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--episodes", "2", "--variant", "heights"])
    assert make_toy_data.run(args, []) == 0
    tasks = (tmp_path / "d" / "meta" / "tasks.parquet").read_bytes()
    assert b"tallest" in tasks or b"shortest" in tasks


def test_toy3d_variant_configs_build_and_share_one_recipe():
    from pathlib import Path

    from vlablocks.tools.sweep.sweep import build_variants

    configs = Path(__file__).resolve().parents[1] / "configs/experiments/toy3d"
    files = sorted(map(str, configs.glob("spatial_*.yaml")))
    variants = build_variants(str(configs / "qwen_layerwise_fm_3d.yaml"), files, None, [], [0, 1, 2])
    assert len(variants) == 6 * 3
    for variant in variants:
        config = variant.experiment
        assert config.dataset["root"] == "data/toy3d_1000"
        assert config.dataset["camera_keys"] == ["observation.images.top"]
        assert config.trainer.max_steps == 1500 and config.trainer.batch_size == 32
        geometry = config.framework["use_geometric_branch"]
        assert bool(config.dataset["depth_keys"]) == geometry  # RGB-only variants never load depth
