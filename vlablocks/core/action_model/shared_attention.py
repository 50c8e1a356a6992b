"""pi0's action expert with shared attention: expert layer l attends to the VLM's own layer-l keys and values.

In pi0 the prefix (images, prompt) and the suffix (state, noisy actions) are one sequence through two sets of
transformer weights: at every layer the expert's queries attend to the VLM's keys/values of that layer and to the
expert's own. Here, with K_l, V_l [B, kv_heads, L, head_dim] the VLM's layer-l keys and values of the prompt
(vlablocks/core/vlm/attention.py `captured_keys_values`, stop-gradient under knowledge insulation) and h the
expert stream after its adaLN-modulated norm, expert layer l is

    q = W_q h,   K = [K_l ; W_k h],   V = [V_l ; W_v h]            (the VLM's kv heads repeated to its query heads)
    x <- x + g_attn * W_o softmax(q K^T / sqrt(head_dim) + mask) V    (mask: the prompt's real positions, all of the
    x <- x + g_mlp * MLP(modulate(LN(x)))                               expert's own)

with the VLM's head count, kv-head count and head size, so the expert's queries live in the VLM's key space; the
last `num_layers` VLM layers are read (all of them when num_layers equals the VLM's depth, as in pi0). Time
convention, loss and sampling: `flow_matching`'s. Simplified against pi0 (docs/fidelity.md): the VLM's keys are
taken before its rotary embedding (the expert has no rotary positions), and the expert's time enters by adaLN, as
pi0.5 does, rather than concatenated into the action tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.dit import BlockContext, modulate
from vlablocks.core.action_model.flow_matching import FlowMatchingHead
from vlablocks.core.partitioned import whole
from vlablocks.core.registry import ACTION_MODELS


class SharedAttentionBlock(nn.Module):
    """Expert layer l (module docstring): adaLN-Zero, one attention over [VLM layer-l keys/values; its own], MLP."""

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, mlp_ratio: float, gate_init: float
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"vlm_num_heads={num_heads} must be a multiple of vlm_num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False)
        self.query = nn.Linear(dim, num_heads * head_dim)
        self.key = nn.Linear(dim, num_kv_heads * head_dim)
        self.value = nn.Linear(dim, num_kv_heads * head_dim)
        self.out = nn.Linear(num_heads * head_dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)
        with whole(self.modulation):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)
            self.modulation.bias[2 * dim : 3 * dim] = gate_init  # chunk 2 of 6: the attention gate

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: BlockContext, concat_input: bool = False):
        """x: [B, N, dim], temb: [B, dim], context: the VLM's layer keys/values [B, kv, L, hd] + mask [B, L]."""
        mods = self.modulation(F.silu(temb)).chunk(6, dim=-1)
        h = modulate(self.norm_attn(x), mods[0], mods[1])
        query = self._heads(self.query(h), self.num_heads)
        keys = torch.cat([context.keys.to(h.dtype), self._heads(self.key(h), self.num_kv_heads)], dim=2)
        values = torch.cat([context.values.to(h.dtype), self._heads(self.value(h), self.num_kv_heads)], dim=2)
        repeat = self.num_heads // self.num_kv_heads
        keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
        mask = torch.cat([context.mask, context.mask.new_ones(x.shape[:2])], dim=1)[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        x = x + mods[2].unsqueeze(1) * self.out(attended.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        h = modulate(self.norm_mlp(x), mods[3], mods[4])
        return x + mods[5].unsqueeze(1) * self.mlp(h)


@ACTION_MODELS.register("shared_attention_flow_matching")
class SharedAttentionFlowHead(FlowMatchingHead):
    """pi0's expert: flow matching whose layer l attends to the VLM's layer-l keys and values (module docstring).

    Built by a framework with `expert_attention: every_layer`, which fills in the VLM's attention geometry."""

    @dataclass(frozen=True)
    class Config(FlowMatchingHead.Config):
        name: str = "shared_attention_flow_matching"
        cross_attention_gate_init: float = 1.0  # the attention gate: every layer reads the VLM from step one
        vlm_num_heads: int = 0  # the VLM's query heads, kv heads, head size and depth (set by the framework)
        vlm_num_kv_heads: int = 0
        vlm_head_dim: int = 0
        vlm_num_layers: int = 0

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        if min(config.vlm_num_heads, config.vlm_num_kv_heads, config.vlm_head_dim, config.vlm_num_layers) < 1:
            raise ValueError(
                "shared_attention_flow_matching needs the VLM's attention geometry: build it through a framework "
                "with expert_attention: every_layer"
            )
        if config.context_position_encoding != "none":
            raise ValueError(
                "shared_attention_flow_matching reads the VLM's own keys, which carry the VLM's positions: "
                "context_position_encoding must be none"
            )
        if config.num_layers > config.vlm_num_layers:
            raise ValueError(
                f"shared_attention_flow_matching: num_layers={config.num_layers} expert layers read one VLM layer "
                f"each, but the VLM has {config.vlm_num_layers}; lower num_layers"
            )
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        self.blocks = nn.ModuleList(
            SharedAttentionBlock(
                config.hidden_dim,
                config.vlm_num_heads,
                config.vlm_num_kv_heads,
                config.vlm_head_dim,
                config.mlp_ratio,
                config.cross_attention_gate_init,
            )
            for _ in range(config.num_layers)
        )

    def num_context_encoders(self) -> int:
        return 0  # the VLM's own keys and values are the context: nothing to project

    def encode_context(self, conditioning: Conditioning) -> list[BlockContext]:
        """Expert layer i reads the i-th of the VLM's last `num_layers` layers' keys/values."""
        pairs = conditioning.layer_keys_values
        if not pairs or len(pairs) != self.config.vlm_num_layers:
            raise ValueError(
                "shared_attention_flow_matching needs conditioning.layer_keys_values (one (keys, values) per VLM "
                f"layer, {self.config.vlm_num_layers}), got {len(pairs or [])}: encode under captured_keys_values"
            )
        if conditioning.mask is None:
            raise ValueError(
                "shared_attention_flow_matching needs conditioning.mask [B, L] (the prompt's real positions)"
            )
        mask = conditioning.mask.bool()
        return [BlockContext(keys, values, mask) for keys, values in pairs[-self.config.num_layers :]]
