"""Bidirectional attention among a group of tokens in a causal VLM (OpenVLA-OFT's parallel decoding).

OpenVLA-OFT decodes its action chunk in one pass with the action positions attending to each other: the prompt stays
causal, and every action position reads the whole prompt and every other action position. With A the set of
positions holding one of the group's tokens, the additive mask of one sample is

    M[i, j] = 0        if j == i, or key j is real (not padding) and (j <= i or (i in A and j in A))
            = -inf     otherwise (the dtype's most negative finite value)

(j == i: a padding position reads itself alone, so no real token's value leaks into it.)

It goes to the language model as a prepared 4-D mask (transformers returns such a mask as-is), with the 3-D rotary
positions computed from the 2-D padding mask beforehand (the model would otherwise derive them from the mask it was
given). Flash attention takes no custom mask, so it is refused with the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_attention_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_ids: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """input_ids, attention_mask: [B, L] -> additive mask [B, 1, L, L] in `dtype` (M above)."""
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    group = torch.isin(input_ids, torch.tensor(list(token_ids), device=input_ids.device))  # [B, L]
    allowed = (causal[None] | (group[:, :, None] & group[:, None, :])) & attention_mask.bool()[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=input_ids.device)  # a padding row reads itself, nothing else
    mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def with_group_attention(model, kwargs: dict, token_ids: Sequence[int]) -> dict:
    """The transformers model's kwargs (input_ids, attention_mask [B, L], image_grid_thw, mm_token_type_ids) with the
    attention mask replaced by `group_attention_mask` and the rotary `position_ids` computed from the 2-D mask.

    model: the Qwen-VL base model (`ForConditionalGeneration.model`)."""
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"bidirectional action attention needs a custom attention mask, which {implementation} does not take; "
            "set framework.vlm.attn_implementation: sdpa"
        )
    position_ids = model.compute_3d_position_ids(
        input_ids=kwargs["input_ids"],
        inputs_embeds=None,
        image_grid_thw=kwargs["image_grid_thw"],
        video_grid_thw=None,
        attention_mask=kwargs["attention_mask"],
        cache=None,
        mm_token_type_ids=kwargs["mm_token_type_ids"],
    )
    mask = group_attention_mask(kwargs["input_ids"], kwargs["attention_mask"], token_ids, model.dtype)
    return {**kwargs, "attention_mask": mask, "position_ids": position_ids}
