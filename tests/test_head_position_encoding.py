"""The heads' 2-D sin-cos code of the vision tokens' positions (`context_position_encoding: sincos2d`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from head_helpers import CONTINUOUS_HEADS, build, make_batch, make_conditioning, wake

from vlablocks.core.action_model.context import sincos_2d
from vlablocks.core.registry import ACTION_MODELS

# Heads that encode a context of their own (shared_attention_flow_matching reads the VLM's keys and refuses the code).
POSITION_HEADS = [
    name
    for name in CONTINUOUS_HEADS
    if "context_position_encoding" in {f.name for f in dataclasses.fields(ACTION_MODELS.entry(name).config_class)}
    and name != "shared_attention_flow_matching"
]


def test_sincos_2d_distinguishes_rows_and_columns():
    grid = torch.tensor([[r / 7, c / 7] for r in range(8) for c in range(8)])
    codes = sincos_2d(grid, 32)
    assert codes.shape == (64, 32) and codes.abs().max() <= 1.0
    distances = torch.cdist(codes, codes) + torch.eye(64) * 1e3
    assert distances.min() > 0.1  # every patch of an 8 x 8 grid gets its own code
    transposed = sincos_2d(grid.flip(-1), 32)
    assert not torch.allclose(codes, transposed)  # (r, c) and (c, r) differ


@pytest.mark.parametrize("name", POSITION_HEADS)
def test_position_encoding_makes_vision_token_positions_matter(name):
    _, _, state = make_batch()
    for encoding, should_change in (("sincos2d", True), ("none", False)):
        head = wake(build(name, context_position_encoding=encoding))
        conditioning = make_conditioning(head)
        reference = head.predict(conditioning, state, generator=torch.Generator().manual_seed(0))
        moved = conditioning.vision_positions.flip(1) * conditioning.vision_mask.unsqueeze(-1)
        shuffled = dataclasses.replace(conditioning, vision_positions=moved)
        changed = not torch.allclose(
            head.predict(shuffled, state, generator=torch.Generator().manual_seed(0)), reference
        )
        assert changed == should_change, (name, encoding)


@pytest.mark.parametrize("name", POSITION_HEADS)
def test_position_encoding_without_vision_positions_is_a_clear_error(name):
    head = build(name, context_position_encoding="sincos2d")
    conditioning = dataclasses.replace(make_conditioning(head), vision_positions=None)
    _, _, state = make_batch()
    with pytest.raises(ValueError, match="needs conditioning.vision_mask and conditioning.vision_positions"):
        head.predict(conditioning, state)


def test_the_shared_attention_expert_refuses_a_context_position_code():
    with pytest.raises(ValueError, match="context_position_encoding must be none"):
        build("shared_attention_flow_matching", context_position_encoding="sincos2d")
