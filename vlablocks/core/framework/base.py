"""The contract every framework (the model of a policy) keeps: loss and sampling on typed batches.

A framework is the model only: it takes the typed `Batch` its processor makes (vlablocks/core/processor/) and
knows nothing of datasets, normalization or checkpoints. `vlablocks/core/policy/` wraps it with its processor into
a `Policy` (predict, serving metadata, checkpoint I/O).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vlablocks.core.auxiliary.losses import AuxiliaryLosses, upgrade_legacy_keys
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import ExperimentConfig, PlatformConfig
from vlablocks.core.registry import ACTION_MODELS, FRAMEWORKS, MODELS
from vlablocks.core.vlm.compiled import prepare_for_compile


class Framework(nn.Module):
    """Base class of registered frameworks.

    Built as `Framework(config, platform=PlatformConfig)`. Subclasses implement
      forward(batch) -> {"loss": scalar, ...}
      sample_actions(batch, generator) -> {"actions": normalized [B, T, D]} or {"action_tokens": ids per sample
          (lists, or a [B, N] long tensor)}
      processor_options() -> the model-specific fields of its ProcessorConfig (prompt suffix, geometry, ...)
    Compiled sampling (Policy.compile) runs `prepare_sampling` eagerly, then `sample_actions` in one graph.
    `Policy.predict(samples)` (vlablocks/core/policy/policy.py) runs processor -> sample_actions -> postprocess.
    Value models (VALUE_MODELS, vlablocks/methods/value/) share this base for checkpoints and processors; what a
    model can do beyond this contract is declared by Protocols (vlablocks/core/capabilities.py).
    """

    def __init__(self, config: Any, *, platform: PlatformConfig) -> None:
        super().__init__()
        self.config = config
        self.platform = platform
        self._register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    def build_auxiliary_losses(
        self, *, platform: PlatformConfig | None = None, has_fusion: bool = False
    ) -> AuxiliaryLosses:
        """The auxiliary losses of `config.auxiliary_losses` (vlablocks/core/auxiliary/), on this framework's VLM;
        `platform` overrides the sizes they see (QwenPI05's readout: no state)."""
        return AuxiliaryLosses(
            type(self).__name__,
            self.config.auxiliary_losses,
            vlm=self.vlm,
            platform=platform or self.platform,
            has_fusion=has_fusion,
        )

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

    # ---- compiled sampling (Policy.compile) --------------------------------------------------------
    @property
    def sampling_token_ids(self) -> tuple[int, ...]:
        """The special tokens whose positions `sample_actions` reads off its VLM pass: the auxiliary losses' (the
        readouts); QwenOFT: its action queries."""
        return tuple(self.auxiliary_losses.token_ids)

    def prepare_compile(self) -> None:
        """Readies the model for a compiled `sample_actions`, in place (Policy.compile): the VLM's vision attention and
        output hooks (vlablocks/core/vlm/compiled.py)."""
        prepare_for_compile(self.vlm)

    def prepare_sampling(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """The host-side part of sampling, done eagerly before a compiled `sample_actions` (Policy.compile) so that
        the compiled graph holds tensor work only: the VLM pass's layout (vlablocks/core/vlm/layout.py) and the
        starting noise a sampling head would draw from `generator` (`sampling_noise`; torch.compile cannot trace a
        generator). `sample_actions(prepare_sampling(batch, g), None)` returns what `sample_actions(batch, g)` does."""
        layout = self.vlm.layout(batch.vlm, self.sampling_token_ids)
        vlm = dataclasses.replace(batch.vlm, layout=layout)
        return dataclasses.replace(batch, vlm=vlm, noise=self.sampling_noise(batch, generator))

    def sampling_noise(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        """Hook: the starting noise [B, T, D] the head's sampling draws from `generator`, drawn here instead (the
        flow frameworks); None: it draws none."""
        return None


def _upgrade_legacy_keys(state_dict: dict, prefix: str, *_: Any) -> None:
    """A load_state_dict pre-hook: checkpoints written before `auxiliary_losses` load under the new key names."""
    moved = {key[len(prefix) :]: state_dict.pop(key) for key in list(state_dict) if key.startswith(prefix)}
    upgrade_legacy_keys(moved)
    state_dict.update({prefix + key: value for key, value in moved.items()})


def policy_names() -> list[str]:
    """The registered frameworks: the models that predict actions (value models are in VALUE_MODELS)."""
    return FRAMEWORKS.names()


def build_framework(experiment: ExperimentConfig) -> Framework:
    """The model selected by `experiment.framework` (a policy or a value model: registry MODELS), without a
    processor."""
    if not experiment.framework:
        raise ValueError("the config has no `framework:` section; name one, e.g. framework.name: QwenOFT")
    return build(MODELS, experiment.framework, platform=experiment.platform)
