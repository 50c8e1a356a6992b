"""Normalization statistics in bounded memory: streaming moments plus a reservoir for quantiles.

min, max, mean and std are exact, merged batch by batch (Chan et al.'s parallel variance update, in
float64). q01/q99 come from a uniform reservoir sample of at most `reservoir_size` rows (Vitter's
algorithm R, seeded): exact (numpy's linear interpolation) while the data fit in the reservoir, and
otherwise off by a rank error of about sqrt(p (1 - p) / n) — for p = 0.01 and the default n = 100,000,
about 0.03 percentile points. Memory: O(reservoir_size x D) whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from vlablocks.core.dataloader.base import RawDataset

DEFAULT_RESERVOIR = 100_000


class RunningStats:
    """Per-dimension statistics of a stream of [N, D] batches."""

    def __init__(self, reservoir_size: int = DEFAULT_RESERVOIR, seed: int = 0) -> None:
        self.reservoir_size = reservoir_size
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.reservoir: np.ndarray | None = None
        self.filled = 0

    def update(self, batch: np.ndarray) -> None:
        """batch: [N, D]."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim != 2:
            raise ValueError(f"RunningStats.update: expected [N, D], got shape {list(batch.shape)}")
        n = batch.shape[0]
        if n == 0:
            return
        if self.mean is None:
            dim = batch.shape[1]
            self.mean, self.m2 = np.zeros(dim), np.zeros(dim)
            self.min, self.max = np.full(dim, np.inf), np.full(dim, -np.inf)
            self.reservoir = np.empty((self.reservoir_size, dim))
        elif batch.shape[1] != self.mean.shape[0]:
            raise ValueError(f"RunningStats.update: expected dim {self.mean.shape[0]}, got {batch.shape[1]}")
        batch_mean = batch.mean(axis=0)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + ((batch - batch_mean) ** 2).sum(axis=0) + delta**2 * (self.count * n / total)
        self.min = np.minimum(self.min, batch.min(axis=0))
        self.max = np.maximum(self.max, batch.max(axis=0))
        self._reservoir_add(batch)
        self.count = total

    def _reservoir_add(self, batch: np.ndarray) -> None:
        take = min(self.reservoir_size - self.filled, len(batch))
        self.reservoir[self.filled : self.filled + take] = batch[:take]
        self.filled += take
        rest = batch[take:]
        if len(rest):
            # Row number t (0-based, over the whole stream) replaces a uniform slot with probability size / (t + 1).
            t = self.count + take + np.arange(len(rest))
            slots = (self.rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = slots < self.reservoir_size
            self.reservoir[slots[keep]] = rest[keep]  # later rows win on repeated slots, as in sequential R

    def result(self) -> dict[str, list[float] | int]:
        """{"min", "max", "mean", "std" (population), "q01", "q99": [D] lists, "count": int}."""
        if self.count == 0:
            raise ValueError("no data: the stream was empty")
        sample = self.reservoir[: self.filled]
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        return {
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.count).tolist(),
            "q01": q01.tolist(),
            "q99": q99.tolist(),
            "count": self.count,
        }


class StatsSource(Protocol):
    """What `compute_norm_stats` needs from a leaf dataset."""

    name: str
    norm_mode: str

    def norm_masks(self) -> dict[str, list[bool]]: ...

    def low_dim_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]: ...


def stats_for(source: StatsSource, batch_size: int = 4096, reservoir_size: int = DEFAULT_RESERVOIR) -> dict:
    """One dataset's entry of norm_stats.json: {"mode", "action": {...}, "state": {...}} over its frames."""
    running: dict[str, RunningStats] = {}
    for batch in source.low_dim_batches(batch_size):
        for key, values in batch.items():
            running.setdefault(key, RunningStats(reservoir_size)).update(values)
    entry: dict = {"mode": source.norm_mode}
    masks = source.norm_masks()
    for key, stats in running.items():
        result = stats.result()
        mask = masks.get(key) or [True] * len(result["mean"])
        if len(mask) != len(result["mean"]):
            raise ValueError(
                f"dataset {source.name!r}: {key} norm mask has {len(mask)} entries, the data has "
                f"{len(result['mean'])} dims (expected {len(result['mean'])}, got {len(mask)})"
            )
        entry[key] = {**result, "mask": [bool(m) for m in mask]}
    return entry


def compute_norm_stats(dataset: Any, batch_size: int = 4096) -> dict[str, dict]:
    """{dataset_name: entry} for a dataset (a mixture contributes each of its components) or a list of sources.
    Vision-language datasets (`sample_kind` "vl": no actions, no state) have no entry."""
    sources: Iterable[StatsSource] = dataset.leaves() if isinstance(dataset, RawDataset) else dataset
    stats: dict[str, dict] = {}
    for source in sources:
        if getattr(source, "sample_kind", "robot") == "vl":
            continue
        if source.name in stats:
            raise ValueError(f"two datasets are named {source.name!r}; give each a distinct dataset_name")
        stats[source.name] = stats_for(source, batch_size)
    return stats
