"""The contract every framework (end-to-end policy) keeps, and its checkpoint format.

A framework is the model only: it takes the typed `Batch` its processor makes (vlablocks/processor/) and
knows nothing of datasets or normalization. A checkpoint directory holds `model.safetensors` (all
weights), `config.yaml` (the `platform:` and `framework:` sections it was built from) and `processor/`
(the processor that feeds it, with the normalization stats; see vlablocks/core/processor/pipeline.py), and
`manifest.json` (size and SHA-256 of each file, checked on load: vlablocks/core/manifest.py).
Nothing on the load path uses pickle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlablocks.core.atomic import atomic_directory
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import ExperimentConfig, PlatformConfig, load_yaml, parse_experiment, to_yaml
from vlablocks.core.framework.ema import load_ema_weights
from vlablocks.core.manifest import read_json, verify_manifest, write_manifest
from vlablocks.core.processor.pipeline import PROCESSOR_DIR, Processor, build_processor
from vlablocks.core.registry import ACTION_MODELS, FRAMEWORKS, MODELS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
LEGACY_NORM_STATS_FILE = "norm_stats.json"  # checkpoints written before processors kept the stats here


class Framework(nn.Module):
    """Base class of registered frameworks.

    Built as `Framework(config, platform=PlatformConfig)`. Subclasses implement
      forward(batch) -> {"loss": scalar, ...}
      sample_actions(batch, generator) -> {"actions": normalized [B, T, D]} or {"action_tokens": ids per sample}
      processor_options() -> the model-specific fields of its ProcessorConfig (prompt suffix, geometry, ...)
    `predict_action(samples)` is the convenience that runs processor -> sample_actions -> postprocess.
    Value models (VALUE_MODELS, vlablocks/methods/value/) share this base for checkpoints and processors; what a
    model can do beyond this contract is declared by Protocols (vlablocks/core/capabilities.py).
    """

    def __init__(self, config: Any, *, platform: PlatformConfig) -> None:
        super().__init__()
        self.config = config
        self.platform = platform
        self.processor: Processor | None = None  # attached by build_policy / from_pretrained; not a module

    def build_action_model(self, options: dict, cond_dim: int) -> nn.Module:
        """The registered action head named in `options`, sized by the platform."""
        return build(
            ACTION_MODELS,
            options,
            action_horizon=self.platform.action_horizon,
            action_dim=self.platform.action_dim,
            state_dim=self.platform.state_dim,
            cond_dim=cond_dim,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the contract ------------------------------------------------------------------------------
    def set_training_step(self, step: int) -> None:
        """Called by `vlablocks train` before each optimizer step (1-based); frameworks with step-dependent
        losses (QwenLayerwiseFM3D's phased schedule) override it."""

    def processor_options(self) -> dict:
        """The VLM's input geometry; frameworks add their prompt suffix, geometry or FAST options."""
        image_size = self.vlm.config.image_size
        return {
            "image_size": tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size,
            "view_size": tuple(self.vlm.view_size),
            "patch_size": self.vlm.patch_size,
        }

    @property
    def hf_processor(self) -> Any:
        """The VLM's own (transformers) processor: tokenizer with this model's special tokens + image processor."""
        return self.vlm.processor

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def predict_action(self, samples: list[dict], seed: int | None = 0) -> dict[str, np.ndarray]:
        """Raw samples -> {"actions": robot units [B, T, D], "normalized_actions": [B, T, D]} (numpy float32).

        A cross-embodiment policy answers each sample at its robot's own [T, D_e] (a list when the batch mixes sizes).
        """
        if self.processor is None:
            raise ValueError("this framework has no processor: build it with build_policy() or load a checkpoint")
        batch = self.processor(samples, targets=False)
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        output = self.sample_actions(batch.to(self.device), generator)
        self.train(was_training)
        return self.processor.postprocess(output, batch)

    # ---- checkpoints -------------------------------------------------------------------------------
    def build_sections(self) -> dict:
        """The config sections this model is rebuilt from: `platform` and `framework`."""
        return {"platform": vars(self.platform).copy(), "framework": _as_dict(self.config)}

    def write_files(self, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Writes weights, config and processor into an existing directory (not atomic on its own).

        `state_dict` lets a distributed trainer pass the gathered full state (ZeRO-3 shards parameters).
        """
        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        save_file(_untie(state), str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(to_yaml(self.build_sections()))
        if self.processor is not None:
            self.processor.save_pretrained(directory / PROCESSOR_DIR)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the checkpoint atomically: a kill mid-save leaves any previous one intact."""
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
            write_manifest(tmp)
        return Path(directory)

    @staticmethod
    def from_pretrained(directory: str | os.PathLike, weights: Literal["model", "ema"] = "model") -> Framework:
        """Rebuilds the registered framework named in `config.yaml`, loads its weights and its processor.

        weights: "ema" loads the moving average of the weights a run kept with `trainer.ema_decay`.
        """
        directory = Path(directory)
        for required in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / required).is_file():
                raise FileNotFoundError(f"{directory} is not a vlablocks checkpoint: {required} is missing")
        verify_manifest(directory)  # a truncated config or corrupt weights are refused, the file named
        experiment = parse_experiment(load_yaml(directory / CONFIG_FILE))
        framework = build_framework(experiment)
        framework.load_weights(directory)
        if weights == "ema":
            load_ema_weights(framework, directory)
        elif weights != "model":
            raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
        if (directory / PROCESSOR_DIR).is_dir():
            framework.processor = Processor.from_pretrained(directory / PROCESSOR_DIR)
        elif (directory / LEGACY_NORM_STATS_FILE).is_file():
            # Written before processors: rebuild the processor from the full experiment config it kept.
            norm_stats = read_json(directory / LEGACY_NORM_STATS_FILE)
            framework.processor = build_processor(experiment, framework, norm_stats)
        else:
            raise FileNotFoundError(f"{directory} has no processor/: re-save it from a run that has norm stats")
        return framework

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Loads `model.safetensors` from a checkpoint directory; every key must match."""
        state = load_file(str(Path(directory) / WEIGHTS_FILE))
        with _whole_parameters(self):
            missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(self)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


@contextmanager
def _whole_parameters(module: nn.Module) -> Iterator[None]:
    """Under DeepSpeed ZeRO-3 a model built inside an active ZeRO-3 config holds only its rank's slice of each
    parameter (local shape [0]); inside this block they are whole, and what rank 0 wrote is partitioned again
    on exit (a collective: every rank enters). A no-op for ordinary parameters."""
    partitioned = [p for p in module.parameters() if getattr(p, "ds_id", None) is not None]  # DeepSpeed's mark
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def policy_names() -> list[str]:
    """The registered frameworks: the models that predict actions (value models are in VALUE_MODELS)."""
    return FRAMEWORKS.names()


def build_framework(experiment: ExperimentConfig) -> Framework:
    """The model selected by `experiment.framework` (a policy or a value model: registry MODELS), without a
    processor."""
    if not experiment.framework:
        raise ValueError("the config has no `framework:` section; name one, e.g. framework.name: QwenOFT")
    return build(MODELS, experiment.framework, platform=experiment.platform)


def build_policy(
    experiment: ExperimentConfig,
    norm_stats: dict,
    camera_keys: list[str] | None = None,
    embodiments: dict | None = None,
) -> Framework:
    """The model plus its processor (built from the same config, the normalization stats and, when given, the
    training dataset's camera keys and, for a cross-embodiment mixture, its embodiments' own sizes)."""
    framework = build_framework(experiment)
    framework.processor = build_processor(experiment, framework, norm_stats, camera_keys, embodiments)
    return framework


def _as_dict(config: Any) -> Any:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


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
    state = module.state_dict()
    first: dict[int, str] = {}
    tied = set()
    for key, value in state.items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in first:
            tied.add(key)
        else:
            first[pointer] = key
    return tied
