"""The VLM's output as an action head's conditioning: shared by every framework whose head reads VLM features."""

from __future__ import annotations

from vlablocks.core.action_model.base import Conditioning


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
