"""QwenValue: a value model on Qwen-VL features, V(s) or Q(s, a), trained with `vlablocks train` like a policy.

    prompt = chat(views..., instruction) + <|value|>
    VLM  -> hidden state of the value token h [B, H] (+ W_s state, as QwenOFT's proprio projector)
    V(s):    head(h)                              -> value [B]
    Q(s, a): head([h, W_a vec(a_{t:t+T})])        -> value [B]   (normalized chunk, padded steps zeroed)
    loss:    mse or hl_gauss against the sample's discounted return G_t (value_head.py)

The targets are the per-frame Monte-Carlo returns the dataset computes at load time (`dataset.returns`,
vlablocks/core/dataloader/returns.py). What value models share (Q's action embedding, the loss, `predict_value`)
is in value_model.py; `vlablocks value --ckpt C --data D` writes a model's per-frame values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field
from vlablocks.core.registry import VALUE_MODELS, VLMS
from vlablocks.core.vlm.base import VLMBackbone
from vlablocks.methods.value.value_head import ValueHeadConfig
from vlablocks.methods.value.value_model import ValueModel

VALUE_TOKEN = "<|value|>"


@VALUE_MODELS.register("QwenValue")
class QwenValue(ValueModel):
    """Qwen-VL + a value token + an MSE or HL-Gauss value head: V(s) (`inputs: state`) or Q(s, a) (`state_action`)."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenValue"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        inputs: Literal["state", "state_action"] = "state"  # V(s) or Q(s, a) with a = the action chunk
        use_proprio: bool = True
        value_head: ValueHeadConfig = field(default_factory=ValueHeadConfig)

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        hidden = self.vlm.hidden_size
        self.value_token_id = self.vlm.add_special_tokens([VALUE_TOKEN])[0]
        self.proprio = nn.Linear(platform.state_dim, hidden) if config.use_proprio and platform.state_dim else None
        self.build_value_head(hidden)

    def processor_options(self) -> dict:
        return {**super().processor_options(), "prompt_suffix": VALUE_TOKEN, "use_state": self.proprio is not None}

    def state_features(self, batch: Batch) -> torch.Tensor:
        """-> [B, H]: the value token's last hidden state (+ the projected state)."""
        out = self.vlm(batch.vlm, requested_token_ids=[self.value_token_id])
        position = out.token_positions[self.value_token_id][:, -1]  # [B]
        hidden = out.last_hidden_state[torch.arange(len(position), device=position.device), position]
        if self.proprio is None:
            return hidden
        if batch.state is None:
            raise ValueError("QwenValue.use_proprio needs a `state` in every sample; set use_proprio: false")
        return hidden + self.proprio(batch.state.to(self.proprio.weight.dtype)).to(hidden.dtype)
