"""The contract every action head keeps, and the conditioning it receives from a framework."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class Conditioning:
    """What a framework hands an action head.

    tokens:           [B, L, H]  context tokens (e.g. the VLM's last hidden state, or the hidden
                                 states of the action-query tokens for parallel decoding)
    mask:             [B, L]     bool, True where a token is real (not padding)
    layers:           list of K tensors [B, L, H]: per-layer hidden states, for layerwise heads
    vision_mask:      [B, L]     bool, True at vision-token positions (optional)
    vision_positions: [B, L, 2]  float (row, col) of each vision token's patch centre in its image,
                                 in [0, 1]; 0 elsewhere (optional; used by 2-D position encodings)
    layer_keys_values: one (keys, values) [B, kv_heads, L, head_dim] per VLM decoder layer, as its attention
                       projects them (optional; pi0's shared-attention expert reads them)
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    layers: list[torch.Tensor] | None = None
    vision_mask: torch.Tensor | None = None
    vision_positions: torch.Tensor | None = None
    layer_keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]


class ActionHead(nn.Module):
    """Base class of registered action heads.

    Built as `Head(config, action_horizon=T, action_dim=D, state_dim=S, cond_dim=H)`. Actions are
    normalized (the framework owns normalization); the loss excludes padded chunk steps and padded
    action dimensions (`action_dim_mask`, cross-embodiment mixtures).
    """

    def __init__(self, config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.config = config
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.state_dim = state_dim
        self.cond_dim = cond_dim

    def check_batch(
        self,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor,
        state: torch.Tensor | None,
        action_dim_mask: torch.Tensor | None = None,
    ) -> None:
        """Raises a ValueError naming expected vs got when the batch does not fit this head."""
        from vlablocks.core.action_model.masking import check_action_batch

        check_action_batch(
            self.config.name,
            actions,
            action_is_pad,
            state,
            action_horizon=self.action_horizon,
            action_dim=self.action_dim,
            state_dim=self.state_dim,
            action_dim_mask=action_dim_mask,
        )

    def compute_loss(
        self,
        conditioning: Conditioning,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        action_dim_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """actions: [B, T, D], action_is_pad: [B, T] bool, state: [B, S] -> {"loss": scalar, ...}

        Stochastic heads draw their training noise from `generator` when given (global RNG otherwise).
        action_dim_mask: [B, D] bool, True at each sample's real action dimensions (cross-embodiment mixtures pad
        smaller robots with zeros); None: all real. Padded dimensions get exactly zero gradient and no loss.
        """
        raise NotImplementedError

    def predict(
        self, conditioning: Conditioning, state: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """-> normalized actions [B, T, D]; sampling is deterministic for a seeded `generator`."""
        raise NotImplementedError


@runtime_checkable
class SamplesFromNoise(Protocol):
    """An action head whose `predict` starts from a Gaussian chunk it draws (flow matching, DDIM): the draw can be made
    beforehand (`draw_noise`, on the host, from a seeded generator) and the sampling run from it (`reconstruct`), so
    that `reconstruct(c, draw_noise(B, g, device), state) == predict(c, state, generator=g)`. Framework.prepare_sampling
    draws it before a compiled graph, which cannot trace a generator."""

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor: ...

    def reconstruct(
        self, conditioning: Conditioning, noise: torch.Tensor, state: torch.Tensor | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class ReadsVocabulary(Protocol):
    """An action head whose scores are the VLM's own (its LM head over reserved tokens: `token_bins`): the framework
    binds it to the backbone once both are built."""

    def bind_vlm(self, vlm) -> None: ...
