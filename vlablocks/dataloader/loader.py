"""The DataLoader over a dataset: endless batches in the `ResumableSampler` order, with or without workers.

    loader = build_dataloader(dataset, batch_size=8, seed=42, num_workers=2)
    for batch in loader:   # batch: list of 8 sample dicts (or collate_fn's output); never ends
        ...

The batches are the same for 0, 1 or N workers: the order comes from (seed, position) and, for a
`RawDataset`, each sample's randomness from its (epoch, index) key (see sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vlablocks.dataloader.base import RawDataset
from vlablocks.dataloader.sampler import ResumableSampler


def keep_list(samples: list[dict]) -> list[dict]:
    """Collate that keeps raw dicts: frameworks do all model-specific batching."""
    return samples


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_micro_step: int = 0,
    num_workers: int = 0,
    collate_fn: Callable[[list[dict]], Any] | None = None,
) -> DataLoader:
    """Endless DataLoader of this rank's micro-batches of `batch_size`, from global micro-step `start_micro_step`.

    collate_fn None keeps each batch as the list of sample dicts; any other callable runs on that list
    (in the workers when num_workers > 0). A `RawDataset` is indexed by (epoch, index), anything else by index.
    """
    sampler = ResumableSampler(
        len(dataset),
        batch_size,
        seed,
        rank,
        world_size,
        start=start_micro_step,
        with_epoch=isinstance(dataset, RawDataset),
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or keep_list,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
