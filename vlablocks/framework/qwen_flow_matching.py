"""QwenFlowMatching: a flow-matching DiT action expert conditioned on Qwen-VL features (GR00T / pi0 style).

    prompt = chat(views..., instruction)
    VLM  -> hidden states of every layer [B, L, H] (+ mask, vision-token positions)
    head -> flow_matching (cross-attends to the last layer) or layerwise_flow_matching (one layer per block)

At inference the VLM prefix is encoded once; the head's Euler integration reuses that conditioning for
all of its steps (nothing is recomputed per step).
Run this file to smoke-test it: `python vlablocks/framework/qwen_flow_matching.py [--config_yaml F] [overrides]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlablocks.action_model.base import Conditioning
from vlablocks.build import build
from vlablocks.config import PlatformConfig, registry_field
from vlablocks.framework.base import Framework
from vlablocks.processor.batch import Batch
from vlablocks.registry import FRAMEWORKS, VLMS


def vlm_conditioning(out) -> Conditioning:
    """VLMOutput -> the head's Conditioning (all layers, padding mask, vision-token positions)."""
    return Conditioning(
        tokens=out.last_hidden_state,
        mask=out.attention_mask.bool(),
        layers=list(out.hidden_states),
        vision_mask=out.vision_mask,
        vision_positions=out.vision_positions,
    )


@FRAMEWORKS.register("QwenFlowMatching")
class QwenFlowMatching(Framework):
    """Qwen-VL prefix encoded once + flow-matching DiT action expert (Euler sampling)."""

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenFlowMatching"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = registry_field("action_models", "flow_matching")

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        self.action_model = self.build_action_model(config.action_model, cond_dim=self.vlm.hidden_size)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        conditioning = vlm_conditioning(self.vlm(batch.vlm))
        return self.action_model.compute_loss(conditioning, batch.actions, batch.action_is_pad, batch.state)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        conditioning = vlm_conditioning(self.vlm(batch.vlm))  # once, reused by every integration step
        return {"actions": self.action_model.predict(conditioning, batch.state, generator=generator)}


if __name__ == "__main__":
    from vlablocks.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenFlowMatching"))
