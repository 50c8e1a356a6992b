"""Layerwise flow matching (StarVLA's LayerwiseFM): DiT block i cross-attends to VLM layer i of K.

The framework passes every hidden state of the VLM in `conditioning.layers`: num_vlm_layers + 1
tensors [B, L, cond_dim], index 0 being the input embeddings (transformers' `output_hidden_states`).
With K = `num_layers` DiT blocks:
    vl_layer_selection = "last"  -> layers[-K:]        (the K deepest decoder layers, in order)
    vl_layer_selection = "first" -> layers[1 : K + 1]  (the K shallowest decoder layers; embeddings skipped)
Block i reads selected layer i through its own LayerNorm + projection (layers differ in statistics).
use_concat_cross_context = true: block i's cross-attention context is [selected layer i, the action
stream as it enters block i] instead of the VLM layer alone (the seed's ablation axis).
Time convention, sampling and loss: as `flow_matching` (see that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.context import context_mask
from vlablocks.core.action_model.dit import BlockContext
from vlablocks.core.action_model.flow_matching import FlowMatchingHead
from vlablocks.core.registry import ACTION_MODELS


def select_layers(layers: list[torch.Tensor], count: int, selection: str) -> list[torch.Tensor]:
    """The `count` decoder layers a layerwise head reads from all hidden states (embeddings first)."""
    available = len(layers) - 1
    if count > available:
        raise ValueError(
            f"layerwise_flow_matching: num_layers={count} DiT blocks need {count} VLM layers, but conditioning.layers "
            f"holds {available} (+ embeddings); lower num_layers to <= {available}"
        )
    if selection == "first":
        return list(layers[1 : count + 1])
    if selection == "last":
        return list(layers[len(layers) - count :])
    raise ValueError(f"vl_layer_selection must be 'first' or 'last', got {selection!r}")


@ACTION_MODELS.register("layerwise_flow_matching")
class LayerwiseFlowMatchingHead(FlowMatchingHead):
    """Layerwise flow-matching DiT (StarVLA LayerwiseFM): block i cross-attends to one of K VLM layers."""

    @dataclass(frozen=True)
    class Config(FlowMatchingHead.Config):
        name: str = "layerwise_flow_matching"
        vl_layer_selection: Literal["first", "last"] = "last"
        use_concat_cross_context: bool = False

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        if config.vl_layer_selection not in ("first", "last"):
            raise ValueError(f"vl_layer_selection must be 'first' or 'last', got {config.vl_layer_selection!r}")
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        self.concat_cross_context = config.use_concat_cross_context

    def num_context_encoders(self) -> int:
        return self.config.num_layers

    def encode_context(self, conditioning: Conditioning) -> list[BlockContext]:
        """Block i's keys/values from selected VLM layer i. conditioning.layers: num_vlm_layers + 1 x [B, L, H]"""
        if not conditioning.layers:
            raise ValueError(
                "layerwise_flow_matching needs conditioning.layers (all VLM hidden states, num_layers + 1 tensors); "
                "have the framework request output_hidden_states"
            )
        selected = select_layers(conditioning.layers, self.config.num_layers, self.config.vl_layer_selection)
        contexts = []
        for encoder, block, layer in zip(self.context_encoders, self.blocks, selected, strict=True):
            tokens = encoder(layer, conditioning)
            contexts.append(block.context(tokens, context_mask(conditioning, tokens)))
        return contexts
