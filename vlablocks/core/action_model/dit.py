"""Diffusion-transformer building blocks: timestep embedding, attention with reusable context keys and
values, and an adaLN-Zero DiT block (self-attention, cross-attention to a context, MLP).

Cross-attention keys/values of a context are computed once (`DiTBlock.context`) and reused across
every integration step and every repeated noise draw: the VLM prefix never changes while sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.partitioned import whole


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding. t: [B] float (in step units) -> [B, dim]"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(-1) * freqs
    embedding = torch.cat([angles.cos(), angles.sin()], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEncoder(nn.Module):
    """t: [B] -> [B, dim]: sinusoid(t * scale) -> Linear -> SiLU -> Linear.

    `scale` maps the head's time unit to sinusoid steps (1000 for t in [0, 1], 1 for integer steps).
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t * self.scale, self.dim).to(self.mlp[0].weight.dtype))


@dataclass
class BlockContext:
    """Precomputed cross-attention inputs of one block.

    keys, values: [B, heads, L, head_dim]; mask: [B, L] bool, True where attention is allowed.
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor

    def repeat_interleave(self, repeats: int) -> BlockContext:
        """Each batch row repeated `repeats` times in place (row b -> rows b*r .. b*r + r - 1)."""
        if repeats == 1:
            return self
        return BlockContext(
            self.keys.repeat_interleave(repeats, dim=0),
            self.values.repeat_interleave(repeats, dim=0),
            self.mask.repeat_interleave(repeats, dim=0),
        )


class Attention(nn.Module):
    """Multi-head attention whose keys/values can be computed once and reused."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source: [B, L, dim] -> keys, values [B, heads, L, head_dim]"""
        return self._split(self.key(source)), self._split(self.value(source))

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, N, dim] attends to keys/values [B, heads, L, head_dim] (mask: [B, L] bool) -> [B, N, dim]"""
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(self._split(self.query(x)), keys, values, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(x.shape))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, dim] * (1 + scale [B, dim]) + shift [B, dim]"""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += g1 * SelfAttn(x); x += g2 * CrossAttn(x, context); x += g3 * MLP(x).

    Shifts, scales and gates come from the time embedding; gates start at zero so a fresh block is
    the identity (DiT's adaLN-Zero), which keeps deep stacks stable from the first step.
    `cross_gate_init` starts the cross-attention gate elsewhere: at 1 the block reads its context from
    the first step, so the loss's gradient reaches the context (and the VLM behind it) from the start
    instead of only as fast as a zero gate grows (docs/results/toy_results.md: why flow matching ignored language).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_gate_init: float = 0.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = Attention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim, elementwise_affine=False)
        self.cross_attn = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 9 * dim)
        with whole(self.modulation):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)
            self.modulation.bias[5 * dim : 6 * dim] = cross_gate_init  # chunk 5 of 9: the cross-attention gate

    def context(self, tokens: torch.Tensor, mask: torch.Tensor) -> BlockContext:
        """tokens: [B, L, dim], mask: [B, L] bool -> this block's cross-attention keys/values."""
        keys, values = self.cross_attn.keys_values(tokens)
        return BlockContext(keys, values, mask)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: BlockContext, concat_input: bool = False
    ) -> torch.Tensor:
        """x: [B, N, dim], temb: [B, dim] -> [B, N, dim].

        concat_input: the cross-attention context is [context, LayerNorm(x as it enters this block)]
        (StarVLA's `use_concat_cross_context`): the stream also re-reads its own block input.
        """
        mods = self.modulation(F.silu(temb)).chunk(9, dim=-1)
        block_input = x
        h = modulate(self.norm_self(x), mods[0], mods[1])
        x = x + mods[2].unsqueeze(1) * self.self_attn(h, *self.self_attn.keys_values(h))
        keys, values, mask = context.keys, context.values, context.mask
        if concat_input:
            own_keys, own_values = self.cross_attn.keys_values(self.norm_cross(block_input))
            keys, values = torch.cat([keys, own_keys], dim=2), torch.cat([values, own_values], dim=2)
            mask = torch.cat([mask, mask.new_ones(block_input.shape[:2])], dim=1)
        h = modulate(self.norm_cross(x), mods[3], mods[4])
        x = x + mods[5].unsqueeze(1) * self.cross_attn(h, keys, values, mask)
        h = modulate(self.norm_mlp(x), mods[6], mods[7])
        return x + mods[8].unsqueeze(1) * self.mlp(h)


class DiTOutput(nn.Module):
    """Final adaLN-modulated norm and projection. x: [B, N, dim], temb: [B, dim] -> [B, N, out_dim]"""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.modulation = nn.Linear(dim, 2 * dim)
        with whole(self.modulation):
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(temb)).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))
