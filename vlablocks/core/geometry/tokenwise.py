"""Tokenwise fusion: each vision patch is concatenated with the geometric feature of the same image region."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlablocks.core.geometry.alignment import align_to_vision_tokens
from vlablocks.core.geometry.fusion import ConcatProjection, Fusion
from vlablocks.core.geometry.tokens import GeometricTokens
from vlablocks.core.registry import FUSIONS


@FUSIONS.register("tokenwise")
class TokenwiseFusion(Fusion):
    """Geometric grid resampled to each view's merged-patch grid, then per-patch concat + projection."""

    @dataclass(frozen=True)
    class Config:
        name: str = "tokenwise"

    def __init__(self, config: Config, *, vision_dim: int, geometric_dim: int) -> None:
        super().__init__(config, vision_dim=vision_dim, geometric_dim=geometric_dim)
        self.fuse = ConcatProjection(vision_dim, geometric_dim)

    def forward(self, image_embeds: torch.Tensor, info, geometry: GeometricTokens) -> torch.Tensor:
        """image_embeds: [N, H] -> [N, H]; token n gets the area-weighted geometry under its patch."""
        self.check_inputs(image_embeds, geometry)
        return self.fuse(image_embeds, align_to_vision_tokens(geometry, info))
