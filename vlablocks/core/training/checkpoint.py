"""Training checkpoints: `run_dir/checkpoints/step_<N>/` = a loadable framework checkpoint + resumable state.

Layout of one checkpoint:
    model.safetensors, config.yaml, processor/ ...   (Policy.write_files: servable as is)
    manifest.json                   size and SHA-256 of every file, written last (vlablocks/core/manifest.py)
    trainer_state/optimizer.pt      optimizer state (tensors and numbers only; loaded with weights_only=True)
    trainer_state/zero_rank_<r>.*   instead, under DeepSpeed ZeRO: each rank's optimizer partition, pickle-free
                                    (training/zero_state.py)
    trainer_state/state.json        step, losses so far, scheduler state, Python and NumPy RNG states
    trainer_state/rng.safetensors   torch CPU (and CUDA) RNG states
    ema.safetensors                 the weights' moving average, with trainer.ema_decay (training/ema.py)
Each checkpoint is written to a temporary directory and renamed, so a kill never leaves a half one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlablocks.core.atomic import atomic_directory
from vlablocks.core.manifest import CorruptCheckpointError, read_json, verify_manifest, write_manifest

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_DIR = "trainer_state"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that matches its manifest (or predates manifests); corrupt ones are skipped with a
    warning naming the file, so a resume never starts from, or reports as last good, a damaged checkpoint."""
    for directory in reversed(checkpoint_dirs(run_dir)):
        try:
            verify_manifest(directory)
        except CorruptCheckpointError as exc:
            warnings.warn(f"skipping corrupt checkpoint {directory.name}: {exc}", stacklevel=2)
            continue
        return directory
    return None


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    portable = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    return portable, tensors


def _set_rng_state(portable: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = portable["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = portable["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_training_checkpoint(
    run_dir: str | Path,
    step: int,
    policy,
    optimizer: torch.optim.Optimizer | None,
    scheduler,
    trainer_state: dict,
    keep_last: int,
    state_dict: dict[str, torch.Tensor] | None = None,
    ema=None,
    shard_dir: Path | None = None,
) -> Path:
    """Writes `step_<step>` atomically, then prunes all but the newest `keep_last` checkpoints.

    shard_dir: a folder of files every rank wrote (ZeRO optimizer partitions), moved into trainer_state/.
    """
    target = Path(run_dir) / "checkpoints" / f"step_{step}"
    with atomic_directory(target) as tmp:
        policy.write_files(tmp, state_dict)
        state_dir = tmp / STATE_DIR
        state_dir.mkdir()
        if optimizer is not None:
            torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
        if shard_dir is not None:
            for shard in sorted(shard_dir.iterdir()):
                shard.replace(state_dir / shard.name)
            shard_dir.rmdir()
        portable, tensors = _rng_state()
        record = {"step": step, "scheduler": scheduler.state_dict(), "rng": portable, **trainer_state}
        (state_dir / "state.json").write_text(json.dumps(record))
        save_file(tensors, str(state_dir / "rng.safetensors"))
        if ema is not None:
            ema.save(tmp)
        write_manifest(tmp)  # last: a checkpoint without a matching manifest is never resumed from
    for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_training_state(checkpoint: Path, optimizer: torch.optim.Optimizer | None, scheduler) -> dict:
    """Restores optimizer, scheduler and RNG states; returns the saved trainer record (step, losses, ...).

    optimizer None: the caller restores it (ZeRO partitions, after accelerator.prepare: `load_zero_shard`).
    """
    state_dir = checkpoint / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise FileNotFoundError(f"{checkpoint} has no {STATE_DIR}/state.json: it is not a resumable checkpoint")
    if optimizer is not None and (state_dir / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True, map_location="cpu"))
    elif optimizer is not None:
        warnings.warn(
            f"{checkpoint} holds no whole optimizer state (saved under DeepSpeed ZeRO, as per-rank partitions): "
            "AdamW moments restart from zero; resume under the same ZeRO launcher config to restore them",
            stacklevel=2,
        )
    record = read_json(state_dir / "state.json")
    scheduler.load_state_dict(record.pop("scheduler"))
    _set_rng_state(record.pop("rng"), load_file(str(state_dir / "rng.safetensors")))
    return record
