"""QwenLayerwiseFM3D: layerwise flow matching on a Qwen-VL whose vision tokens are fused with 2-D + 3-D geometry.

    geometry = geometric encoder(views, depth, intrinsics)      -> [B, V, g_h, g_w, C]   (vlablocks/geometry)
    prompt   = chat(views..., instruction)
    VLM      -> vision tower -> merged vision tokens [N, H]
                -> fusion(tokens, layout, geometry) (the VLM's vision_hook: fused tokens replace the vision
                   embeddings at the image-token positions of the LLM input)
             -> hidden states of every layer [B, L, H]
    head     -> layerwise_flow_matching: DiT block i cross-attends to VLM layer i of the last K

`auxiliary_losses` / `insulate_vlm`: readout tokens with an auxiliary L1 action regression that grounds the
instruction in the VLM, as for QwenFlowMatching (`readout`, vlablocks/core/auxiliary/readout.py).
`use_geometric_branch: false` builds no geometric encoder and no fusion (no parameters at all): the
framework is then plain layerwise flow matching, the ablation baseline. Depth is optional per batch:
without it the encoder uses the images alone.
alg1 (`auxiliary_losses: {alg1_dyn, alg1_geo, alg1_reg: {weight: w}}`; needs the geometric branch): auxiliary
world-model losses on the fused vision tokens (vlablocks/methods/spatial/world_losses.py, equations there), added
to the action loss:

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
from vlablocks.core.auxiliary.base import AuxiliaryInputs, FusionCapture
from vlablocks.core.auxiliary.losses import require_vlm_training
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field, registry_map
from vlablocks.core.framework.base import Framework
from vlablocks.core.framework.conditioning import predict_actions, start_noise, vlm_conditioning
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
        # {name: options}: readout (vlablocks/core/auxiliary/), alg1_geo / alg1_dyn / alg1_reg (methods/spatial/)
        auxiliary_losses: dict = registry_map("auxiliary_losses")
        insulate_vlm: bool = False  # the head's gradient stops at the VLM (needs an auxiliary loss that trains it)
        # Keys this section no longer has -> where they went (a config that sets them is told; a checkpoint written
        # with them is read as if they had been set there: vlablocks/core/config/__init__.py upgrade_moved_keys).
        MOVED: ClassVar[dict[str, str | tuple[str, ...]]] = {
            "sagr_phase_a_steps": "trainer.loss_schedule.phase_a_steps",
            "sagr_phase_b_ramp_steps": "trainer.loss_schedule.ramp_steps",
            "readout_loss_weight": "framework.auxiliary_losses.readout.weight",
            "loss_w_dyn": "framework.auxiliary_losses.alg1_dyn.weight",
            "loss_w_geo": "framework.auxiliary_losses.alg1_geo.weight",
            "loss_w_reg": "framework.auxiliary_losses.alg1_reg.weight",
            "world_hidden_dim": (
                "framework.auxiliary_losses.alg1_dyn.hidden_dim",
                "framework.auxiliary_losses.alg1_geo.hidden_dim",
            ),
        }

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        self.action_model = self.build_action_model(config.action_model, cond_dim=self.vlm.hidden_size)
        self.auxiliary_losses = self.build_auxiliary_losses(has_fusion=config.use_geometric_branch)
        require_vlm_training("QwenLayerwiseFM3D", config.insulate_vlm, self.auxiliary_losses, learns_otherwise=False)
        self.geometric_encoder = None
        self.fusion = None
        if config.use_geometric_branch:
            self.geometric_encoder = build(GEOMETRIC_ENCODERS, config.geometric_encoder)
            self.fusion = build(
                FUSIONS, config.fusion, vision_dim=self.vlm.hidden_size, geometric_dim=self.geometric_encoder.output_dim
            )

    def processor_options(self) -> dict:
        """The geometric encoder's pixels (and depth points) are prepared by the processor too, with what the
        auxiliary losses need (depth targets, the next frame); their tokens (the readouts, if any) close every prompt.
        """
        options = super().processor_options()
        options["prompt_suffix"] = self.auxiliary_losses.prompt_suffix
        if self.geometric_encoder is not None:
            options["geometry"] = self.geometric_encoder.preprocess_options()
        return self.auxiliary_losses.processor_options(options)

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

        out = self.vlm(batch.vlm, requested_token_ids=self.auxiliary_losses.token_ids, vision_hook=hook)
        return out, vlm_conditioning(out, insulate=self.config.insulate_vlm)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {"loss", ...}; with auxiliary losses also "action_loss" (what trainer.loss_schedule weights) and
        "log": {"action_loss", "<name>_loss"} (each term, vlablocks/core/auxiliary/losses.py)."""
        capture = {} if self.auxiliary_losses.needs_fusion else None
        out, conditioning = self.encode_prefix(batch, capture)
        losses = self.action_model.compute_loss(
            conditioning, batch.actions, batch.action_is_pad, batch.state, action_dim_mask=batch.action_dim_mask
        )
        fusion = None
        if capture:
            fusion = FusionCapture(capture["vision"], capture["fused"], capture["info"], self.geometric_encoder.grid_hw)
        return self.auxiliary_losses.add_to(losses, AuxiliaryInputs(out, batch, fusion))

    def flow_conditioning(self, batch: Batch) -> tuple[Conditioning, torch.Tensor | None]:
        """-> (the head's Conditioning, state [B, S] or None): what the flow head's predict / invert / reconstruct
        read (vlablocks/methods/steering/flow_inversion.py runs any flow framework through this)."""
        _, conditioning = self.encode_prefix(batch)
        return conditioning, batch.state

    def sampling_noise(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        """The flow head's starting noise [B, T, D], drawn before a compiled sample_actions (prepare_sampling)."""
        return start_noise(self.action_model, len(batch), generator)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        conditioning, state = self.flow_conditioning(batch)  # once, reused by every integration step
        return {"actions": predict_actions(self.action_model, conditioning, state, generator, batch.noise)}


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenLayerwiseFM3D"))
