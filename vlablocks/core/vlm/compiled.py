"""What a VLM backbone needs before its passes run inside one torch.compile graph (Policy.compile), beyond the
precomputed layout (vlm/layout.py):

- the vision tower's packed attention. Qwen-VL packs every view (and, in windowed blocks, every window) into one
  sequence with boundaries `cu_seqlens`. Under SDPA or eager attention transformers splits it with
  `cu_seqlens.tolist()`, a host read and a graph break in every vision block; only implementations whose name says
  "flash" take the boundaries as a tensor. `PACKED_SDPA` is registered under such a name and runs SDPA once over the
  whole sequence with a block-diagonal mask built from the boundaries on the device: the same attention (a query
  attends to its own segment's keys only), in one traceable call.
- the language model's output-capturing hooks (every layer's hidden states), which transformers installs on the first
  pass under a threading lock that dynamo cannot trace: installed here, before the first compiled call.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# The name routes transformers' vision attention to the packed (cu_seqlens) call; the kernel is SDPA, not flash-attn.
PACKED_SDPA = "packed_sdpa_on_the_flash_route"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query, key, value: [1, heads, N, d], S segments packed along N; cu_seq_lens_q: [S + 1] their boundaries
    -> ([1, N, heads, d], None): attention within each segment (token i attends to token j iff they share one)."""
    positions = torch.arange(query.shape[2], device=query.device)
    segment = torch.searchsorted(cu_seq_lens_q[1:].long(), positions, right=True)  # [N]: the segment of each token
    block_diagonal = (segment[:, None] == segment[None, :])[None, None]  # [1, 1, N, N]
    return sdpa_attention_forward(
        module, query, key, value, block_diagonal, dropout=dropout, scaling=scaling, is_causal=False
    )


def prepare_for_compile(vlm) -> None:
    """Readies `vlm` (a VLMBackbone) for compiled passes, in place: the vision tower's SDPA / eager attention becomes
    `packed_sdpa_attention` (flash-attn already takes the packed call), the language model's output hooks are
    installed. Eager passes afterwards compute the same, within float rounding."""
    from transformers.utils.output_capturing import maybe_install_capturing_hooks

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    vision = vlm.model.model.visual.config
    if vision._attn_implementation in ("sdpa", "eager"):
        vision._attn_implementation = PACKED_SDPA
    maybe_install_capturing_hooks(vlm.model.model.language_model)
