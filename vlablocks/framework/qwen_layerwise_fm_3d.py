"""QwenLayerwiseFM3D: layerwise flow matching on a Qwen-VL whose vision tokens are fused with 2-D + 3-D geometry.

    geometry = geometric encoder(views, depth, intrinsics)      -> [B, V, g_h, g_w, C]   (vlablocks/geometry)
    prompt   = chat(views..., instruction)
    VLM      -> vision tower -> merged vision tokens [N, H]
                -> fusion(tokens, layout, geometry) (the VLM's vision_hook: fused tokens replace the vision
                   embeddings at the image-token positions of the LLM input)
             -> hidden states of every layer [B, L, H]
    head     -> layerwise_flow_matching: DiT block i cross-attends to VLM layer i of the last K

`readout_loss_weight` / `insulate_vlm`: readout tokens with an auxiliary L1 action regression that grounds the
instruction in the VLM, as for QwenFlowMatching (vlablocks/framework/readout.py).
`use_geometric_branch: false` builds no geometric encoder and no fusion (no parameters at all): the
framework is then plain layerwise flow matching, the ablation baseline. Depth is optional per batch:
without it the encoder uses the images alone.
Run this file to smoke-test it: `python vlablocks/framework/qwen_layerwise_fm_3d.py [--config_yaml F] [overrides]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vlablocks.build import build
from vlablocks.config import PlatformConfig, registry_field
from vlablocks.framework.base import Framework
from vlablocks.framework.qwen_flow_matching import vlm_conditioning
from vlablocks.framework.readout import add_readout_loss, build_readout
from vlablocks.processor.batch import Batch
from vlablocks.registry import FRAMEWORKS, FUSIONS, GEOMETRIC_ENCODERS, VLMS


def default_head() -> dict:
    # K = 2 layerwise blocks fits the tiny VLM (2 decoder layers); a real backbone raises num_layers.
    return {"name": "layerwise_flow_matching", "num_layers": 2, "hidden_dim": 128, "num_heads": 4}


@FRAMEWORKS.register("QwenLayerwiseFM3D")
class QwenLayerwiseFM3D(Framework):
    """Qwen-VL with geometric tokens fused into its vision tokens + layerwise flow-matching head on the last K layers."""

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

    def processor_options(self) -> dict:
        """The geometric encoder's pixels (and depth points) are prepared by the processor too; the readout
        tokens (if any) close every prompt."""
        options = super().processor_options()
        options["prompt_suffix"] = self.readout.prompt_suffix if self.readout is not None else ""
        if self.geometric_encoder is not None:
            options["geometry"] = self.geometric_encoder.preprocess_options()
        return options

    def encode_prefix(self, batch: Batch):
        """Geometry (if enabled) -> fused vision tokens -> VLM -> (VLMOutput, Conditioning with every layer)."""
        hook = None
        if self.geometric_encoder is not None:
            if batch.geometry is None:
                raise ValueError("QwenLayerwiseFM3D: the batch has no geometry inputs; build it with this processor")
            geometry = self.geometric_encoder(batch.geometry)

            def hook(image_embeds: torch.Tensor, info) -> torch.Tensor:
                return self.fusion(image_embeds, info, geometry)

        readouts = self.readout.token_ids if self.readout is not None else ()
        out = self.vlm(batch.vlm, requested_token_ids=readouts, vision_hook=hook)
        return out, vlm_conditioning(out, insulate=self.config.insulate_vlm)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out, conditioning = self.encode_prefix(batch)
        losses = self.action_model.compute_loss(conditioning, batch.actions, batch.action_is_pad, batch.state)
        return add_readout_loss(losses, self.readout, self.config.readout_loss_weight, out, batch)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        _, conditioning = self.encode_prefix(batch)  # once, reused by every integration step
        return {"actions": self.action_model.predict(conditioning, batch.state, generator=generator)}


if __name__ == "__main__":
    from vlablocks.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenLayerwiseFM3D"))
