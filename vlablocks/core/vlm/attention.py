"""Attention-level access to the VLM: bidirectional attention among a group of tokens (OpenVLA-OFT's parallel
decoding), and each decoder layer's own keys and values for an expert that attends to them (pi0's shared attention).

OpenVLA-OFT decodes its action chunk in one pass with the action positions attending to each other: the prompt stays
causal, and every action position reads the whole prompt and every other action position. With A the set of
positions holding one of the group's tokens, the additive mask of one sample is

    M[i, j] = 0        if j == i, or key j is real (not padding) and (j <= i or (i in A and j in A))
            = -inf     otherwise (the dtype's most negative finite value)

(j == i: a padding position reads itself alone, so no real token's value leaks into it.)

It goes to the language model as a prepared 4-D mask (transformers returns such a mask as-is), with the 3-D rotary
positions computed from the 2-D padding mask beforehand (the pass's layout, vlm/layout.py; the model would otherwise
derive them from the mask it was given). Flash attention takes no custom mask, so it is refused with the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

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
    """The transformers model's kwargs (input_ids, attention_mask [B, L], position_ids: the rotary positions from the
    2-D padding mask, ...) with the attention mask replaced by `group_attention_mask`.

    model: the Qwen-VL base model (`ForConditionalGeneration.model`)."""
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"bidirectional action attention needs a custom attention mask, which {implementation} does not take; "
            "set framework.vlm.attn_implementation: sdpa"
        )
    mask = group_attention_mask(kwargs["input_ids"], kwargs["attention_mask"], token_ids, model.dtype)
    return {**kwargs, "attention_mask": mask}


@contextmanager
def captured_keys_values(vlm, detach: bool) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every VLM forward appends, per decoder layer l (in order), that layer's own keys and values
    as its attention projects them: (k_proj(x_l), v_proj(x_l)) reshaped to [B, kv_heads, L, head_dim], x_l the
    layer's normed input (before the rotary embedding). detach: the stop-gradient of knowledge insulation."""
    layers = language_layers(vlm)
    head_dim = attention_geometry(vlm)["vlm_head_dim"]
    found: list[tuple[torch.Tensor, torch.Tensor]] = []
    pending: dict[int, torch.Tensor] = {}

    def split(x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        x = x.view(batch, length, -1, head_dim).transpose(1, 2)
        return x.detach() if detach else x

    def keys(index: int, module, args, output: torch.Tensor) -> None:
        pending[index] = split(output)

    def values(index: int, module, args, output: torch.Tensor) -> None:
        found.append((pending.pop(index), split(output)))

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.self_attn.k_proj.register_forward_hook(partial(keys, index)))
        handles.append(layer.self_attn.v_proj.register_forward_hook(partial(values, index)))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def language_layers(vlm) -> torch.nn.ModuleList:
    """The decoder layers of a Qwen-VL backbone's language model."""
    return vlm.model.model.language_model.layers


def attention_geometry(vlm) -> dict[str, int]:
    """{"vlm_num_heads", "vlm_num_kv_heads", "vlm_head_dim", "vlm_num_layers"} of the language model."""
    text = vlm.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {
        "vlm_num_heads": text.num_attention_heads,
        "vlm_num_kv_heads": text.num_key_value_heads,
        "vlm_head_dim": head_dim,
        "vlm_num_layers": text.num_hidden_layers,
    }
