"""Where each merged vision token sits: batch, view, (row, col) in its view; and a 2-D sin-cos encoding.

Qwen-VL processors flatten every view into merged patches in row-major order over the merged grid
(grid_h / merge, grid_w / merge), views in the order they were passed, samples one after another;
the LLM input holds one `<|image_pad|>` token per merged patch in that same order. This module turns
`image_grid_thw` into per-token coordinates that follow exactly that order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class VisionTokens:
    """Per merged vision token (N of them, in LLM input order) and per view (V views in the batch).

    batch_index: [N] long     sample of each token
    view_index:  [N] long     view of each token within its sample
    image_index: [N] long     view of each token in the whole batch (row of `view_grid_hw`)
    grid_rc:     [N, 2] long  (row, col) of the merged patch in its view's merged grid
    positions:   [N, 2] float (row, col) of the merged patch centre, in [0, 1]
    view_grid_hw: [V, 2] long merged grid (h, w) of each view
    vision_mask: [B, L] bool  True at image-token positions of the LLM input
    views_per_sample: (B,) ints, the same counts on the host
    view_grids:  (V,) (t, h, w) ints, each view's merged grid on the host (its tokens are consecutive, in view order)
    """

    batch_index: torch.Tensor
    view_index: torch.Tensor
    image_index: torch.Tensor
    grid_rc: torch.Tensor
    positions: torch.Tensor
    view_grid_hw: torch.Tensor
    vision_mask: torch.Tensor
    views_per_sample: tuple[int, ...]
    view_grids: tuple[tuple[int, int, int], ...]

    def scatter(self, values: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """Per-token `values` [N, ...] -> [B, L, ...] laid out over the LLM input, `fill` elsewhere."""
        shape = (*self.vision_mask.shape, *values.shape[1:])
        out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
        out[self.vision_mask] = values
        return out


@dataclass
class VisionHookInfo(VisionTokens):
    """What a `vision_hook(image_embeds [N, H], info) -> [N, H]` receives, besides the token layout.

    text_embeds:    [B, L, H] input token embeddings of the prompt (vision positions hold the
                              placeholder embedding), e.g. to pool the instruction for FiLM
    attention_mask: [B, L]    1 at real tokens, 0 at (left) padding
    input_ids:      [B, L]
    """

    text_embeds: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None

    @classmethod
    def of(cls, tokens: VisionTokens, **prompt: torch.Tensor) -> VisionHookInfo:
        """`tokens` with the prompt's tensors (text_embeds, attention_mask, input_ids)."""
        return cls(**{field.name: getattr(tokens, field.name) for field in dataclasses.fields(tokens)}, **prompt)


def vision_tokens(
    image_grid_thw: torch.Tensor, views_per_sample: list[int], merge_size: int, vision_mask: torch.Tensor
) -> VisionTokens:
    """image_grid_thw: [V, 3] (t, h, w) in patches; vision_mask: [B, L] bool -> the per-token layout."""
    device = vision_mask.device
    grid = image_grid_thw.to(device)
    merged_h = grid[:, 1] // merge_size
    merged_w = grid[:, 2] // merge_size
    rows, cols, images = [], [], []
    view_grids = tuple(zip(grid[:, 0].tolist(), merged_h.tolist(), merged_w.tolist()))
    for image, (t, h, w) in enumerate(view_grids):
        rows.append(torch.arange(h, device=device).repeat_interleave(w).repeat(t))
        cols.append(torch.arange(w, device=device).repeat(h * t))
        images.append(torch.full((t * h * w,), image, device=device))
    row, col, image_index = torch.cat(rows), torch.cat(cols), torch.cat(images)
    # from the Python list, not repeat_interleave over a tensor: a compiled policy needs static output shapes
    sample_of_view = torch.tensor([s for s, n in enumerate(views_per_sample) for _ in range(n)], device=device)
    first_view = torch.tensor([0, *views_per_sample], device=device).cumsum(0)[:-1]
    batch_index = sample_of_view[image_index]
    counted = torch.bincount(batch_index, minlength=vision_mask.shape[0])
    if not torch.equal(counted, vision_mask.sum(1)):
        raise ValueError(
            f"image tokens per sample {vision_mask.sum(1).tolist()} do not match the grids {counted.tolist()}"
        )
    grid_rc = torch.stack([row, col], dim=-1)
    sizes = torch.stack([merged_h[image_index], merged_w[image_index]], dim=-1)
    return VisionTokens(
        batch_index=batch_index,
        view_index=image_index - first_view[batch_index],
        image_index=image_index,
        grid_rc=grid_rc,
        positions=(grid_rc.float() + 0.5) / sizes.float(),
        view_grid_hw=torch.stack([merged_h, merged_w], dim=-1),
        vision_mask=vision_mask,
        views_per_sample=tuple(views_per_sample),
        view_grids=view_grids,
    )


def sincos_2d(coords: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos encoding (as in MAE) of (row, col) coordinates: [..., 2] -> [..., dim] float32.

    Channels are laid out [sin(row), cos(row), sin(col), cos(col)], dim // 4 geometric frequencies each;
    `dim` % 4 == 0. The VLM feeds integer merged-grid cells; action heads feed scaled [0, 1] positions.
    """
    if dim % 4:
        raise ValueError(f"sincos2d needs a hidden size divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=coords.device) / quarter)
    parts = []
    for axis in range(2):
        angles = coords[..., axis].float().unsqueeze(-1) * omega
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1)


def check_hook_output(result: object, expected: torch.Tensor) -> torch.Tensor:
    if not isinstance(result, torch.Tensor) or result.shape != expected.shape:
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ValueError(f"vision_hook must return image embeddings of shape {tuple(expected.shape)}, got {got}")
    return result
