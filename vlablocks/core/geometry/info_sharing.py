"""Multi-view information sharing (MapAnything / VGGT style): alternating per-view and cross-view attention.

A per-view layer attends within each view's patch tokens; a cross-view layer attends over the tokens of
every view of the sample, so geometry seen by one camera informs the others. A learned embedding marks
the reference view (view 0) so the shared representation has a frame to anchor to. Padded views are
masked out of cross-view attention.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiViewTransformer(nn.Module):
    """tokens [B, V, G, C] (G patch tokens per view), view_mask [B, V] bool -> [B, V, G, C]."""

    def __init__(self, dim: int, num_pairs: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"info sharing: output_dim={dim} must be divisible by info_sharing_heads={num_heads}")

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim, num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )

        self.per_view = nn.ModuleList(layer() for _ in range(num_pairs))
        self.cross_view = nn.ModuleList(layer() for _ in range(num_pairs))
        self.reference_view = nn.Parameter(torch.zeros(dim))
        self.other_view = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.reference_view, std=0.02)
        nn.init.normal_(self.other_view, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        batch, views, count, dim = tokens.shape
        is_reference = torch.zeros(views, 1, 1, dtype=torch.bool, device=tokens.device)
        is_reference[0] = True
        x = tokens + torch.where(is_reference, self.reference_view, self.other_view)
        padding = (~view_mask).repeat_interleave(count, dim=1)  # [B, V * G], True = ignore
        for per_view, cross_view in zip(self.per_view, self.cross_view, strict=True):
            x = per_view(x.reshape(batch * views, count, dim)).reshape(batch, views * count, dim)
            x = cross_view(x, src_key_padding_mask=padding).reshape(batch, views, count, dim)
        return self.norm(x)
