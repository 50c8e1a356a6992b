"""Padding-aware helpers shared by the action heads: input checks, target filling, masked means.

Two kinds of padding: chunk steps past the episode end (`action_is_pad` [B, T], True = padded) and, in
cross-embodiment mixtures, action dimensions a smaller robot does not have (`action_dim_mask` [B, D], True = a
real dimension; None = every dimension is real). A head passes both to `hold_last_valid` and `masked_mean`, so
padded dimensions neither reach its input as targets nor its loss.
"""

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
    action_dim_mask: torch.Tensor | None = None,
) -> None:
    """Raises a one-line ValueError naming the head when a training batch has the wrong shapes.

    actions: [B, T, D], action_is_pad: [B, T] bool, state: [B, S] or None, action_dim_mask: [B, D] bool or None
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
    if action_dim_mask is not None and (
        action_dim_mask.shape != (actions.shape[0], action_dim) or action_dim_mask.dtype != torch.bool
    ):
        raise ValueError(
            f"{name}: action_dim_mask must be a bool tensor [B, D] = {[actions.shape[0], action_dim]}, "
            f"got {action_dim_mask.dtype} {list(action_dim_mask.shape)}"
        )


def valid_scalars(action_is_pad: torch.Tensor, action_dim_mask: torch.Tensor | None, action_dim: int) -> torch.Tensor:
    """[B, T, D] bool: True at action scalars that carry a loss (a real step and a real dimension).

    action_is_pad: [B, T] bool (True = padded step), action_dim_mask: [B, D] bool (True = real dim) or None
    """
    valid = (~action_is_pad).unsqueeze(-1).expand(*action_is_pad.shape, action_dim)
    if action_dim_mask is None:
        return valid
    return valid & action_dim_mask.unsqueeze(1)


def hold_last_valid(
    actions: torch.Tensor, action_is_pad: torch.Tensor, action_dim_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Replaces each padded step by the last valid step before it (zeros when there is none), and every padded
    dimension by zero.

    actions: [B, T, D], action_is_pad: [B, T] bool, action_dim_mask: [B, D] bool or None -> [B, T, D]

    Generative heads noise the whole chunk and mix its steps (attention, flattened MLPs), so padded
    targets would leak into the loss of valid steps through the network input. Filling them from the
    valid steps makes the loss independent of padded values while keeping a realistic trajectory
    (datasets pad a finished episode by holding its last action). Padded dimensions become exactly zero (a
    `where`, not a product), so whatever a sample holds there never reaches the network nor the loss.
    """
    horizon = actions.shape[1]
    steps = torch.arange(horizon, device=actions.device).expand_as(action_is_pad)
    source = torch.where(action_is_pad, torch.full_like(steps, -1), steps).cummax(dim=1).values
    has_source = source >= 0
    gathered = actions.gather(1, source.clamp(min=0).unsqueeze(-1).expand_as(actions))
    filled = torch.where(has_source.unsqueeze(-1), gathered, torch.zeros_like(actions))
    if action_dim_mask is None:
        return filled
    return torch.where(action_dim_mask.unsqueeze(1), filled, torch.zeros_like(filled))


def masked_mean(
    values: torch.Tensor, action_is_pad: torch.Tensor, action_dim_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of `values` over valid (unpadded) chunk steps and real action dimensions.

    values: [B, T, D] (or [B, T] without a dim mask), action_is_pad: [B, T] bool, action_dim_mask: [B, D] bool
    or None -> scalar. All-padded batches give 0.
    """
    if values.ndim == 3:
        valid = valid_scalars(action_is_pad, action_dim_mask, values.shape[-1])
    elif action_dim_mask is None:
        valid = ~action_is_pad
    else:
        raise ValueError(f"masked_mean: an action_dim_mask needs values [B, T, D], got {list(values.shape)}")
    # where, not a product: a non-finite padded value must not reach the loss (0 * nan = nan).
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp(min=1)
