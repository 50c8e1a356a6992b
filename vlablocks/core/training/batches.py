"""The trainer's batches: this rank's endless, deterministic, resumable micro-batches.

Each optimizer step consumes `batch_size * world_size * gradient_accumulation_steps` samples, rank r
taking its slice of every global micro-batch; resuming at micro-step k replays exactly the batches an
uninterrupted run would have seen (see vlablocks/core/dataloader/sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.lengths import prompt_lengths, tokenizer_counter
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
    lengths: Callable[[int], np.ndarray] | None = None,
    mega_batches: int = 50,
) -> Iterator[Any]:
    """An endless iterator of this rank's micro-batches: lists of sample dicts, or `collate_fn` of each list
    (run in the DataLoader workers when num_workers > 0); grouped by prompt length when `lengths` is given
    (trainer.group_by_length: vlablocks/core/dataloader/sampler.py)."""
    loader = build_dataloader(
        dataset,
        micro_batch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_micro_step=start_micro_step,
        num_workers=num_workers,
        collate_fn=collate_fn,
        lengths=lengths,
        mega_batches=mega_batches,
    )
    return iter(loader)


def length_source(trainer: TrainerConfig, dataset: Dataset, processor: Any) -> Callable[[int], np.ndarray] | None:
    """With trainer.group_by_length: epoch -> every sample's prompt length in tokens of the processor's tokenizer
    (`processor.tokenize.tokenizer`, the policy's Processor; what `micro_batches` groups by); None without it."""
    if not trainer.group_by_length:
        return None
    if trainer.group_by_length_mega_batches < 1:
        raise ValueError(
            f"trainer.group_by_length_mega_batches must be >= 1, got {trainer.group_by_length_mega_batches}"
        )
    if processor.tokenize is None:
        raise ValueError("trainer.group_by_length sorts by prompt tokens: the processor has no tokenizer")
    if isinstance(dataset, RawDataset) and len(dataset):
        dataset.prompt(0, (0, 0))  # a dataset that cannot name its prompts refuses here, before the first step
    return prompt_lengths(dataset, tokenizer_counter(processor.tokenize.tokenizer))
