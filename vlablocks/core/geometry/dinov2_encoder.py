"""DINOv2 patch encoder + multi-view information sharing (+ optional depth) -> geometric tokens per view.

    views  -> stretch to image_size -> Dinov2Model (transformers) -> patch tokens [B*V, g_h*g_w, D] -> Linear -> C
    depth  -> unproject with intrinsics -> xyz + valid [B, V, 4, h, w] [-> standardized per view] -> patch embedding
              (same grid) -> + above
    tokens -> MultiViewTransformer (per-view / cross-view attention, alternating) -> [B, V, g_h, g_w, C]

The DINOv2 trunk is the real transformers class: `base_model: <dir>` loads local weights
(`from_pretrained(local_files_only=True)`), `base_model: null` builds a random-init one from the tiny_*
numbers; both go through the same code after construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from vlablocks.core.batch import GeometryInputs
from vlablocks.core.geometry.info_sharing import MultiViewTransformer
from vlablocks.core.geometry.tokens import GeometricTokens
from vlablocks.core.registry import GEOMETRIC_ENCODERS


def standardize_points(points: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """points: [B, V, 4, h, w] (x, y, z in metres, then validity) -> the same with each view's x, y and z replaced by

        (p_c - mean_c) / max(std_c, eps)       mean, std over the view's valid pixels, per channel c

    and 0 at invalid pixels; the validity channel is kept. Metric points sit on a large offset (a top camera 1.5 m
    above the table sees z in 1.2-1.5 m), so a few centimetres of height are a small part of what the patch
    embedding sees; standardized, they are of order one. The scene's absolute scale and offset are lost."""
    xyz, valid = points[:, :, :3], points[:, :, 3:4]
    count = valid.sum(dim=(3, 4), keepdim=True).clamp(min=1.0)
    mean = (xyz * valid).sum(dim=(3, 4), keepdim=True) / count
    std = (((xyz - mean) ** 2 * valid).sum(dim=(3, 4), keepdim=True) / count).sqrt().clamp(min=eps)
    return torch.cat([(xyz - mean) / std * valid, valid], dim=2)


