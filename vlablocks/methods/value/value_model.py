"""Value models (the VALUE_MODELS registry): what every one shares, and `StateValueMLP`, the cheap baseline.

A value model maps a sample to features of the state (`state_features`: the VLM's in QwenValue, the
robot state alone here), optionally joined with the embedded action chunk for Q(s, a), and reads a value
from them with a `ValueHead` (MSE or HL-Gauss, value_head.py) trained on the sample's return:

    V(s)    = head(f(s))
    Q(s, a) = head([f(s), W_a vec(a_{t:t+T})])      (normalized chunk, padded steps zeroed)

They are trained (`vlablocks train`), checkpointed and loaded like policies (a config's `framework:` section
names them; vlablocks/core/registry.py `MODELS`); `predict_value(batch)` replaces `sample_actions`.
docs/value_functions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlablocks.core.batch import Batch
from vlablocks.core.config import PlatformConfig
from vlablocks.core.framework.base import Framework
from vlablocks.core.registry import VALUE_MODELS
from vlablocks.methods.value.value_head import ValueHead, ValueHeadConfig


class ValueModel(Framework):
    """Base of value models: subclasses implement `state_features(batch) -> [B, F]` and call
    `build_value_head(F)` in their constructor."""

    def build_value_head(self, feature_dim: int) -> None:
        platform, config = self.platform, self.config
        chunk = platform.action_horizon * platform.action_dim
        self.action_proj = nn.Linear(chunk, feature_dim) if config.inputs == "state_action" else None
        self.head = ValueHead(config.value_head, feature_dim * (2 if self.action_proj is not None else 1))

    def state_features(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def features(self, batch: Batch) -> torch.Tensor:
        """-> [B, F] (V) or [B, 2F] (Q): the state's features, joined for Q with the embedded action chunk."""
        features = self.state_features(batch)
        if self.action_proj is None:
            return features
        if batch.actions is None:
            raise ValueError(
                f"{self.config.name} with inputs: state_action is Q(s, a): every sample needs its `action`"
            )
        actions = batch.actions.to(self.action_proj.weight.dtype).masked_fill(batch.action_is_pad.unsqueeze(-1), 0.0)
        return torch.cat([features, self.action_proj(actions.flatten(1)).to(features.dtype)], dim=-1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.returns is None:
            raise ValueError(
                f"{self.config.name} trains on returns: set dataset.returns (e.g. {{source: outcome, gamma: 0.9}}) "
                "so that samples carry `return`"
            )
        returns = batch.returns.to(self.device)
        out = self.head(self.features(batch), returns)
        return {"loss": out["loss"], "value_mae": (out["value"] - returns).abs().mean().detach()}

    @torch.no_grad()
    def predict_value(self, batch: Batch) -> np.ndarray:
        """A processed batch (samples with their `action` chunk for Q; Policy.processor makes it) -> values [B]
        float32."""
        was_training = self.training
        self.eval()
        value = self.head(self.features(batch.to(self.device)))["value"]
        self.train(was_training)
        return value.float().cpu().numpy()

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, Any]:
        raise ValueError(
            f"{self.config.name} is a value model, not a policy: it predicts values (`vlablocks value`), not actions"
        )


@VALUE_MODELS.register("StateValueMLP")
class StateValueMLP(ValueModel):
    """The cheap baseline: V(s) or Q(s, a) from the normalized robot state alone (no images, no instruction)."""

    @dataclass(frozen=True)
    class Config:
        name: str = "StateValueMLP"
        inputs: Literal["state", "state_action"] = "state"
        hidden_dim: int = 256
        value_head: ValueHeadConfig = field(default_factory=ValueHeadConfig)

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        if platform.state_dim < 1:
            raise ValueError("StateValueMLP needs a robot state: platform.state_dim is 0")
        self.encoder = nn.Sequential(nn.Linear(platform.state_dim, config.hidden_dim), nn.GELU())
        self.build_value_head(config.hidden_dim)

    @property
    def hf_processor(self) -> None:
        return None

    def processor_options(self) -> dict:
        return {"image_size": 0, "view_size": (0, 0), "patch_size": 0, "use_state": True, "vision_language": False}

    def state_features(self, batch: Batch) -> torch.Tensor:
        if batch.state is None:
            raise ValueError("StateValueMLP reads the robot state: every sample needs `state`")
        return self.encoder(batch.state.to(self.device).float())
