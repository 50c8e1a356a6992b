"""The trainer's batches: this rank's endless, deterministic, resumable micro-batches.

Each optimizer step consumes `batch_size * world_size * gradient_accumulation_steps` samples, rank r
taking its slice of every global micro-batch; resuming at micro-step k replays exactly the batches an
uninterrupted run would have seen (see vlablocks/core/dataloader/sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import Dataset

from vlablocks.core.dataloader.loader import build_dataloader


def micro_batches(
    dataset: Dataset,
    micro_batch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_micro_step: int = 0,
    num_workers: int = 0,
    collate_fn: Callable[[list[dict]], Any] | None = None,
) -> Iterator[Any]:
    """An endless iterator of this rank's micro-batches: lists of sample dicts, or `collate_fn` of each list
    (run in the DataLoader workers when num_workers > 0)."""
    loader = build_dataloader(
        dataset,
        micro_batch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_micro_step=start_micro_step,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    return iter(loader)
