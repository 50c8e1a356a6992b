"""The VLM's output as an action head's conditioning: shared by every framework whose head reads VLM features."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vlablocks.core.action_model.base import ActionHead, Conditioning, SamplesFromNoise
from vlablocks.core.vlm.attention import attention_geometry, captured_keys_values

EXPERT_ATTENTION = ("last_layer", "every_layer")


def vlm_conditioning(out, insulate: bool = False) -> Conditioning:
    """VLMOutput -> the head's Conditioning (all layers, padding mask, vision-token positions).

    insulate: the hidden states are detached, so the head's loss does not train the VLM (knowledge insulation).
    """
    cut = (lambda x: x.detach()) if insulate else (lambda x: x)
    return Conditioning(
        tokens=cut(out.last_hidden_state),
        mask=out.attention_mask.bool(),
        layers=[cut(layer) for layer in out.hidden_states],
        vision_mask=out.vision_mask,
        vision_positions=out.vision_positions,
    )


def expert_head_options(owner: str, options: dict, expert_attention: str, vlm) -> dict:
    """The action expert's options: as configured for `last_layer` (the head cross-attends to the VLM's hidden
    states); for `every_layer` (pi0's shared attention) the flow_matching options on the shared-attention head, with
    the VLM's attention geometry (vlablocks/core/action_model/shared_attention.py)."""
    if expert_attention not in EXPERT_ATTENTION:
        raise ValueError(
            f"{owner}: expert_attention must be one of {', '.join(EXPERT_ATTENTION)}, got {expert_attention!r}"
        )
    if expert_attention == "last_layer":
        return options
    if options.get("name") != "flow_matching":
        raise ValueError(
            f"{owner}: expert_attention: every_layer builds pi0's shared-attention expert from flow_matching options; "
            f"action_model.name is {options.get('name')!r}: set it to flow_matching"
        )
    # The expert reads the VLM's own keys (they carry its positions): the flow head's context position code, which
    # the toy recipes set for the cross-attending expert, has nothing to apply to.
    shared = {**options, "name": "shared_attention_flow_matching", "context_position_encoding": "none"}
    return {**shared, **attention_geometry(vlm)}


@contextmanager
def expert_keys_values(vlm, expert_attention: str, insulate: bool) -> Iterator[list | None]:
    """Around a VLM forward: collects every decoder layer's keys and values for an `every_layer` expert (detached
    when `insulate`: knowledge insulation stops the gradient at each of them); None for `last_layer`."""
    if expert_attention != "every_layer":
        yield None
        return
    with captured_keys_values(vlm, detach=insulate) as pairs:
        yield pairs


def start_noise(head: ActionHead, batch_size: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """A sampling head's starting noise [B, T, D] (flow matching, DDIM), drawn from `generator` exactly as its `predict`
    draws it (for Framework.prepare_sampling); None for a head that draws none."""
    if not isinstance(head, SamplesFromNoise):
        return None
    return head.draw_noise(batch_size, generator, next(head.parameters()).device)


def predict_actions(
    head: ActionHead,
    conditioning: Conditioning,
    state: torch.Tensor | None,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """head.predict -> normalized actions [B, T, D]; from `noise` [B, T, D] when it was drawn beforehand (`start_noise`,
    Batch.noise): the head's `reconstruct`, the same sampling from a given start."""
    if noise is None:
        return head.predict(conditioning, state, generator=generator)
    return head.reconstruct(conditioning, noise, state)
