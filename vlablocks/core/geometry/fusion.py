"""The fusion contract: merged vision tokens + geometric tokens -> fused vision tokens, as a VLM vision_hook.

A registered fusion is built as `Fusion(config, vision_dim=H, geometric_dim=C)` and called as
`fusion(image_embeds [N, H], info, geometry) -> [N, H]`, where `info` is the VLM's VisionHookInfo (per
token sample / view / merged-grid (row, col); per view its merged grid) and `geometry` the encoder's
GeometricTokens [B, V, g_h, g_w, C]. Every fusion is residual with a zero-initialised output
projection (as ControlNet's zero convolutions and the heads' adaLN-Zero): at step 0 the VLM sees its own
vision features untouched, whatever the scale of a pretrained tower's embeddings. The projection opens
after the first update that reaches it, and the geometric encoder trains from the update after that.
"""

from __future__ import annotations

import torch
from torch import nn

from vlablocks.core.geometry.tokens import GeometricTokens
from vlablocks.core.partitioned import whole


class Fusion(nn.Module):
    """Base class of registered fusions."""

    def __init__(self, config, *, vision_dim: int, geometric_dim: int) -> None:
        super().__init__()
        self.config = config
        self.vision_dim = vision_dim
        self.geometric_dim = geometric_dim

    def forward(self, image_embeds: torch.Tensor, info, geometry: GeometricTokens) -> torch.Tensor:
        raise NotImplementedError

    def check_inputs(self, image_embeds: torch.Tensor, geometry: GeometricTokens) -> None:
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.vision_dim:
            raise ValueError(
                f"{self.config.name}: image_embeds must be [N, {self.vision_dim}], got {list(image_embeds.shape)}"
            )
        if geometry.dim != self.geometric_dim:
            raise ValueError(
                f"{self.config.name}: geometric tokens have width {geometry.dim}, the fusion was built for "
                f"{self.geometric_dim}; build it with geometric_dim=<encoder output_dim>"
            )


class ConcatProjection(nn.Module):
    """Per-token concat + projection, residual: v + Linear([v, g]).  v: [N, H], g: [N, C] -> [N, H]"""

    def __init__(self, vision_dim: int, geometric_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_dim + geometric_dim, vision_dim)
        with whole(self.proj):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, vision: torch.Tensor, geometric: torch.Tensor) -> torch.Tensor:
        # Computed in the fusion's own dtype: a bf16 VLM may feed a float32 fusion outside autocast.
        joint = torch.cat([vision, geometric.to(vision.dtype)], dim=-1).to(self.proj.weight.dtype)
        return vision + self.proj(joint).to(vision.dtype)
