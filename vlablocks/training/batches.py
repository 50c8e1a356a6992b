"""Deterministic, resumable, rank-aware batches of raw sample dicts.

The global order is a permutation drawn from (seed, epoch); each optimizer step consumes
`batch_size * world_size * gradient_accumulation_steps` samples, rank r taking its slice of every
global micro-batch. Because the order depends only on (seed, position), resuming at step k replays
exactly the batches an uninterrupted run would have seen, and any world size sees the same global batch.
For a `RawDataset` the sampler yields `(epoch, index)`, so per-sample randomness (prompt augmentation,
mixture draws) is drawn afresh every epoch, in persistent workers too, and replays exactly on resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlablocks.dataloader.base import RawDataset


class ResumableSampler(Sampler):
    """Indices (or `(epoch, index)` with `with_epoch`) for one rank: epoch-wise permutations of the
    dataset, starting at a given position."""

    def __init__(
        self,
        num_samples: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        with_epoch: bool = False,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start  # global micro-batches already consumed
        self.with_epoch = with_epoch

    def _global_index(self, position: int) -> int | tuple[int, int]:
        epoch, offset = divmod(position, self.num_samples)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return (epoch, int(order[offset])) if self.with_epoch else int(order[offset])

    def __iter__(self) -> Iterator[int]:
        global_batch = self.micro_batch * self.world_size
        step = self.start
        while True:
            base = step * global_batch + self.rank * self.micro_batch
            for i in range(self.micro_batch):
                yield self._global_index(base + i)
            step += 1

    def __len__(self) -> int:  # infinite stream; DataLoader only needs a number
        return 2**31 - 1


def keep_list(samples: list[dict]) -> list[dict]:
    """Collate that keeps raw dicts: frameworks do all model-specific batching."""
    return samples


def micro_batches(
    dataset: Dataset,
    micro_batch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_micro_step: int = 0,
    num_workers: int = 0,
) -> Iterator[list[dict]]:
    """An endless iterator of this rank's micro-batches (lists of sample dicts)."""
    with_epoch = isinstance(dataset, RawDataset)
    sampler = ResumableSampler(len(dataset), micro_batch, seed, rank, world_size, start_micro_step, with_epoch)
    loader = DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        collate_fn=keep_list,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)
