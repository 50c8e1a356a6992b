"""QwenFlowMatching: a flow-matching DiT action expert conditioned on Qwen-VL features (GR00T / pi0 style).

    prompt = chat(views..., instruction) [+ readout tokens]
    VLM  -> hidden states of every layer [B, L, H] (+ mask, vision-token positions)
    head -> flow_matching (cross-attends to the last layer) or layerwise_flow_matching (one layer per block)
            or, with `expert_attention: every_layer`, pi0's expert: layer l attends to the VLM's own layer-l keys
            and values (vlablocks/core/action_model/shared_attention.py)

`auxiliary_losses: {readout: {weight: w}}` adds T readout tokens and their L1 action regression that ground the
instruction in the VLM (vlablocks/core/auxiliary/readout.py); `insulate_vlm` stops the head's gradient at the VLM.

At inference the VLM prefix is encoded once; the head's Euler integration reuses that conditioning for
all of its steps (nothing is recomputed per step).
Run this file to smoke-test it: `python vlablocks/core/framework/qwen_flow_matching.py [--config-yaml F] [overrides]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.auxiliary.base import AuxiliaryInputs
from vlablocks.core.auxiliary.losses import require_vlm_training
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field, registry_map
from vlablocks.core.framework.base import Framework
from vlablocks.core.framework.conditioning import (
    expert_head_options,
    expert_keys_values,
    predict_actions,
    start_noise,
    vlm_conditioning,
)
from vlablocks.core.registry import FRAMEWORKS, VLMS
from vlablocks.core.vlm.base import VLMBackbone


@FRAMEWORKS.register("QwenFlowMatching")
class QwenFlowMatching(Framework):
    """Qwen-VL prefix encoded once + flow-matching DiT action expert (Euler sampling)."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenFlowMatching"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = registry_field("action_models", "flow_matching")
        auxiliary_losses: dict = registry_map("auxiliary_losses")  # {name: options}, vlablocks/core/auxiliary/
        insulate_vlm: bool = False  # the head's gradient stops at the VLM (needs an auxiliary loss that trains it)
        expert_attention: Literal["last_layer", "every_layer"] = "last_layer"  # every_layer: pi0's shared attention
        MOVED: ClassVar[dict[str, str]] = {"readout_loss_weight": "framework.auxiliary_losses.readout.weight"}

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        head = expert_head_options("QwenFlowMatching", config.action_model, config.expert_attention, self.vlm)
        self.action_model = self.build_action_model(head, cond_dim=self.vlm.hidden_size)
        self.auxiliary_losses = self.build_auxiliary_losses()
        require_vlm_training("QwenFlowMatching", config.insulate_vlm, self.auxiliary_losses, learns_otherwise=False)

    def processor_options(self) -> dict:
        """The auxiliary losses' tokens (the readouts, if any) close every prompt."""
        return {**super().processor_options(), "prompt_suffix": self.auxiliary_losses.prompt_suffix}

    def encode(self, batch: Batch):
        """-> (VLMOutput, the head's Conditioning)."""
        insulate = self.config.insulate_vlm
        with expert_keys_values(self.vlm, self.config.expert_attention, insulate) as keys_values:
            out = self.vlm(batch.vlm, requested_token_ids=self.auxiliary_losses.token_ids)
        conditioning = vlm_conditioning(out, insulate=insulate)
        conditioning.layer_keys_values = keys_values
        return out, conditioning

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out, conditioning = self.encode(batch)
        losses = self.action_model.compute_loss(
            conditioning, batch.actions, batch.action_is_pad, batch.state, action_dim_mask=batch.action_dim_mask
        )
        return self.auxiliary_losses.add_to(losses, AuxiliaryInputs(out, batch))

    def flow_conditioning(self, batch: Batch) -> tuple[Conditioning, torch.Tensor | None]:
        """-> (the head's Conditioning, state [B, S] or None): what the flow head's predict / invert / reconstruct
        read (vlablocks/methods/steering/flow_inversion.py runs any flow framework through this)."""
        _, conditioning = self.encode(batch)
        return conditioning, batch.state

    def sampling_noise(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        """The flow head's starting noise [B, T, D], drawn before a compiled sample_actions (prepare_sampling)."""
        return start_noise(self.action_model, len(batch), generator)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        conditioning, state = self.flow_conditioning(batch)  # once, reused by every integration step
        return {"actions": predict_actions(self.action_model, conditioning, state, generator, batch.noise)}


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenFlowMatching"))
