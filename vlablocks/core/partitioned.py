"""Parameters DeepSpeed ZeRO-3 partitions while the model is built, and the edits that must see them whole.

Under ZeRO-3, `vlablocks train` constructs the framework inside `deepspeed.zero.Init`
(vlablocks/core/training/zero_init.py): as soon as a module's own `__init__` returns, each of its parameters is cut
into per-rank slices. What is left in the module is an empty tensor (local shape [0]; the real shape is
`param.ds_shape`, the real size `param.ds_numel`). So an edit made after that point, such as a parent
zero-initialising a child's Linear (adaLN-Zero, FiLM), rescaling embedding rows, or copying checkpoint values in,
acts on an empty tensor and does nothing, with no error. Such an edit runs inside `whole(...)`: the parameters are
gathered, rank 0's result is broadcast on exit and partitioned again. Outside ZeRO-3, `whole` does nothing.

    self.modulation = nn.Linear(dim, 6 * dim)   # partitioned here under zero.Init
    with whole(self.modulation):
        nn.init.zeros_(self.modulation.weight)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
CONSTRUCTION_MMAP_THRESHOLD = 1 << 20  # inside host_memory_returned: tensors of 1 MiB and more go to mmap
AFTER_MMAP_THRESHOLD = 32 << 20  # afterwards: glibc's own 64-bit ceiling (DEFAULT_MMAP_THRESHOLD_MAX)


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter (it carries DeepSpeed's `ds_id`)."""
    return getattr(param, "ds_id", None) is not None


def full_numel(param: torch.Tensor) -> int:
    """The number of elements of the whole parameter, also when this rank holds only a slice of it."""
    return param.ds_numel if is_partitioned(param) else param.numel()


def full_shape(param: torch.Tensor) -> torch.Size:
    """The shape of the whole parameter, also when this rank holds only a slice of it."""
    return torch.Size(param.ds_shape) if is_partitioned(param) else param.shape


def _parameters(items: tuple[nn.Module | torch.Tensor, ...]) -> list[torch.Tensor]:
    found: dict[int, torch.Tensor] = {}
    for item in items:
        for param in item.parameters() if isinstance(item, nn.Module) else [item]:
            found[id(param)] = param
    return list(found.values())


@contextmanager
def whole(*items: nn.Module | torch.Tensor) -> Iterator[None]:
    """Inside the block the parameters of `items` (modules, recursively, or parameters) are whole on every rank
    and may be edited in place; on exit rank 0's values are kept (broadcast) and partitioned again. A
    collective under ZeRO-3: every rank must enter. A no-op when none of them is partitioned."""
    partitioned = [p for p in _parameters(items) if is_partitioned(p)]
    with gathered(partitioned) if partitioned else nullcontext(), torch.no_grad():
        yield


def gathered(params: list[torch.Tensor]) -> AbstractContextManager:
    """DeepSpeed's gathering of partitioned `params`, rank 0 the one whose edits are kept."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


@contextmanager
def host_memory_returned() -> Iterator[None]:
    """Inside: tensors of CONSTRUCTION_MMAP_THRESHOLD bytes or more are mapped on their own and go back to the system
    when freed (glibc only). glibc otherwise raises its mmap threshold as large blocks are freed (up to 32 MiB) and
    keeps them in its heap, so slices kept between freed whole copies grow the resident set past the model's size
    (measured: 393 MiB per rank for a 296 MiB model built partitioned on 2 ranks). Used while a model is built
    (training/zero_init.py) and while a checkpoint is written into partitioned parameters (core/tensor_file.py)."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, CONSTRUCTION_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
        libc.malloc_trim(0)


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None
