"""Mean-broadcast fusion: the StarVLA fork's baseline, kept for ablation only.

All geometric tokens of a sample (every view, every cell) are averaged into one vector, which is
concatenated to every vision patch of that sample. Spatial structure is gone and every patch sees the
same geometry: the bottleneck the `tokenwise` and `cross_attention` fusions remove.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlablocks.core.geometry.fusion import ConcatProjection, Fusion
from vlablocks.core.geometry.tokens import GeometricTokens, check_views
from vlablocks.core.registry import FUSIONS


def pooled_geometry(geometry: GeometricTokens) -> torch.Tensor:
    """Mean over real views and all cells: [B, V, g_h, g_w, C] -> [B, C]."""
    weights = geometry.view_mask.to(geometry.tokens.dtype)[:, :, None, None, None]
    total = (geometry.tokens * weights).sum(dim=(1, 2, 3))
    cells = geometry.tokens.shape[2] * geometry.tokens.shape[3]
    return total / (weights.sum(dim=(1, 2, 3, 4)).clamp(min=1.0) * cells)[:, None]


@FUSIONS.register("mean_broadcast")
class MeanBroadcastFusion(Fusion):
    """Seed baseline: geometry averaged to one vector per sample, broadcast to every patch (concat + projection)."""

    @dataclass(frozen=True)
    class Config:
        name: str = "mean_broadcast"

    def __init__(self, config: Config, *, vision_dim: int, geometric_dim: int) -> None:
        super().__init__(config, vision_dim=vision_dim, geometric_dim=geometric_dim)
        self.fuse = ConcatProjection(vision_dim, geometric_dim)

    def forward(self, image_embeds: torch.Tensor, info, geometry: GeometricTokens) -> torch.Tensor:
        """image_embeds: [N, H] -> [N, H]; every token of sample b gets the same pooled geometry."""
        self.check_inputs(image_embeds, geometry)
        check_views(geometry, info)
        return self.fuse(image_embeds, pooled_geometry(geometry)[info.batch_index])