def encoder_size(image_size: int | list[int], patch_size: int) -> tuple[int, int]:
    """(height, width) every view is stretched to; both must be multiples of the patch size."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"geometric_encoder.image_size must be an int or [height, width], got {image_size!r}")
    if any(s <= 0 or s % patch_size for s in size):
        raise ValueError(
            f"geometric_encoder.image_size {list(size)} must be positive multiples of the DINOv2 patch size "
            f"{patch_size}; e.g. {[max(1, round(s / patch_size)) * patch_size for s in size]}"
        )
    return size


def load_dinov2(base_model: str) -> Dinov2Model:
    directory = Path(base_model)
    missing = [name for name in ("config.json",) if not (directory / name).is_file()]
    if not directory.is_dir() or missing or not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(
            f"geometric_encoder.base_model {base_model} must be a local Dinov2Model dir with config.json and "
            "*.safetensors weights (e.g. written by Dinov2Model.save_pretrained); set base_model: null for random init"
        )
    model_type = Dinov2Config.get_config_dict(str(directory))[0].get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"geometric_encoder.base_model {base_model} holds a {model_type!r} model, not 'dinov2'")
    return Dinov2Model.from_pretrained(directory, local_files_only=True)


@GEOMETRIC_ENCODERS.register("dinov2_multiview")
class DinoMultiViewEncoder(nn.Module):
    """DINOv2 patches + alternating per-view/cross-view attention (+ optional depth) -> [B, V, g_h, g_w, C]."""

    @dataclass(frozen=True)
    class Config:
        name: str = "dinov2_multiview"
        base_model: str | None = None  # local Dinov2Model dir; None: random init from the tiny_* numbers
        image_size: int | list[int] = 112  # every view stretched to this; multiples of the patch size
        output_dim: int = 64  # C, the width of the geometric tokens
        info_sharing_layers: int = 2  # (per-view, cross-view) attention pairs
        info_sharing_heads: int = 4
        use_depth: bool = True  # encode depth (unprojected with the intrinsics) into the same grid, when given
        default_fov_degrees: float = 60.0  # horizontal field of view assumed when a sample has depth but no intrinsics
        standardize_points: bool = False  # xyz -> (xyz - mean) / std over each view's valid pixels (standardize_points)
        tiny_hidden_size: int = 32
        tiny_num_layers: int = 2
        tiny_num_heads: int = 2
        tiny_patch_size: int = 14

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        if config.base_model:
            self.backbone = load_dinov2(config.base_model)
        else:
            dino = Dinov2Config(
                hidden_size=config.tiny_hidden_size,
                num_hidden_layers=config.tiny_num_layers,
                num_attention_heads=config.tiny_num_heads,
                patch_size=config.tiny_patch_size,
                mlp_ratio=2,
            )
            self.backbone = Dinov2Model(dino)
        patch = self.backbone.config.patch_size
        self.image_size = encoder_size(config.image_size, patch)
        self.grid_hw = (self.image_size[0] // patch, self.image_size[1] // patch)
        self.output_dim = config.output_dim
        self.project = nn.Linear(self.backbone.config.hidden_size, config.output_dim)
        self.depth_embed = None
        if config.use_depth:
            # x, y, z, valid -> one token per patch, on DINOv2's grid.
            self.depth_embed = nn.Sequential(
                nn.Conv2d(4, config.output_dim, kernel_size=patch, stride=patch), nn.GELU(), nn.Flatten(2)
            )
            self.depth_norm = nn.LayerNorm(config.output_dim)
        self.info_sharing = MultiViewTransformer(
            config.output_dim, config.info_sharing_layers, config.info_sharing_heads
        )

    @property
    def device(self) -> torch.device:
        return self.project.weight.device

    def preprocess_options(self) -> dict:
        """What the processor's geometry step needs to prepare this encoder's inputs (see GeometryPreprocess)."""
        return {
            "size": list(self.image_size),
            "use_depth": self.depth_embed is not None,
            "fov_degrees": self.config.default_fov_degrees,
        }

    def forward(self, inputs: GeometryInputs) -> GeometricTokens:
        """inputs: pixels [B, V, 3, h, w], view_mask [B, V], optional points [B, V, 4, h, w] -> tokens."""
        return self.encode(inputs.pixels, inputs.view_mask, inputs.points)

    def encode(
        self, pixels: torch.Tensor, view_mask: torch.Tensor, points: torch.Tensor | None = None
    ) -> GeometricTokens:
        """pixels: [B, V, 3, h, w] normalized; view_mask: [B, V]; points: [B, V, 4, h, w] xyz + valid, or None."""
        batch, views = view_mask.shape
        dtype = self.project.weight.dtype
        flat = pixels.reshape(batch * views, *pixels.shape[2:]).to(dtype)
        hidden = self.backbone(pixel_values=flat).last_hidden_state  # [B*V, 1 + G, D]: CLS first
        patches = hidden[:, -self.grid_hw[0] * self.grid_hw[1] :]  # DINOv2 without registers: exactly G after CLS
        tokens = self.project(patches)  # [B*V, G, C]
        if points is not None and self.depth_embed is not None:
            if self.config.standardize_points:
                points = standardize_points(points)
            depth_tokens = self.depth_embed(points.reshape(batch * views, 4, *points.shape[3:]).to(dtype))
            has_depth = points[:, :, 3].flatten(2).amax(2).reshape(batch * views, 1, 1).to(dtype)
            tokens = tokens + self.depth_norm(depth_tokens.transpose(1, 2)) * has_depth  # no depth: no change
        tokens = self.info_sharing(tokens.reshape(batch, views, -1, self.output_dim), view_mask)
        return GeometricTokens(tokens.reshape(batch, views, *self.grid_hw, self.output_dim), view_mask)
