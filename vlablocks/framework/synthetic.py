"""Synthetic raw examples and their norm stats: the offline batch for smoke tests and contract tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vlablocks.config import PlatformConfig
from vlablocks.dataloader.stats import stats_for

INSTRUCTIONS = ("pick up the red block", "push the blue cube left", "open the drawer", "move to the green target")


def synthetic_examples(
    platform: PlatformConfig,
    batch_size: int,
    num_views: int = 1,
    image_size: int = 56,
    seed: int = 0,
    dataset_name: str = "synthetic",
) -> list[dict]:
    """Examples in the sample contract: random images, smooth action chunks [T, D], state [S]."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(batch_size):
        steps = rng.normal(0.0, 0.1, (platform.action_horizon, platform.action_dim))
        examples.append(
            {
                "image": [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(num_views)],
                "lang": INSTRUCTIONS[i % len(INSTRUCTIONS)],
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
