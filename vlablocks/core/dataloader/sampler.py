"""The one sampler of the project: deterministic, resumable, rank-aware, endless.

The global order is a permutation drawn from (seed, epoch), epoch after epoch. A global micro-batch is
`micro_batch * world_size` consecutive positions of that order; rank r takes its `micro_batch` slice of
each. Because the order depends only on (seed, position), starting at micro-step k replays exactly the
samples an uninterrupted run would have seen, and any world size sees the same global batch.
For a `RawDataset` it yields `(epoch, index)` (`with_epoch`), so per-sample randomness (prompt
augmentation, mixture draws) is drawn afresh every epoch, in persistent workers too, and replays on resume.

Length-grouped order (`lengths`, trainer.group_by_length; Hugging Face's LengthGroupedSampler): each epoch's
permutation is cut into mega-batches of `mega_batches` micro-batches, each sorted by its samples' prompt length
(longest first), cut into micro-batches, and the micro-batches are shuffled. A micro-batch then holds prompts of
about one length, so little of it is padding. The micro-batches are cut on the same position grid the ranks read
(multiples of `micro_batch`), so every rank's micro-batch is one group, and the order is still a function of
(seed, epoch) and the lengths alone: resuming replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
        lengths: Callable[[int], np.ndarray] | None = None,
        mega_batches: int = 50,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if micro_batch <= 0:
            raise ValueError(f"micro_batch must be positive, got {micro_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if mega_batches < 1:
            raise ValueError(f"mega_batches must be positive, got {mega_batches}")
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start  # global micro-batches already consumed
        self.with_epoch = with_epoch
        self.lengths = lengths  # epoch -> [num_samples] prompt lengths, or None: no grouping
        self.mega_batches = mega_batches

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the dataset used in `epoch` (length-grouped when `lengths` is set)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        if self.lengths is None:
            return order
        lengths = np.asarray(self.lengths(epoch))
        if lengths.shape != (self.num_samples,):
            raise ValueError(
                f"lengths({epoch}) must hold one length per sample ({self.num_samples}), got {lengths.shape}"
            )
        lead = -epoch * self.num_samples % self.micro_batch  # this epoch's first positions finish a micro-batch
        shuffle = np.random.default_rng([self.seed, epoch, 1])
        return length_grouped(order, lengths, self.micro_batch, self.mega_batches, lead, shuffle)

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


def length_grouped(
    order: np.ndarray,
    lengths: np.ndarray,
    micro_batch: int,
    mega_batches: int,
    lead: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """order: [n] a permutation of the dataset; lengths: [n] each index's length -> [n] the same indices grouped.

    The first `lead` positions (the end of a micro-batch that began in the previous epoch) stay as they are; the
    rest is cut into mega-batches of `mega_batches * micro_batch`, each sorted by length (longest first, ties in
    `order`), then into micro-batches whose order `rng` shuffles; a last partial micro-batch stays last (the next
    epoch's lead completes it)."""
    head, body = order[:lead], order[lead:]
    mega = micro_batch * mega_batches
    chunks = np.split(body, range(mega, len(body), mega))
    sorted_body = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    full = len(body) // micro_batch * micro_batch
    groups = sorted_body[:full].reshape(-1, micro_batch)
    return np.concatenate([head, groups[rng.permutation(len(groups))].reshape(-1), sorted_body[full:]])
