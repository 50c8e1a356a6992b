"""A safetensors file read one tensor at a time with plain reads, and the loading of a model from it.

`safetensors.torch.load_file` returns every tensor of the file at once, and `safe_open` memory-maps the file, so
every page a load touches stays resident until the file is closed. Under DeepSpeed ZeRO-3 both hold the whole model
on every rank while a checkpoint is loaded, which is what partitioning at construction avoids (issue 38, part 2).
`TensorFile` reads the JSON header once and then each tensor into its own buffer (seek + readinto): the host holds
one whole tensor at a time. The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
data, offsets relative to its start. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from vlablocks.core.partitioned import host_memory_returned, is_partitioned, whole

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorFile:
    """Read access to one safetensors file: `keys()`, `shape(key)`, `read(key)` (a fresh CPU tensor)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close() / the with block)
        try:
            (length,) = struct.unpack("<Q", self.file.read(8))
            if length > os.path.getsize(self.path):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(self.file.read(length))
        except (struct.error, ValueError, UnicodeDecodeError) as error:
            self.file.close()
            raise ValueError(f"{self.path} is not a safetensors file ({error}); re-save the checkpoint") from error
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        self.data_start = 8 + length

    def rename(self, upgrade: Callable[[dict], None]) -> TensorFile:
        """Applies `upgrade` (renames a dict's keys in place, e.g. `framework.base.upgrade_legacy_keys`) to the
        tensor names: the file's old names are then read under today's. -> self."""
        upgrade(self.entries)
        return self

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> torch.Size:
        return torch.Size(self.entries[key]["shape"])

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key`, read from the file into a new buffer (no memory map)."""
        entry = self.entries[key]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {key!r} has dtype {entry['dtype']}, which vlablocks does not read")
        begin, end = entry["data_offsets"]
        tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        size = tensor.numel() * tensor.element_size()
        if end - begin != size:
            raise ValueError(f"{self.path}: tensor {key!r} holds {end - begin} bytes, its shape and dtype need {size}")
        self.file.seek(self.data_start + begin)
        if size and self.file.readinto(tensor.view(-1).view(torch.uint8).numpy()) != size:
            raise ValueError(f"{self.path} ends inside tensor {key!r}: the file is truncated; re-save the checkpoint")
        return tensor

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tensors(model: nn.Module, file: TensorFile, keys: Iterable[str]) -> None:
    """Writes the file's tensors `keys` (state-dict names of `model`, shapes already checked) into `model`.

    A parameter partitioned by ZeRO-3 is gathered whole only while its own value is written; the rest go through
    `load_state_dict`. So beyond its slices a rank holds at most one whole parameter at a time plus the unpartitioned
    tensors. A collective under ZeRO-3: every rank passes the same keys in the same order.
    """
    parameters = dict(model.named_parameters(remove_duplicate=False))
    rest = {}
    partitioned = any(is_partitioned(p) for p in parameters.values())
    with host_memory_returned() if partitioned else nullcontext():  # the whole copies freed go back at once
        for key in keys:
            if key in parameters and is_partitioned(parameters[key]):
                with whole(parameters[key]):
                    parameters[key].copy_(file.read(key))
            else:
                rest[key] = file.read(key)
        model.load_state_dict(rest, strict=False)
