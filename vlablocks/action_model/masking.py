"""Padding-aware helpers shared by the action heads: input checks, target filling, masked means."""

from __future__ import annotations

import torch


def check_action_batch(
    name: str,
    actions: torch.Tensor,
    action_is_pad: torch.Tensor,
    state: torch.Tensor | None,
    *,
    action_horizon: int,
    action_dim: int,
    state_dim: int,
) -> None:
    """Raises a one-line ValueError naming the head when a training batch has the wrong shapes.

    actions: [B, T, D], action_is_pad: [B, T] bool, state: [B, S] or None
    """
    if actions.ndim != 3 or tuple(actions.shape[1:]) != (action_horizon, action_dim):
        raise ValueError(
            f"{name}: actions must be [B, {action_horizon}, {action_dim}] (platform action_horizon, action_dim), "
            f"got {list(actions.shape)}"
        )
    if action_is_pad.shape != actions.shape[:2] or action_is_pad.dtype != torch.bool:
        raise ValueError(
            f"{name}: action_is_pad must be a bool tensor [B, T] = {list(actions.shape[:2])}, "
            f"got {action_is_pad.dtype} {list(action_is_pad.shape)}"
        )
    if state is not None and (state.ndim != 2 or state.shape != (actions.shape[0], state_dim)):
        raise ValueError(f"{name}: state must be [B, {state_dim}] (platform state_dim), got {list(state.shape)}")


def hold_last_valid(actions: torch.Tensor, action_is_pad: torch.Tensor) -> torch.Tensor:
    """Replaces each padded step by the last valid step before it (zeros when there is none).

    actions: [B, T, D], action_is_pad: [B, T] bool -> [B, T, D]

    Generative heads noise the whole chunk and mix its steps (attention, flattened MLPs), so padded
    targets would leak into the loss of valid steps through the network input. Filling them from the
    valid steps makes the loss independent of padded values while keeping a realistic trajectory
    (datasets pad a finished episode by holding its last action).
    """
    horizon = actions.shape[1]
    steps = torch.arange(horizon, device=actions.device).expand_as(action_is_pad)
    source = torch.where(action_is_pad, torch.full_like(steps, -1), steps).cummax(dim=1).values
    has_source = source >= 0
    gathered = actions.gather(1, source.clamp(min=0).unsqueeze(-1).expand_as(actions))
    return torch.where(has_source.unsqueeze(-1), gathered, torch.zeros_like(actions))


def masked_mean(values: torch.Tensor, action_is_pad: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over valid (unpadded) chunk steps.

    values: [B, T, D] (or [B, T]), action_is_pad: [B, T] bool -> scalar. All-padded batches give 0.
    """
    valid = ~action_is_pad
    if values.ndim == 3:
        valid = valid.unsqueeze(-1).expand_as(values)
    # where, not a product: a non-finite padded value must not reach the loss (0 * nan = nan).
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp(min=1)
