"""Small helpers the training loop calls once: accelerator, seeding, dataset, stats, partial reloads."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from vlablocks.core.atomic import atomic_write_text
from vlablocks.core.build import build
from vlablocks.core.config import ExperimentConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.framework.base import upgrade_legacy_keys
from vlablocks.core.partitioned import full_shape
from vlablocks.core.registry import DATASETS
from vlablocks.core.tensor_file import TensorFile, load_tensors
from vlablocks.core.training.precision import resolved_mixed_precision


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"trainer.torch_threads must be >= 1 or null, got {threads}")
        torch.set_num_threads(threads)


def set_worker_sharing(trainer) -> None:
    """The shared-memory strategy DataLoader workers hand batches over with (`trainer.worker_sharing`)."""
    if trainer.num_workers > 0:
        torch.multiprocessing.set_sharing_strategy(trainer.worker_sharing)


def make_ema(framework: torch.nn.Module, trainer, accelerator):
    """The weights' moving average when `trainer.ema_decay` is set (vlablocks/core/framework/ema.py), else None."""
    if trainer.ema_decay is None:
        return None
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        raise ValueError("trainer.ema_decay is not supported under ZeRO-3 (weights are sharded); use ZeRO-2 or DDP")
    from vlablocks.core.framework.ema import EMA

    return EMA(framework, trainer.ema_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(trainer, find_unused_parameters: bool = False):
    """An Accelerator that really accumulates gradients and uses bf16 only where it pays (CUDA).

    find_unused_parameters: DDP tolerates parameters a forward does not reach (e.g. the LM head when the loss is
    taken on action-query states).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from vlablocks.core.training.distributed import configure_deepspeed, prepare_distributed_environment

    prepare_distributed_environment(trainer)
    mixed = resolved_mixed_precision(trainer)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process: a run after another in the same interpreter may use another precision (accelerate keeps
        # its state process-wide and would refuse the change).
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=trainer.gradient_accumulation_steps,
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    configure_deepspeed(accelerator, trainer)
    return accelerator


def build_train_dataset(experiment: ExperimentConfig):
    if not experiment.dataset:
        raise ValueError("the config has no `dataset:` section; name one, e.g. dataset.name: lerobot")
    return build(DATASETS, experiment.dataset, platform=experiment.platform, seed=experiment.seed)


def dataset_cameras(dataset) -> list[str] | None:
    """The camera keys of the training samples: a dataset's `camera_keys`, else an in-memory list's first
    sample's `images` keys, else None (the processor then reads the config's `dataset.camera_keys`)."""
    if getattr(dataset, "camera_keys", None):
        return list(dataset.camera_keys)
    if isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0].get("images"), dict):
        return list(dataset[0]["images"])
    return None


def resolve_norm_stats(experiment: ExperimentConfig, dataset, run_dir: Path) -> dict:
    """The stats file named by `dataset.norm_stats`, else the run's own, else computed and saved there."""
    from vlablocks.core.dataloader.normalization import compute_norm_stats

    named = (experiment.dataset or {}).get("norm_stats")
    path = Path(named) if named else run_dir / "norm_stats.json"
    if path.is_file():
        return json.loads(path.read_text())
    if named:
        raise FileNotFoundError(f"dataset.norm_stats file not found: {path}; run `vlablocks stats` to create it")
    if isinstance(dataset, RawDataset):
        stats = compute_norm_stats(dataset.leaves())
    else:  # an in-memory list of sample dicts
        from vlablocks.core.framework.synthetic import synthetic_norm_stats

        stats = synthetic_norm_stats(list(dataset))
    # Every rank computes and writes them (the same numbers); atomically, since ranks on other nodes may share
    # run_dir and read the file while it is written.
    atomic_write_text(path, json.dumps(stats, indent=1))
    return stats


def load_pretrained_modules(model: torch.nn.Module, checkpoint: str | None, patterns: list[str]) -> list[str]:
    """Copies weights from a checkpoint into `model`: all of them, or those whose names match `patterns`.

    Shape mismatches are listed by key in one error. Returns the loaded keys. The file is read one tensor at a time;
    under ZeRO-3 (`model` partitioned while built) each partitioned parameter is gathered, written and partitioned
    again, one at a time (core/tensor_file.py).
    """
    if not checkpoint:
        if patterns:
            raise ValueError("trainer.reload_modules is set but trainer.pretrained_checkpoint is not")
        return []
    path = Path(checkpoint)
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"trainer.pretrained_checkpoint: no model.safetensors at {path}")
    with TensorFile(weights) as source:
        source.rename(upgrade_legacy_keys)  # checkpoints written before `auxiliary_losses`: today's key names
        regexes = [re.compile(p) for p in patterns]
        parameters = dict(model.named_parameters(remove_duplicate=False))  # under ZeRO-3 state_dict() holds slices
        target = {k: full_shape(parameters[k]) if k in parameters else v.shape for k, v in model.state_dict().items()}
        selected = [k for k in source.keys() if not regexes or any(r.search(k) for r in regexes)]
        for pattern, regex in zip(patterns, regexes):
            if not any(regex.search(k) for k in selected):
                raise ValueError(f"trainer.reload_modules pattern {pattern!r} matches no key in {weights}")
        mismatched = [
            f"{k}: checkpoint {tuple(source.shape(k))} vs model {tuple(target[k])}"
            for k in selected
            if k in target and source.shape(k) != target[k]
        ]
        if mismatched:
            raise ValueError(f"shape mismatch loading {weights}: " + "; ".join(mismatched))
        loaded = sorted(k for k in selected if k in target)
        load_tensors(model, source, loaded)  # a collective under ZeRO-3: the same keys in the same order everywhere
    return loaded
