"""Cross-attention fusion: each vision patch attends to the geometric tokens of its own view and the others.

    q = W_q LN(vision token)            k, v = W_k g, W_v g     (g: all geometric tokens of the sample)
    logits = q.k / sqrt(d) + bias       bias = -s_h * |p_q - p_k|^2 in its own view (distance in geometric
                                        cells; a learned per-head locality s_h), a learned per-head constant
                                        for other views (or masked out with attend_to: own_view)
    out = vision + gate * W_o attention          gate = sigmoid(W pooled instruction) per channel, or 1

The locality prior starts every patch looking at the geometry under it (aligned like `tokenwise`), while
attention may reach elsewhere and to the other cameras, which have no pixel correspondence. The
instruction gate lets language select which geometric channels reach the LLM per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.geometry.alignment import cell_centres
from vlablocks.core.geometry.fusion import Fusion
from vlablocks.core.geometry.tokens import GeometricTokens, check_views, pooled_instruction
from vlablocks.core.partitioned import whole
from vlablocks.core.registry import FUSIONS


def rank_in_sample(batch_index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] position of each token among its sample's tokens (in token order)."""
    one_hot = F.one_hot(batch_index, batch_size)
    return (one_hot.cumsum(0) - 1).gather(1, batch_index[:, None]).squeeze(1)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    """Each patch attends to geometric tokens of its view (locality prior) and the others; instruction gate."""

    @dataclass(frozen=True)
    class Config:
        name: str = "cross_attention"
        attention_dim: int = 128
        num_heads: int = 4
        attend_to: Literal["own_view", "all_views"] = "all_views"
        instruction_gate: bool = True  # per-sample channel gate from the pooled instruction embedding
        locality_init: float = 1.0  # initial s_h: logit penalty per squared geometric cell of distance

    def __init__(self, config: Config, *, vision_dim: int, geometric_dim: int) -> None:
        super().__init__(config, vision_dim=vision_dim, geometric_dim=geometric_dim)
        if config.attention_dim % config.num_heads:
            raise ValueError(
                f"cross_attention: attention_dim={config.attention_dim} must be divisible by num_heads={config.num_heads}"
            )
        if config.attend_to not in ("own_view", "all_views"):
            raise ValueError(f"cross_attention.attend_to must be 'own_view' or 'all_views', got {config.attend_to!r}")
        if config.locality_init <= 0:
            raise ValueError(f"cross_attention.locality_init must be > 0, got {config.locality_init}")
        self.num_heads = config.num_heads
        self.norm = nn.LayerNorm(vision_dim)
        self.query = nn.Linear(vision_dim, config.attention_dim)
        self.key = nn.Linear(geometric_dim, config.attention_dim)
        self.value = nn.Linear(geometric_dim, config.attention_dim)
        self.out = nn.Linear(config.attention_dim, vision_dim)
        with whole(self.out):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.out.weight)  # identity at step 0 (see fusion.py)
            nn.init.zeros_(self.out.bias)
        self.log_locality = nn.Parameter(torch.full((config.num_heads,), math.log(config.locality_init)))
        self.cross_view_bias = nn.Parameter(torch.zeros(config.num_heads))
        self.gate = None
        if config.instruction_gate:
            self.gate = nn.Linear(vision_dim, vision_dim)
            with whole(self.gate):
                nn.init.zeros_(self.gate.weight)  # starts at sigmoid(0) = 0.5 for every instruction
                nn.init.zeros_(self.gate.bias)

    def forward(self, image_embeds: torch.Tensor, info, geometry: GeometricTokens) -> torch.Tensor:
        """image_embeds: [N, H] -> [N, H]."""
        self.check_inputs(image_embeds, geometry)
        check_views(geometry, info)
        batch, views, grid_h, grid_w, _ = geometry.tokens.shape
        cells = grid_h * grid_w
        heads, width = self.num_heads, self.config.attention_dim // self.num_heads
        dtype = self.query.weight.dtype  # the fusion's own dtype: a bf16 VLM may feed it outside autocast

        # Queries, padded per sample: [B, heads, Lq, width].
        rank = rank_in_sample(info.batch_index, batch)
        length = int(rank.max()) + 1 if rank.numel() else 1
        queries = self.query(self.norm(image_embeds.to(dtype)))
        padded = queries.new_zeros(batch, length, self.config.attention_dim).index_put(
            (info.batch_index, rank), queries
        )
        q = padded.view(batch, length, heads, width).transpose(1, 2)

        # Keys/values: every cell of every view of the sample, view-major: [B, heads, V * cells, width].
        tokens = geometry.tokens.to(dtype).reshape(batch, views * cells, -1)
        k = self.key(tokens).view(batch, -1, heads, width).transpose(1, 2)
        v = self.value(tokens).view(batch, -1, heads, width).transpose(1, 2)

        q_pos = torch.zeros(batch, length, 2, dtype=dtype, device=q.device).index_put(
            (info.batch_index, rank), info.positions.to(dtype)
        )
        q_view = torch.zeros(batch, length, dtype=torch.long, device=q.device).index_put(
            (info.batch_index, rank), info.view_index
        )
        k_pos = cell_centres(grid_h, grid_w, q.device).to(dtype).repeat(views, 1)  # [V * cells, 2]
        k_view = torch.arange(views, device=q.device).repeat_interleave(cells)  # [V * cells]
        scale = torch.tensor([grid_h, grid_w], device=q.device, dtype=dtype)
        distance = (((q_pos[:, :, None] - k_pos[None, None]) * scale) ** 2).sum(-1)  # [B, Lq, K] in cells^2
        same_view = q_view[:, :, None] == k_view[None, None]  # [B, Lq, K]
        locality = self.log_locality.exp().to(dtype)[None, :, None, None]
        bias = torch.where(
            same_view[:, None], -locality * distance[:, None], self.cross_view_bias.to(dtype)[None, :, None, None]
        )
        blocked = ~geometry.view_mask.repeat_interleave(cells, dim=1)[:, None, None, :]  # padded views
        if self.config.attend_to == "own_view":
            blocked = blocked | ~same_view[:, None]
        bias = bias.to(q.dtype).masked_fill(blocked, torch.finfo(q.dtype).min)  # q is bf16 under autocast

        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, heads, Lq, width]
        attended = attended.transpose(1, 2).reshape(batch, length, -1)[info.batch_index, rank]  # [N, attention_dim]
        update = self.out(attended)
        if self.gate is not None:
            update = update * torch.sigmoid(self.gate(pooled_instruction(info).to(dtype)))[info.batch_index]
        return image_embeds + update.to(image_embeds.dtype)
