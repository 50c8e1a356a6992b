"""Synthetic raw examples and their norm stats: the offline batch for smoke tests and contract tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from vlablocks.core.config import PlatformConfig
from vlablocks.core.dataloader.stats import stats_for

INSTRUCTIONS = ("pick up the red block", "push the blue cube left", "open the drawer", "move to the green target")


def default_camera_keys(num_views: int) -> list[str]:
    """Camera keys of synthetic views: ["image"], then ["image", "image_1", ...] for more views."""
    return ["image", *(f"image_{i}" for i in range(1, num_views))]


def synthetic_examples(
    platform: PlatformConfig,
    batch_size: int,
    num_views: int | None = None,
    image_size: int = 56,
    seed: int = 0,
    dataset_name: str = "synthetic",
    camera_keys: Sequence[str] | None = None,
) -> list[dict]:
    """Examples in the sample contract: random images {camera_key: uint8 [image_size, image_size, 3]}, smooth
    action chunks [T, D], state [S]. The cameras are `camera_keys`, or `default_camera_keys(num_views or 1)`."""
    keys = list(camera_keys) if camera_keys is not None else default_camera_keys(num_views or 1)
    if num_views is not None and num_views != len(keys):
        raise ValueError(f"num_views {num_views} disagrees with camera_keys {keys}; pass one of them")
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(batch_size):
        steps = rng.normal(0.0, 0.1, (platform.action_horizon, platform.action_dim))
        examples.append(
            {
                "images": {key: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for key in keys},
                "prompt": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                "action": np.cumsum(steps, axis=0).astype(np.float32),
                "action_is_pad": np.zeros(platform.action_horizon, dtype=bool),
                "state": rng.normal(0.0, 1.0, platform.state_dim).astype(np.float32),
                "dataset_name": dataset_name,
                "embodiment": platform.name,
            }
        )
    return examples


class ExamplesStatsSource:
    """A `StatsSource` over in-memory examples (what `compute_norm_stats` reads from datasets)."""

    def __init__(self, examples: list[dict], mode: str = "q99") -> None:
        self.examples = examples
        self.name = examples[0]["dataset_name"]
        self.norm_mode = mode

    def norm_masks(self) -> dict[str, list[bool]]:
        return {}

    def low_dim_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        batch = {"action": np.concatenate([e["action"] for e in self.examples])}
        if all(e.get("state") is not None for e in self.examples):
            batch["state"] = np.stack([e["state"] for e in self.examples])
        yield batch


def synthetic_norm_stats(examples: list[dict], mode: str = "q99") -> dict:
    source = ExamplesStatsSource(examples, mode)
    return {source.name: stats_for(source)}
