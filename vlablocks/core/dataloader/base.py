"""The base class of registered datasets.

A dataset is built as `build(DATASETS, options, platform=PlatformConfig, seed=int)` (vlablocks/core/build.py) and returns
`Sample` dicts (see sample.py). Randomness inside a sample (prompt augmentation, mixture draws) is keyed
on (seed, epoch, index), so it does not depend on worker count or order. `ds[i]` uses the epoch set by
`set_epoch`; `ds[(epoch, i)]` names it explicitly, which is what samplers should yield: a worker's copy
of the dataset then needs no update between epochs (persistent workers, endless samplers).
Leaf datasets (those owning data, not mixtures) also expose what normalization stats need.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vlablocks.core.config import PlatformConfig
from vlablocks.core.dataloader.sample import Sample


class RawDataset(torch.utils.data.Dataset):
    """Map-style dataset of raw samples: `ds[i] -> Sample`."""

    camera_keys: list[str]  # the keys of every sample's `images` (and `depth`, `intrinsics`), in order
    sample_kind: str = "robot"  # "robot": `Sample`s with actions; "vl": `VLSample`s (question + answer, no stats)

    def __init__(self, platform: PlatformConfig, seed: int = 0) -> None:
        self.platform = platform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects a fresh draw of per-sample randomness (prompts, mixture picks) for this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int | tuple[int, int]) -> Sample:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return self.load(int(index), (int(epoch), int(index)))

    def load(self, index: int, key: tuple[int, ...]) -> Sample:
        """Sample `index`; `key` seeds its randomness (a mixture passes its own index in)."""
        raise NotImplementedError

    def prompt(self, index: int, key: tuple[int, ...]) -> str:
        """`load(index, key)["prompt"]` without reading the sample's frames: what length-grouped batching sorts by
        (trainer.group_by_length, lengths.py). A dataset that cannot say refuses."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot name a sample's prompt without loading it, which trainer.group_by_length "
            "needs; set trainer.group_by_length: false"
        )

    def leaves(self) -> list[RawDataset]:
        """The datasets owning data (itself, or a mixture's components), for stats and checks."""
        return [self]

    # -- leaf datasets: what `vlablocks stats` reads --------------------------------------------

    name: str = ""
    norm_mode: str = "q99"

    def norm_masks(self) -> dict[str, list[bool]]:
        """Per-key masks (False: leave the dimension unnormalized); missing keys mean all True."""
        return {}

    def low_dim_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Raw per-frame {"action": [N, D], "state": [N, S]} over the whole dataset, without images."""
        raise NotImplementedError
