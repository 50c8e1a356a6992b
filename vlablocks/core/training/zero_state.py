"""DeepSpeed ZeRO optimizer shards saved and restored without pickle, so a ZeRO-2/3 resume is exact.

Under ZeRO each rank holds only its partition of the fp32 master weights and of the AdamW moments.
DeepSpeed's own checkpoint (engine.save_checkpoint, accelerate's save_state) writes them with
torch.save, i.e. pickle, which this project never loads. Here each rank writes its partition as

    trainer_state/zero_rank_<r>.safetensors   every tensor of the rank's optimizer state_dict()
    trainer_state/zero_rank_<r>.json          the rest (numbers, strings, nesting), tensors by name

and a resume hands that rank's entry back to the ZeRO optimizer's own `load_state_dict` (rigid,
non-elastic layout; fp32 masters restored from the saved partition, not from the weights). Two
objects in DeepSpeed's state are not plain data: the loss scaler is stored as its attributes and set
on the live scaler; `param_slice_mappings` (only used to convert to a universal checkpoint) is left out.
The number of ranks cannot change across a resume: the partitions are cut per rank.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlablocks.core.manifest import read_json

LOSS_SCALER_KEY = "loss_scaler"
LEFT_OUT_KEYS = ("param_slice_mappings",)


def shard_names(rank: int) -> tuple[str, str]:
    """(tensors file, structure file) of one rank's shard."""
    return f"zero_rank_{rank}.safetensors", f"zero_rank_{rank}.json"


def encode(value, tensors: dict[str, torch.Tensor], path: str = "s"):
    """Nested dicts/lists/tuples of tensors and plain values -> JSON-able tree; tensors go to `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().clone().contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[key, encode(item, tensors, f"{path}.{i}")] for i, (key, item) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [encode(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]}
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} at {path} without pickle")


def decode(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of `encode`."""
    if not isinstance(tree, dict):
        return tree
    ((kind, content),) = tree.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: decode(item, tensors) for key, item in content}
    items = [decode(item, tensors) for item in content]
    return items if kind == "list" else tuple(items)


def zero_optimizer(optimizer):
    """The DeepSpeed ZeRO optimizer inside accelerate's wrapper (or the object itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def save_zero_shard(directory: Path, optimizer, rank: int, world_size: int) -> None:
    """Writes this rank's optimizer partition into `directory` (safetensors + JSON)."""
    zero = zero_optimizer(optimizer)
    state = {k: v for k, v in zero.state_dict().items() if k not in LEFT_OUT_KEYS}
    scaler = state.pop(LOSS_SCALER_KEY, None)
    if scaler is not None:
        state[LOSS_SCALER_KEY] = {k: v for k, v in vars(scaler).items() if isinstance(v, (bool, int, float))}
    tensors: dict[str, torch.Tensor] = {}
    tree = {"world_size": world_size, "rank": rank, "state": encode(state, tensors)}
    tensor_file, structure_file = shard_names(rank)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / tensor_file))
    (directory / structure_file).write_text(json.dumps(tree))


def load_zero_shard(directory: Path, optimizer, rank: int, world_size: int) -> None:
    """Restores this rank's partition (moments, step, fp32 masters, loss scale) into the ZeRO optimizer."""
    tensor_file, structure_file = shard_names(rank)
    if not (directory / structure_file).is_file():
        raise FileNotFoundError(
            f"{directory} has no {structure_file}: the checkpoint was not saved by rank {rank} of a ZeRO run "
            "(saved without DeepSpeed, or by fewer ranks); resume with the launcher config it was saved with"
        )
    tree = read_json(directory / structure_file)
    if tree["world_size"] != world_size:
        raise ValueError(
            f"{directory} holds ZeRO shards of {tree['world_size']} ranks but this run has {world_size}: "
            f"partitions are cut per rank; resume with --num_processes {tree['world_size']}"
        )
    state = decode(tree["state"], load_file(str(directory / tensor_file)))
    zero = zero_optimizer(optimizer)
    saved_scaler = state.pop(LOSS_SCALER_KEY, None)
    if saved_scaler is not None:
        for key, value in saved_scaler.items():
            setattr(zero.loss_scaler, key, value)
        state[LOSS_SCALER_KEY] = zero.loss_scaler
    shards: list[dict | None] = [None] * world_size
    shards[rank] = state
    zero.load_state_dict(shards, load_optimizer_states=True, load_from_fp32_weights=True)


def check_all_shards(directory: Path, world_size: int) -> None:
    """Rank 0, before it moves the partitions into a checkpoint: every rank's two files must be in `directory`.

    A missing one means the ranks do not share the run directory (node-local disks on a multi-node run): the
    checkpoint could never be resumed, so it is refused now, naming the fix.
    """
    missing = [name for rank in range(world_size) for name in shard_names(rank) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"ZeRO partitions {', '.join(missing)} are missing from {directory}: the ranks that wrote them do not "
            "see this run_dir; put run_dir on storage every node shares (docs/distributed.md, Multi-node)"
        )
