"""The one sampler of the project: deterministic, resumable, rank-aware, endless.

The global order is a permutation drawn from (seed, epoch), epoch after epoch. A global micro-batch is
`micro_batch * world_size` consecutive positions of that order; rank r takes its `micro_batch` slice of
each. Because the order depends only on (seed, position), starting at micro-step k replays exactly the
samples an uninterrupted run would have seen, and any world size sees the same global batch.
For a `RawDataset` it yields `(epoch, index)` (`with_epoch`), so per-sample randomness (prompt
augmentation, mixture draws) is drawn afresh every epoch, in persistent workers too, and replays on resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Endless indices (or `(epoch, index)` pairs with `with_epoch`) for one rank, from micro-step `start`."""

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
            raise ValueError("the dataset is empty")
        if micro_batch <= 0:
            raise ValueError(f"micro_batch must be positive, got {micro_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start  # global micro-batches already consumed
        self.with_epoch = with_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the dataset used in `epoch`."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        global_batch = self.micro_batch * self.world_size
        step = self.start
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            base = step * global_batch + self.rank * self.micro_batch
            for position in range(base, base + self.micro_batch):
                position_epoch, offset = divmod(position, self.num_samples)
                if position_epoch != epoch:
                    epoch, order = position_epoch, self.order(position_epoch)
                index = int(order[offset])
                yield (epoch, index) if self.with_epoch else index
            step += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 2**31 - 1
