"""The contract every framework (end-to-end policy) keeps, and its checkpoint format.

A checkpoint directory holds `model.safetensors` (all weights), `config.yaml` (the experiment config the
framework was built from: `platform`, `framework`, `dataset`, ...), `norm_stats.json` (the normalization the
framework applies in both directions) and any extra files a framework needs (e.g. the FAST tokenizer).
Nothing on the load path uses pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlablocks.atomic import atomic_directory
from vlablocks.config import ExperimentConfig, PlatformConfig, load_yaml, to_dataclass, to_yaml, validate
from vlablocks.registry import FRAMEWORKS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
NORM_STATS_FILE = "norm_stats.json"


class Framework(nn.Module):
    """Base class of registered frameworks.

    Built as `Framework(config, experiment=<validated experiment dict>, norm_stats=<dict or None>)`.
    Subclasses implement `forward(examples) -> {"loss": ..., ...}` and `predict_normalized(examples,
    generator) -> normalized actions [B, T, D]`; the base class owns normalization, un-normalization and
    the checkpoint format.
    """

    def __init__(self, config: Any, *, experiment: dict, norm_stats: dict | None = None) -> None:
        super().__init__()
        self.config = config
        self.experiment = experiment
        self.platform: PlatformConfig = to_dataclass(PlatformConfig, experiment.get("platform") or {}, "platform")
        self.normalizer = None
        if norm_stats is not None:
            self.set_norm_stats(norm_stats)

    # ---- metadata used by the server and evaluation ----------------------------------------------
    @property
    def camera_keys(self) -> list[str]:
        dataset = self.experiment.get("dataset") or {}
        return list(dataset.get("camera_keys") or ["image"])

    @property
    def image_size(self) -> int | list[int]:
        return self.config.vlm.get("image_size", 112) if hasattr(self.config, "vlm") else 112

    @property
    def embodiment(self) -> str:
        """The dataset name whose stats serve requests: the only one, else the platform name."""
        names = self.normalizer.dataset_names if self.normalizer is not None else []
        return names[0] if len(names) == 1 else self.platform.name

    def build_action_model(self, options: dict, cond_dim: int) -> nn.Module:
        """The registered action head named in `options`, sized by the platform."""
        from vlablocks.registry import ACTION_MODELS

        return ACTION_MODELS.build(
            options,
            action_horizon=self.platform.action_horizon,
            action_dim=self.platform.action_dim,
            state_dim=self.platform.state_dim,
            cond_dim=cond_dim,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- normalization -----------------------------------------------------------------------------
    def set_norm_stats(self, norm_stats: dict) -> None:
        from vlablocks.dataloader.normalization import Normalizer

        self.normalizer = Normalizer(norm_stats)

    def _require_normalizer(self):
        if self.normalizer is None:
            raise ValueError("framework has no normalization stats: call set_norm_stats() or load a checkpoint")
        return self.normalizer

    def batch_actions(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized action targets [B, T, D] float and their padding mask [B, T] bool."""
        normalizer = self._require_normalizer()
        actions = np.stack(
            [normalizer.normalize(np.asarray(e["action"], np.float32), "action", e["dataset_name"]) for e in examples]
        )
        pads = np.stack([np.asarray(e.get("action_is_pad", np.zeros(len(e["action"]), bool))) for e in examples])
        return torch.as_tensor(actions, device=self.device), torch.as_tensor(pads, device=self.device)

    def batch_state(self, examples: list[dict]) -> torch.Tensor | None:
        """Normalized proprioceptive state [B, S], or None when the examples carry none."""
        if any(e.get("state") is None for e in examples):
            return None
        normalizer = self._require_normalizer()
        states = np.stack(
            [normalizer.normalize(np.asarray(e["state"], np.float32), "state", e["dataset_name"]) for e in examples]
        )
        return torch.as_tensor(states, device=self.device)

    # ---- the contract ------------------------------------------------------------------------------
    def prepare_for_training(self, dataset) -> None:
        """Hook: fit data-dependent parts before training (e.g. the FAST tokenizer). Default: nothing."""

    def forward(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict_normalized(self, examples: list[dict], generator: torch.Generator | None) -> torch.Tensor:
        """-> normalized actions [B, T, D]."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action(self, examples: list[dict], seed: int | None = 0) -> dict[str, np.ndarray]:
        """-> {"actions": un-normalized [B, T, D], "normalized_actions": [B, T, D]} (numpy float32)."""
        normalizer = self._require_normalizer()
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        normalized = self.predict_normalized(examples, generator).float().cpu().numpy()
        self.train(was_training)
        actions = np.stack(
            [
                normalizer.unnormalize(a, "action", e.get("dataset_name", self.embodiment))
                for a, e in zip(normalized, examples)
            ]
        )
        return {"actions": actions.astype(np.float32), "normalized_actions": normalized.astype(np.float32)}

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_extra(self, directory: Path) -> None:
        """Hook: files beyond weights/config/stats (e.g. a fitted tokenizer)."""

    def load_extra(self, directory: Path) -> None:
        """Hook: read what `save_extra` wrote, before the weights are loaded."""

    def write_files(self, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Writes weights, config, stats and extras into an existing directory (not atomic on its own).

        `state_dict` lets a distributed trainer pass the gathered full state (ZeRO-3 shards parameters).
        """
        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        save_file(_untie(state), str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(to_yaml(self.experiment))
        if self.normalizer is not None:
            (directory / NORM_STATS_FILE).write_text(json.dumps(self.normalizer.to_dict(), indent=1))
        self.save_extra(directory)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the checkpoint atomically: a kill mid-save leaves any previous one intact."""
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
        return Path(directory)

    @staticmethod
    def from_pretrained(directory: str | os.PathLike, overrides: dict | None = None) -> Framework:
        """Rebuilds the registered framework named in `config.yaml` and loads its weights and stats."""
        directory = Path(directory)
        for required in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / required).is_file():
                raise FileNotFoundError(f"{directory} is not a vlablocks checkpoint: {required} is missing")
        experiment = validate(load_yaml(directory / CONFIG_FILE), ExperimentConfig)
        norm_stats = None
        if (directory / NORM_STATS_FILE).is_file():
            norm_stats = json.loads((directory / NORM_STATS_FILE).read_text())
        framework = build_framework(experiment, norm_stats=norm_stats, checkpoint_dir=directory)
        framework.load_weights(directory)
        return framework

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Loads `model.safetensors` from a checkpoint directory; every key must match."""
        state = load_file(str(Path(directory) / WEIGHTS_FILE))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(self)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


def build_framework(experiment: dict, norm_stats: dict | None = None, checkpoint_dir: Path | None = None) -> Framework:
    """Builds the framework selected by `experiment["framework"]` (a validated experiment dict)."""
    if not experiment.get("framework"):
        raise ValueError("the config has no `framework:` section; name one, e.g. framework.name: QwenOFT")
    framework = FRAMEWORKS.build(experiment["framework"], experiment=experiment, norm_stats=norm_stats)
    if checkpoint_dir is not None:
        framework.load_extra(checkpoint_dir)
    return framework


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
