"""Prompt lengths for length-grouped batching (`trainer.group_by_length`, sampler.py), and the padding they avoid.

A micro-batch is left-padded to its longest prompt, so the share of the LLM's tokens that are padding is

    padding share = 1 - sum over batches of sum(lengths) / sum over batches of (batch size x max(lengths))

Grouping batches by prompt length lowers it (sampler.py `length_grouped`); the vision tokens, the same in every
sample of a batch, only dilute it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vlablocks.core.dataloader.base import RawDataset


def prompt_lengths(dataset, count_tokens: Callable[[str], int]) -> Callable[[int], np.ndarray]:
    """-> epoch -> [len(dataset)] token counts of every sample's prompt in that epoch, as the dataset gives it
    (prompt augmentation and mixture draws included), memoized per prompt text. A `RawDataset` names its prompts
    without loading frames (`RawDataset.prompt`); any other dataset (e.g. a list of sample dicts) through its
    samples, `dataset[i]["prompt"]`."""
    counts: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in counts:
            counts[text] = count_tokens(text)
        return counts[text]

    def lengths(epoch: int) -> np.ndarray:
        if isinstance(dataset, RawDataset):
            texts = (dataset.prompt(index, (epoch, index)) for index in range(len(dataset)))
        else:
            texts = (dataset[index]["prompt"] for index in range(len(dataset)))
        return np.fromiter((count(text) for text in texts), dtype=np.int64, count=len(dataset))

    return lengths


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """A prompt text -> its number of tokens under `tokenizer` (a transformers tokenizer; no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def padding_share(batches: Iterable[Sequence[int]]) -> float:
    """batches: each micro-batch's prompt lengths -> the share of the padded tokens that are padding (0 to 1)."""
    real = padded = 0
    for lengths in batches:
        real += sum(lengths)
        padded += len(lengths) * max(lengths, default=0)
    return 1.0 - real / padded if padded else 0.0
