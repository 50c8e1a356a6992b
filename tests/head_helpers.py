"""Shared action-head test helpers: tiny heads of every registered kind, conditioning and batches to feed them.

Options named in TINY are shrunk when the head's Config has them; heads needing a fixed number of context
tokens expose `num_query_tokens`.
"""

from __future__ import annotations

import dataclasses

import torch

from vlablocks.core.action_model.base import ActionHead, Conditioning, ReadsVocabulary
from vlablocks.core.action_model.shared_attention import SharedAttentionFlowHead
from vlablocks.core.build import build as build_component
from vlablocks.core.registry import ACTION_MODELS

B, T, D, S, H, L, VLM_LAYERS = 4, 4, 3, 5, 16, 6, 3
SIZES = {"action_horizon": T, "action_dim": D, "state_dim": S, "cond_dim": H}
TINY = {
    "hidden_dim": 32,
    "num_layers": 2,
    "num_heads": 2,
    "num_blocks": 2,
    "num_pool_queries": 2,
    "num_inference_steps": 4,
    "num_train_timesteps": 20,
    "repeated_diffusion_steps": 2,
    # shared_attention_flow_matching: the VLM's attention geometry (a framework fills it in)
    "vlm_num_heads": 2,
    "vlm_num_kv_heads": 1,
    "vlm_head_dim": 8,
    "vlm_num_layers": VLM_LAYERS,
}
# The overfit test uses a little more width and more noise draws per sample (less gradient noise).
OVERFIT_OPTIONS = {"hidden_dim": 64, "repeated_diffusion_steps": 4}
OVERFIT_OPTIONS_PER_HEAD = {"diffusion": {"repeated_diffusion_steps": 8}}
OVERFIT_STEPS = 300

# Heads scored by the VLM's own LM head (ReadsVocabulary: token_bins) have no standalone contract: tests/test_token_bins.py.
CONTINUOUS_HEADS = [
    entry.name
    for entry in ACTION_MODELS.entries()
    if isinstance(entry.obj, type) and issubclass(entry.obj, ActionHead) and not issubclass(entry.obj, ReadsVocabulary)
]


def build(name: str, seed: int = 0, **overrides) -> ActionHead:
    fields = {f.name for f in dataclasses.fields(ACTION_MODELS.entry(name).config_class)}
    options = {"name": name, **{k: v for k, v in TINY.items() if k in fields}, **overrides}
    torch.manual_seed(seed)
    return build_component(ACTION_MODELS, options, **SIZES)


def make_conditioning(head: ActionHead, seed: int = 1) -> Conditioning:
    """Context of L tokens (the last one of sample 0 padded, the first 4 vision tokens), all VLM layers."""
    g = torch.Generator().manual_seed(seed)
    length = getattr(head, "num_query_tokens", L)
    layers = [torch.randn(B, length, H, generator=g) for _ in range(VLM_LAYERS + 1)]
    mask = torch.ones(B, length, dtype=torch.bool)
    if length > 1:
        mask[0, -1] = False
    vision_mask = torch.zeros(B, length, dtype=torch.bool)
    vision_mask[:, : min(4, length)] = True
    positions = torch.rand(B, length, 2, generator=g) * vision_mask.unsqueeze(-1)
    keys_values = None
    if isinstance(head.config, SharedAttentionFlowHead.Config):  # each VLM layer's own keys and values
        shape = (B, head.config.vlm_num_kv_heads, length, head.config.vlm_head_dim)
        keys_values = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(VLM_LAYERS)]
    return Conditioning(layers[-1], mask, layers, vision_mask, positions, keys_values)


def wake(head: ActionHead, seed: int = 5) -> ActionHead:
    """Gives zero-initialized parameters (adaLN-Zero gates, FiLM) random values: a fresh DiT block is
    the identity, so context-dependence tests need a head whose blocks already do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.3)
    return head


def make_batch(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """actions [B, T, D] in [-1, 1], action_is_pad [B, T] (samples 1 and 2 end padded), state [B, S]."""
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(B, T, D, generator=g) * 2 - 1
    is_pad = torch.zeros(B, T, dtype=torch.bool)
    is_pad[1, -2:] = True
    is_pad[2, -1] = True
    return actions, is_pad, torch.randn(B, S, generator=g)


def seeded_loss(head, conditioning, actions, is_pad, state, seed: int = 7, draws: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    losses = [head.compute_loss(conditioning, actions, is_pad, state, generator=g)["loss"] for _ in range(draws)]
    return torch.stack(losses).mean()
