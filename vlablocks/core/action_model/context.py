"""The cross-attention context of a head: VLM tokens projected to the head width, with an optional
2-D sin-cos position encoding added to the vision tokens.

Why the position encoding: Qwen-VL's vision and text paths carry position only through rotary
attention, so a VLM trained from scratch (or a small one) holds little absolute position in its token
values. A head that cross-attends to those values cannot tell where a patch is unless it is told;
`sincos2d` adds that information from `Conditioning.vision_positions`, only at vision tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.vlm.vision import sincos_2d as vision_sincos_2d

ContextPositionEncoding = Literal["none", "sincos2d"]

# Positions in [0, 1] are stretched to a 100-cell grid: the fastest frequency then resolves about 1%
# of the image (finer than any patch grid in use) and the slowest stays monotonic over the image.
POSITION_GRID = 100.0


def sincos_2d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions: [..., 2] (row, col) floats in [0, 1] -> [..., dim] fixed 2-D sin-cos code (the VLM's
    encoding of the same layout, applied on a POSITION_GRID-cell grid)."""
    return vision_sincos_2d(positions.float() * POSITION_GRID, dim).to(positions.dtype)


def context_mask(conditioning: Conditioning, tokens: torch.Tensor) -> torch.Tensor:
    """[B, L] bool, True where the head may attend. A row with no real token is opened entirely so
    attention stays finite (such a row carries no information either way)."""
    batch, length = tokens.shape[:2]
    if conditioning.mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
    mask = conditioning.mask.to(device=tokens.device, dtype=torch.bool)
    if mask.shape != (batch, length):
        raise ValueError(f"conditioning.mask must be [B, L] = {[batch, length]}, got {list(mask.shape)}")
    return mask | ~mask.any(dim=1, keepdim=True)


class ContextEncoder(nn.Module):
    """LayerNorm -> Linear(cond_dim -> hidden_dim) -> + sincos2d at vision tokens (optional).

    tokens: [B, L, cond_dim] -> [B, L, hidden_dim]
    """

    def __init__(self, cond_dim: int, hidden_dim: int, position_encoding: ContextPositionEncoding = "none") -> None:
        super().__init__()
        if position_encoding not in ("none", "sincos2d"):
            raise ValueError(f"context_position_encoding must be 'none' or 'sincos2d', got {position_encoding!r}")
        if position_encoding == "sincos2d" and hidden_dim % 4 != 0:
            raise ValueError(f"context_position_encoding=sincos2d needs hidden_dim divisible by 4, got {hidden_dim}")
        self.position_encoding = position_encoding
        self.hidden_dim = hidden_dim
        self.norm = nn.LayerNorm(cond_dim)
        self.proj = nn.Linear(cond_dim, hidden_dim)

    def forward(self, tokens: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        if tokens.shape[-1] != self.norm.normalized_shape[0]:
            raise ValueError(
                f"context tokens must have width cond_dim={self.norm.normalized_shape[0]}, got {list(tokens.shape)}"
            )
        x = self.proj(self.norm(tokens.to(self.proj.weight.dtype)))  # e.g. a bf16 VLM feeding an fp32 head
        if self.position_encoding == "sincos2d":
            x = x + self.vision_position_encoding(conditioning, x)
        return x

    def vision_position_encoding(self, conditioning: Conditioning, x: torch.Tensor) -> torch.Tensor:
        """[B, L, hidden_dim]: sincos_2d(vision_positions) at vision tokens, 0 elsewhere."""
        if conditioning.vision_mask is None or conditioning.vision_positions is None:
            raise ValueError(
                "context_position_encoding=sincos2d needs conditioning.vision_mask and "
                "conditioning.vision_positions; have the framework provide them or set context_position_encoding: none"
            )
        positions = conditioning.vision_positions.to(device=x.device, dtype=x.dtype)
        if positions.shape != (*x.shape[:2], 2):
            raise ValueError(
                f"conditioning.vision_positions must be [B, L, 2] = {[*x.shape[:2], 2]}, got {list(positions.shape)}"
            )
        vision = conditioning.vision_mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return sincos_2d(positions, self.hidden_dim) * vision
