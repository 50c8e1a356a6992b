"""QwenValue: a value model on Qwen-VL features, V(s) or Q(s, a), trained with `vlablocks train` like a policy.

    prompt = chat(views..., instruction) + <|value|>
    VLM  -> hidden state of the value token h [B, H] (+ W_s state, as QwenOFT's proprio projector)
    V(s):    head(h)                              -> value [B]
    Q(s, a): head([h, W_a vec(a_{t:t+T})])        -> value [B]   (normalized chunk, padded steps zeroed)
    loss:    mse or hl_gauss against the sample's discounted return G_t (value_head.py)

The targets are the per-frame Monte-Carlo returns the dataset computes at load time (`dataset.returns`,
vlablocks/dataloader/returns.py). The model is a framework of kind "value": same config sections,
checkpoints, processor and training loop as a policy, but it predicts values (`predict_value`), not
actions; `vlablocks value --ckpt C --data D` writes its per-frame values. docs/value_functions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from vlablocks.build import build
from vlablocks.config import PlatformConfig, registry_field
from vlablocks.framework.base import Framework
from vlablocks.framework.value_head import ValueHead, ValueHeadConfig
from vlablocks.processor.batch import Batch
from vlablocks.registry import FRAMEWORKS, VLMS

VALUE_TOKEN = "<|value|>"


@FRAMEWORKS.register("QwenValue")
class QwenValue(Framework):
    """Qwen-VL + a value token + an MSE or HL-Gauss value head: V(s) (`inputs: state`) or Q(s, a) (`state_action`)."""

    kind: ClassVar[str] = "value"

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
        chunk = platform.action_horizon * platform.action_dim
        self.action_proj = nn.Linear(chunk, hidden) if config.inputs == "state_action" else None
        self.head = ValueHead(config.value_head, hidden * (2 if self.action_proj is not None else 1))

    def processor_options(self) -> dict:
        return {**super().processor_options(), "prompt_suffix": VALUE_TOKEN, "use_state": self.proprio is not None}

    def features(self, batch: Batch) -> torch.Tensor:
        """-> [B, H] (V) or [B, 2H] (Q): the value token's hidden state (+ state), with the embedded chunk for Q."""
        out = self.vlm(batch.vlm, requested_token_ids=[self.value_token_id])
        position = out.token_positions[self.value_token_id][:, -1]  # [B]
        hidden = out.last_hidden_state[torch.arange(len(position), device=position.device), position]
        if self.proprio is not None:
            if batch.state is None:
                raise ValueError("QwenValue.use_proprio needs a `state` in every sample; set use_proprio: false")
            hidden = hidden + self.proprio(batch.state.to(hidden.dtype))
        if self.action_proj is None:
            return hidden
        if batch.actions is None:
            raise ValueError("QwenValue with inputs: state_action is Q(s, a): every sample needs its `action` chunk")
        actions = batch.actions.to(hidden.dtype).masked_fill(batch.action_is_pad.unsqueeze(-1), 0.0)
        return torch.cat([hidden, self.action_proj(actions.flatten(1))], dim=-1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.returns is None:
            raise ValueError(
                "QwenValue trains on returns: set dataset.returns (e.g. {source: outcome, gamma: 0.9}) so that "
                "samples carry `return`"
            )
        out = self.head(self.features(batch), batch.returns.to(self.device))
        return {"loss": out["loss"], "value_mae": (out["value"] - batch.returns.to(self.device)).abs().mean().detach()}

    @torch.no_grad()
    def predict_value(self, samples: list[dict]) -> np.ndarray:
        """Raw samples (with their `action` chunk for Q) -> values [B] float32."""
        if self.processor is None:
            raise ValueError("this value model has no processor: build it with build_policy() or load a checkpoint")
        was_training = self.training
        self.eval()
        value = self.head(self.features(self.processor(samples).to(self.device)))["value"]
        self.train(was_training)
        return value.float().cpu().numpy()

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, Any]:
        raise ValueError(
            "QwenValue is a value model, not a policy: it predicts values (`vlablocks value`), not actions"
        )
