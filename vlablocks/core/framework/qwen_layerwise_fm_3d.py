"""QwenLayerwiseFM3D: layerwise flow matching on a Qwen-VL whose vision tokens are fused with 2-D + 3-D geometry.

    geometry = geometric encoder(views, depth, intrinsics)      -> [B, V, g_h, g_w, C]   (vlablocks/geometry)
    prompt   = chat(views..., instruction)
    VLM      -> vision tower -> merged vision tokens [N, H]
                -> fusion(tokens, layout, geometry) (the VLM's vision_hook: fused tokens replace the vision
                   embeddings at the image-token positions of the LLM input)
             -> hidden states of every layer [B, L, H]
    head     -> layerwise_flow_matching: DiT block i cross-attends to VLM layer i of the last K

`readout_loss_weight` / `insulate_vlm`: readout tokens with an auxiliary L1 action regression that grounds the
instruction in the VLM, as for QwenFlowMatching (vlablocks/core/framework/readout.py).
`use_geometric_branch: false` builds no geometric encoder and no fusion (no parameters at all): the
framework is then plain layerwise flow matching, the ablation baseline. Depth is optional per batch:
without it the encoder uses the images alone.
alg1 (`loss_w_dyn`, `loss_w_geo`, `loss_w_reg` > 0; needs the geometric branch): auxiliary world-model losses on
the fused vision tokens (vlablocks/core/geometry/world_losses.py, equations there), added to the action loss:

    loss = action_loss + w_dyn L_dyn + w_geo L_geo + w_reg L_reg,     action_loss = flow matching [+ readout]

`forward` reports `action_loss` beside the total, and the terms under "log" (metrics.jsonl). alg1's phased schedule
(the action loss off for N steps, then ramped in over M) is the training loop's, not the model's:
`trainer.loss_schedule: {phase_a_steps: N, ramp_steps: M}` (vlablocks/core/training/loss_schedule.py). L_dyn needs the depth of a later frame: `dataset.next_frame_offset: k`.
Run this file to smoke-test it: `python vlablocks/core/framework/qwen_layerwise_fm_3d.py [--config-yaml F] [overrides]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field
from vlablocks.core.framework.base import Framework
from vlablocks.core.framework.conditioning import vlm_conditioning
from vlablocks.core.framework.readout import add_readout_loss, build_readout
from vlablocks.core.geometry.world_losses import WorldLosses
from vlablocks.core.registry import FRAMEWORKS, FUSIONS, GEOMETRIC_ENCODERS, VLMS
from vlablocks.core.vlm.base import VLMBackbone


def default_head() -> dict:
    # K = 2 layerwise blocks fits the tiny VLM (2 decoder layers); a real backbone raises num_layers.
    return {"name": "layerwise_flow_matching", "num_layers": 2, "hidden_dim": 128, "num_heads": 4}


@FRAMEWORKS.register("QwenLayerwiseFM3D")
class QwenLayerwiseFM3D(Framework):
    """Qwen-VL with geometric tokens fused into its vision tokens + layerwise flow-matching head on the last K layers."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenLayerwiseFM3D"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = dataclasses.field(default_factory=default_head, metadata={"registry": "action_models"})
        use_geometric_branch: bool = True  # false: no geometric encoder, no fusion, no parameters of either
        geometric_encoder: dict = registry_field("geometric_encoders", "dinov2_multiview")
        fusion: dict = registry_field("fusions", "tokenwise")
        readout_loss_weight: float = 0.0  # > 0: readout tokens + their L1 action regression (framework/readout.py)
        insulate_vlm: bool = False  # the head's gradient stops at the VLM (needs readout_loss_weight > 0)
        # alg1 (vlablocks/core/geometry/world_losses.py): auxiliary losses on the fused tokens, 0 = off (no parameters)
        loss_w_dyn: float = 0.0  # next frame's geometric tokens from fused tokens + action (dataset.next_frame_offset)
        loss_w_geo: float = 0.0  # this frame's geometric tokens reconstructed from the fused tokens
        loss_w_reg: float = 0.0  # fused tokens kept near the 2-D vision tokens
        world_hidden_dim: int = 128  # width of the L_dyn / L_geo MLP heads
        # Keys this section no longer has -> where they went (a config that sets them is told; a checkpoint drops them).
        MOVED: ClassVar[dict[str, str]] = {
            "sagr_phase_a_steps": "trainer.loss_schedule.phase_a_steps",
            "sagr_phase_b_ramp_steps": "trainer.loss_schedule.ramp_steps",
        }

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        self.action_model = self.build_action_model(config.action_model, cond_dim=self.vlm.hidden_size)
        self.readout = build_readout(
            "QwenLayerwiseFM3D", self.vlm, self.platform, config.readout_loss_weight, config.insulate_vlm
        )
        self.geometric_encoder = None
        self.fusion = None
        if config.use_geometric_branch:
            self.geometric_encoder = build(GEOMETRIC_ENCODERS, config.geometric_encoder)
            self.fusion = build(
                FUSIONS, config.fusion, vision_dim=self.vlm.hidden_size, geometric_dim=self.geometric_encoder.output_dim
            )
        self.world_losses = None
        if max(config.loss_w_dyn, config.loss_w_geo, config.loss_w_reg) > 0:
            if not config.use_geometric_branch:
                raise ValueError("QwenLayerwiseFM3D: loss_w_dyn / loss_w_geo / loss_w_reg need use_geometric_branch")
            self.world_losses = WorldLosses(
                self.vlm.hidden_size,
                self.platform.action_horizon * self.platform.action_dim,
                config.loss_w_dyn,
                config.loss_w_geo,
                config.loss_w_reg,
                config.world_hidden_dim,
            )

    def processor_options(self) -> dict:
        """The geometric encoder's pixels (and depth points) are prepared by the processor too; the readout
        tokens (if any) close every prompt."""
        options = super().processor_options()
        options["prompt_suffix"] = self.readout.prompt_suffix if self.readout is not None else ""
        if self.geometric_encoder is not None:
            options["geometry"] = self.geometric_encoder.preprocess_options()
            if self.world_losses is not None and self.world_losses.needs_points:
                # the targets are unprojected depth even when the encoder itself does not read depth
                options["geometry"]["use_depth"] = True
                options["geometry"]["next_frame"] = self.world_losses.needs_next_frame
        return options

    def encode_prefix(self, batch: Batch, capture: dict | None = None):
        """Geometry (if enabled) -> fused vision tokens -> VLM -> (VLMOutput, Conditioning with every layer).

        capture: a dict that receives the fusion's input ("vision" [N, H]), output ("fused" [N, H]) and "info"."""
        hook = None
        if self.geometric_encoder is not None:
            if batch.geometry is None:
                raise ValueError("QwenLayerwiseFM3D: the batch has no geometry inputs; build it with this processor")
            geometry = self.geometric_encoder(batch.geometry)

            def hook(image_embeds: torch.Tensor, info) -> torch.Tensor:
                fused = self.fusion(image_embeds, info, geometry)
                if capture is not None:
                    capture.update(vision=image_embeds, fused=fused, info=info)
                return fused

        readouts = self.readout.token_ids if self.readout is not None else ()
        out = self.vlm(batch.vlm, requested_token_ids=readouts, vision_hook=hook)
        return out, vlm_conditioning(out, insulate=self.config.insulate_vlm)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {"loss", ...}; with auxiliary losses also "action_loss" and "log": {name: float} (each term)."""
        capture = {} if self.world_losses is not None else None
        out, conditioning = self.encode_prefix(batch, capture)
        losses = self.action_model.compute_loss(
            conditioning, batch.actions, batch.action_is_pad, batch.state, action_dim_mask=batch.action_dim_mask
        )
        losses = add_readout_loss(losses, self.readout, self.config.readout_loss_weight, out, batch)
        if self.world_losses is None:
            return losses
        action_loss = losses["loss"]
        auxiliary = self.world_losses(capture, batch, self.geometric_encoder.grid_hw)
        losses.update(auxiliary)
        losses["action_loss"] = action_loss  # what trainer.loss_schedule weights
        losses["loss"] = action_loss + self.world_losses.weighted_sum(auxiliary)
        losses["log"] = {"loss_action": float(action_loss.detach())} | {
            name: float(value.detach()) for name, value in auxiliary.items()
        }
        return losses

    def flow_conditioning(self, batch: Batch) -> tuple[Conditioning, torch.Tensor | None]:
        """-> (the head's Conditioning, state [B, S] or None): what the flow head's predict / invert / reconstruct
        read (vlablocks/methods/steering/flow_inversion.py runs any flow framework through this)."""
        _, conditioning = self.encode_prefix(batch)
        return conditioning, batch.state

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        conditioning, state = self.flow_conditioning(batch)  # once, reused by every integration step
        return {"actions": self.action_model.predict(conditioning, state, generator=generator)}


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenLayerwiseFM3D"))
