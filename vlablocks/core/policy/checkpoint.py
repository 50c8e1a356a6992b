"""The checkpoint format of a policy (a model and its processor), written and read without pickle.

    model.safetensors   every weight of the model (tied weights once)
    config.yaml         the `platform:` and `framework:` sections the model is rebuilt from
    processor/          the processor that feeds it, with the normalization stats (core/processor/pipeline.py)
    manifest.json       size and SHA-256 of each file, written last and checked on load (core/manifest.py)

Checkpoints written before processors existed keep `norm_stats.json` and the whole experiment config instead;
their processor is rebuilt from those.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from vlablocks.core.config import ExperimentConfig, load_yaml, parse_experiment, to_yaml, upgrade_moved_keys
from vlablocks.core.framework.base import Framework, build_framework, upgrade_legacy_keys
from vlablocks.core.framework.ema import load_ema_weights
from vlablocks.core.manifest import read_json, verify_manifest
from vlablocks.core.partitioned import full_shape
from vlablocks.core.processor.build import build_processor
from vlablocks.core.processor.pipeline import PROCESSOR_DIR, Processor
from vlablocks.core.tensor_file import TensorFile, load_tensors

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
LEGACY_NORM_STATS_FILE = "norm_stats.json"  # checkpoints written before processors kept the stats here


def model_sections(model: Framework) -> dict:
    """The config sections a model is rebuilt from: `platform` and `framework`."""
    config = model.config
    section = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {"platform": vars(model.platform).copy(), "framework": section}


def write_checkpoint(
    directory: Path, model: Framework, processor: Processor | None, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Writes weights, config and processor into an existing directory (not atomic on its own: the callers write
    into a temporary directory and rename it). `state_dict`: the gathered full state under ZeRO-3."""
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    save_file(_untie(state), str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(to_yaml(model_sections(model)))
    if processor is not None:
        processor.save_pretrained(directory / PROCESSOR_DIR)


def load_checkpoint(
    directory: str | os.PathLike, weights: str = "model", device: torch.device | str | None = None
) -> tuple[Framework, Processor]:
    """Rebuilds the registered model named in `config.yaml` (its parameters created on `device`, None: the CPU), loads
    its weights ("ema": the moving average a run kept with `trainer.ema_decay`) and its processor."""
    directory = Path(directory)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory} is not a vlablocks checkpoint: {required} is missing")
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    verify_manifest(directory)  # a truncated config or corrupt weights are refused, the file named
    experiment = parse_experiment(upgrade_moved_keys(load_yaml(directory / CONFIG_FILE)))
    with torch.device(device) if device is not None else nullcontext():
        model = build_framework(experiment)
    load_weights(model, directory)
    if weights == "ema":
        load_ema_weights(model, directory)
    return model, load_processor(directory, experiment, model)


def load_processor(directory: Path, experiment: ExperimentConfig, model: Framework) -> Processor:
    if (directory / PROCESSOR_DIR).is_dir():
        return Processor.from_pretrained(directory / PROCESSOR_DIR)
    if (directory / LEGACY_NORM_STATS_FILE).is_file():
        # Written before processors: rebuild the processor from the full experiment config it kept.
        return build_processor(experiment, model, read_json(directory / LEGACY_NORM_STATS_FILE))
    raise FileNotFoundError(f"{directory} has no processor/: re-save it from a run that has norm stats")


def load_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Loads `model.safetensors` from a checkpoint directory into `model`; every key must match, shapes included.

    The file is read one tensor at a time (core/tensor_file.py): under ZeRO-3 a resumed rank holds its slices and at
    most one whole parameter, never the whole model."""
    expected = model.state_dict()
    parameters = dict(model.named_parameters(remove_duplicate=False))
    with TensorFile(Path(directory) / WEIGHTS_FILE) as file:
        file.rename(upgrade_legacy_keys)  # checkpoints written before `auxiliary_losses` load under today's names
        tied = _tied_keys(model)
        missing = [k for k in expected if k not in file.entries and k not in tied]
        unexpected = [k for k in file.keys() if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        mismatched = [
            f"{k}: checkpoint {tuple(file.shape(k))} vs model {tuple(shape)}"
            for k in file.keys()
            if file.shape(k) != (shape := full_shape(parameters[k]) if k in parameters else expected[k].shape)
        ]
        if mismatched:
            raise ValueError(f"checkpoint {directory} does not match the model: " + "; ".join(mismatched[:5]))
        load_tensors(model, file, file.keys())


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory (tied embeddings); keep the first name of each storage.
    seen: set[int] = set()
    result = {}
    for key, value in state.items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        result[key] = value
    return result


def _tied_keys(module: nn.Module) -> set[str]:
    first: dict[int, str] = {}
    tied = set()
    for key, value in module.state_dict().items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in first:
            tied.add(key)
        else:
            first[pointer] = key
    return tied
