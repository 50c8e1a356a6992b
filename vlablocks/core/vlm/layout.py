"""The layout of a VLM pass: what the Qwen-VL forward derives from a batch's integer metadata (input_ids,
attention_mask, image_grid_thw, views_per_sample) rather than from its pixels or weights:

    where each vision token sits (vision.py `VisionTokens`), laid out over the LLM input
    the vision tower's packed-attention boundaries and window order (`vision_inputs`, family-specific)
    the language model's 3-D rotary positions [3, B, L]
    the positions of the special tokens a framework reads (action queries, readouts)

Computing it takes host-side Python over those integers (`.tolist()`, loops, `nonzero`, checks that raise), which
torch.compile cannot capture: every such op is a graph break. `VLMBackbone.layout(inputs, token_ids)` computes it
eagerly; a `VLMInputs` that carries one (`inputs.layout`, set by `Framework.prepare_sampling` before a compiled
`sample_actions`, vlablocks/core/policy/policy.py `Policy.compile`) is read from it instead. Computed inline or
carried, the same tensors feed the same ops, so eager and compiled passes agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlablocks.core.vlm.vision import VisionTokens, vision_tokens

try:
    from transformers import vision_utils
except ImportError:  # transformers before its precompute helpers: the vision tower derives them itself
    vision_utils = None


@dataclass
class VLMLayout:
    """B samples, L tokens, V views, N merged vision tokens.

    views_per_sample:   (B,) ints
    view_token_counts:  (V,) ints, merged vision tokens of each view (how the vision tower's output splits)
    tokens:             VisionTokens: each vision token's sample, view, cell and position; vision_mask [B, L]
    vision_positions:   [B, L, 2] float, `tokens.positions` laid out over the LLM input, 0 at text tokens
    view_index:         [B, L] long, `tokens.view_index` laid out over the LLM input, -1 at text tokens
    rope_positions:     [3, B, L] long, the language model's multimodal rotary positions (t, h, w)
    token_positions:    {token id: [B, n] long} where each requested special token sits (n per row)
    vision_inputs:      {name: tensor or int} the vision tower's precomputed inputs (transformers' vision_utils
                        keys: cu_seqlens, window_index, ...); {} when the family computes them itself
    """

    views_per_sample: tuple[int, ...]
    view_token_counts: tuple[int, ...]
    tokens: VisionTokens
    vision_positions: torch.Tensor
    view_index: torch.Tensor
    rope_positions: torch.Tensor
    token_positions: dict[int, torch.Tensor]
    vision_inputs: dict[str, torch.Tensor | int]

    def positions_of(self, token_id: int) -> torch.Tensor:
        """[B, n] positions of a requested token; KeyError naming it when the layout was computed without it."""
        if token_id not in self.token_positions:
            raise KeyError(
                f"token id {token_id} was not requested when this layout was computed (it holds "
                f"{sorted(self.token_positions)}): pass it in the framework's sampling_token_ids"
            )
        return self.token_positions[token_id]

    def with_text_appended(self, count: int) -> VLMLayout:
        """The layout of the same rows followed by `count` real text tokens each (QwenFAST's parallel answer inputs):
        their rotary positions run on from one past each row's largest, no vision token among them. Tensor ops only
        (it runs inside a compiled graph); the same positions transformers' rope index gives trailing text."""
        batch = self.rope_positions.shape[1]
        device = self.rope_positions.device
        start = self.rope_positions.amax(dim=(0, 2)) + 1  # [B]
        steps = start[:, None] + torch.arange(count, device=device)  # [B, count]
        rope = torch.cat([self.rope_positions, steps.unsqueeze(0).expand(3, -1, -1)], dim=2)
        vision_mask = torch.cat([self.tokens.vision_mask, self.tokens.vision_mask.new_zeros(batch, count)], dim=1)
        return dataclasses.replace(
            self,
            tokens=dataclasses.replace(self.tokens, vision_mask=vision_mask),
            vision_positions=torch.cat([self.vision_positions, self.vision_positions.new_zeros(batch, count, 2)], 1),
            view_index=torch.cat([self.view_index, self.view_index.new_full((batch, count), -1)], dim=1),
            rope_positions=rope,
        )


def build_layout(vlm, inputs, token_ids: Sequence[int] = ()) -> VLMLayout:
    """The layout of `inputs` (VLMInputs on the VLM's device) for `vlm` (a VLMBackbone), with the positions of
    `token_ids` (each must occur the same non-zero number of times in every row). Eager: host-side Python."""
    vision_mask = inputs.input_ids == vlm.image_token_id
    per_sample = tuple(inputs.views_per_sample.tolist())
    tokens = vision_tokens(inputs.image_grid_thw, list(per_sample), vlm.merge_size, vision_mask)
    counts = tuple((inputs.image_grid_thw.prod(-1) // vlm.merge_size**2).tolist())
    kwargs = vlm.model_kwargs(inputs)
    rope, _ = vlm.model.model.get_rope_index(
        kwargs["input_ids"],
        mm_token_type_ids=kwargs["mm_token_type_ids"],
        image_grid_thw=inputs.image_grid_thw,
        attention_mask=inputs.attention_mask,
    )  # [3, B, L]
    return VLMLayout(
        views_per_sample=per_sample,
        view_token_counts=counts,
        tokens=tokens,
        vision_positions=tokens.scatter(tokens.positions),
        view_index=tokens.scatter(tokens.view_index, fill=-1),
        rope_positions=rope,
        token_positions={t: token_positions(vlm, inputs.input_ids, t) for t in token_ids},
        vision_inputs=vlm.vision_inputs(inputs.image_grid_thw),
    )


def token_positions(vlm, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """input_ids: [B, L] -> [B, n] positions of `token_id`, which must occur n > 0 times in every row."""
    hits = input_ids == token_id
    counts = hits.sum(1)
    if counts.min() == 0 or counts.min() != counts.max():
        raise ValueError(
            f"requested token {vlm.tokenizer.convert_ids_to_tokens(token_id)!r} occurs {counts.tolist()} times "
            "in the batch rows; it must occur the same non-zero number of times in every sample (the processor's "
            "prompt suffix puts it there)"
        )
    return hits.nonzero()[:, 1].view(input_ids.shape[0], -1)


def packed_vision_inputs(vlm, grid_thw: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Qwen2.5-VL's vision tower inputs derived from grid_thw [V, 3]: its rotary cell of every patch, the packed
    attention's per-view and per-window boundaries (and their longest segments), the window order; computed by
    transformers' own vision_utils, so the tower reads exactly what it would have computed itself ({} without them)."""
    if vision_utils is None:
        return {}
    visual = vlm.model.model.visual
    cu_seqlens = vision_utils.get_vision_cu_seqlens(grid_thw)
    window_index, cu_window_seqlens = vision_utils.get_vision_window_index(
        grid_thw,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    return {
        "position_ids": vision_utils.get_vision_position_ids(grid_thw, visual.spatial_merge_size),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
        "window_index": window_index.to(grid_thw.device),
        "cu_window_seqlens": cu_window_seqlens,
        "max_window_seqlen": int((cu_window_seqlens[1:] - cu_window_seqlens[:-1]).max()),
    }
