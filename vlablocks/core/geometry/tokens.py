"""What a geometric encoder hands a fusion, and the per-view bookkeeping fusions share."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GeometricTokens:
    """Geometric features on a regular grid over each view (the whole image, stretched like the VLM's view).

    tokens:    [B, V, g_h, g_w, C]  cell (r, c) covers rows [r / g_h, (r + 1) / g_h) and columns
                                    [c / g_w, (c + 1) / g_w) of the view, in image fractions
    view_mask: [B, V] bool          True at real views (samples with fewer views are padded)
    """

    tokens: torch.Tensor
    view_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 5:
            raise ValueError(f"GeometricTokens.tokens must be [B, V, g_h, g_w, C], got {list(self.tokens.shape)}")
        if self.view_mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"GeometricTokens.view_mask must be [B, V] = {list(self.tokens.shape[:2])}, "
                f"got {list(self.view_mask.shape)}"
            )

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.tokens.shape[2]), int(self.tokens.shape[3])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])

    def to(self, dtype: torch.dtype) -> GeometricTokens:
        return GeometricTokens(self.tokens.to(dtype), self.view_mask)


def image_owners(info) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample, view) of every image in the VLM batch: two [V_total] long tensors, indexed like view_grid_hw."""
    count = info.view_grid_hw.shape[0]
    sample = torch.zeros(count, dtype=torch.long, device=info.batch_index.device)
    view = torch.zeros_like(sample)
    sample[info.image_index] = info.batch_index
    view[info.image_index] = info.view_index
    return sample, view


def check_views(geometry: GeometricTokens, info) -> None:
    """Raises when the VLM saw a (sample, view) the geometric encoder did not encode. The counts are checked on the
    host; the padding mask (data) only outside a compiled graph, which cannot raise on data (the eager pass of the
    same policy checks it)."""
    batch, views = geometry.view_mask.shape
    counts = info.views_per_sample
    if not any(counts):
        return
    last_sample = max(s for s, n in enumerate(counts) if n)
    if last_sample >= batch or max(counts) > views:
        raise ValueError(
            f"geometric tokens cover {batch} samples x {views} views, but the VLM batch has sample "
            f"{last_sample} / view {max(counts) - 1}; encode the same examples"
        )
    if torch.compiler.is_compiling():
        return
    sample, view = image_owners(info)
    if not bool(geometry.view_mask[sample, view].all()):
        raise ValueError("the VLM saw a view that the geometric encoder marked as padding; encode the same examples")


def pooled_instruction(info) -> torch.Tensor:
    """Mean input embedding of the real, non-vision prompt tokens of each sample: [B, H].

    info: the VLM's VisionHookInfo (text_embeds [B, L, H], attention_mask [B, L], vision_mask [B, L]).
    """
    if info.text_embeds is None or info.attention_mask is None:
        raise ValueError("pooled_instruction needs info.text_embeds and info.attention_mask (a VLM vision_hook info)")
    text = info.attention_mask.bool() & ~info.vision_mask
    weights = text.unsqueeze(-1).to(info.text_embeds.dtype)
    return (info.text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)
