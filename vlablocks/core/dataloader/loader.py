"""The DataLoader over a dataset: endless batches in the `ResumableSampler` order, with or without workers.

    loader = build_dataloader(dataset, batch_size=8, seed=42, num_workers=2)
    for batch in loader:   # batch: list of 8 sample dicts (or collate_fn's output); never ends
        ...

The batches are the same for 0, 1 or N workers: the order comes from (seed, position) and, for a
`RawDataset`, each sample's randomness from its (epoch, index) key (see sampler.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.sampler import ResumableSampler

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_id: int) -> None:
    """DataLoader worker init: the kernel sends this worker SIGKILL when the process that started it dies.

    Without it, a training process killed with SIGKILL leaves its workers behind (parent PID 1, holding the
    dataset and the processor's memory) until their next idle poll, or forever when they are blocked.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call took effect
        os._exit(0)


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
    lengths: Callable[[int], np.ndarray] | None = None,
    mega_batches: int = 50,
) -> DataLoader:
    """Endless DataLoader of this rank's micro-batches of `batch_size`, from global micro-step `start_micro_step`.

    collate_fn None keeps each batch as the list of sample dicts; any other callable runs on that list
    (in the workers when num_workers > 0). A `RawDataset` is indexed by (epoch, index), anything else by index.
    lengths: epoch -> every sample's prompt length (lengths.py `prompt_lengths`): micro-batches grouped by length
    within mega-batches of `mega_batches` (sampler.py); None: plain shuffled order.
    """
    sampler = ResumableSampler(
        len(dataset),
        batch_size,
        seed,
        rank,
        world_size,
        start=start_micro_step,
        with_epoch=isinstance(dataset, RawDataset),
        lengths=lengths,
        mega_batches=mega_batches,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or keep_list,
        num_workers=num_workers,
        worker_init_fn=die_with_parent if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
