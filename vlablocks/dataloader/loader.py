"""DataLoaders over raw datasets: batches are `list[Sample]`, deterministic under a seed, with or without workers.

    loader = build_dataloader(dataset, batch_size=8, seed=42, num_workers=2)
    for epoch, batch in epochs(loader):   # batch: list of B sample dicts
        ...

The order of an epoch is a permutation drawn from (seed, epoch), and the sampler yields (epoch, index)
pairs, the key of every per-sample random choice inside the dataset: the batches are the same for 0, 1
or N workers, and fresh in every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from vlablocks.dataloader.base import RawDataset
from vlablocks.dataloader.sample import Sample


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """Keeps the batch as a list of sample dicts: the framework does its own tensorization."""
    return list(batch)


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) pairs: a seeded permutation per epoch (identity when shuffle=False), sharded by rank."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        return iter([(self.epoch, i) for i in order[self.rank :: self.world_size].tolist()])

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def build_dataloader(
    dataset: RawDataset,
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader yielding `list[Sample]` batches in a seeded order; see `set_epoch` / `epochs`."""
    if len(dataset) < batch_size and drop_last:
        raise ValueError(f"dataset has {len(dataset)} samples, fewer than batch_size {batch_size} with drop_last")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate_samples,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Moves the sample order and the per-sample randomness (keyed through the sampler) to `epoch`."""
    loader.sampler.set_epoch(epoch)


def epochs(loader: DataLoader, start_epoch: int = 0) -> Iterator[tuple[int, list[Sample]]]:
    """Endless (epoch, batch) stream for step-based training."""
    epoch = start_epoch
    while True:
        set_epoch(loader, epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1
