"""Explicit spatial alignment of a geometric grid to the VLM's merged vision-patch grid of each view.

Both grids tile the same view (the VLM and the geometric encoder each stretch the whole image to their
own size, without cropping), so a cell is an interval of image fractions along each axis. Resampling
g_h x g_w -> p_h x p_w gives each vision patch the average of the geometric cells it overlaps,
weighted by overlap area: a cell wholly inside one patch lands on that patch only, and for any pair
of sizes the weights of a patch sum to 1. The weights factor per axis (`overlap_matrix`).
"""

from __future__ import annotations

import torch

from vlablocks.core.geometry.tokens import GeometricTokens, check_views, image_owners


def overlap_matrix(n_out: int, n_in: int, device: torch.device | None = None) -> torch.Tensor:
    """[n_out, n_in]: fraction of output interval i = [i / n_out, (i + 1) / n_out) covered by input interval k.

    Rows sum to 1. Exact for integer ratios (each entry 0 or n_out / n_in); area weights otherwise.
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"overlap_matrix needs positive sizes, got {n_out} and {n_in}")
    # Work in units of 1 / (n_out * n_in) so the interval ends are integers and the result is exact.
    out_lo = torch.arange(n_out, device=device, dtype=torch.float64)[:, None] * n_in
    in_lo = torch.arange(n_in, device=device, dtype=torch.float64)[None, :] * n_out
    overlap = (torch.minimum(out_lo + n_in, in_lo + n_out) - torch.maximum(out_lo, in_lo)).clamp(min=0)
    return (overlap / n_in).float()


def resample_grid(grid: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Area-weighted resampling of grids over the same image. grid: [..., g_h, g_w, C] -> [..., out_h, out_w, C]"""
    rows = overlap_matrix(out_h, grid.shape[-3], grid.device).to(grid.dtype)
    cols = overlap_matrix(out_w, grid.shape[-2], grid.device).to(grid.dtype)
    return torch.einsum("ir,...rcd,jc->...ijd", rows, grid, cols)


def align_to_vision_tokens(geometry: GeometricTokens, info) -> torch.Tensor:
    """The geometric feature under each merged vision token: [N, C], in the VLM's token order.

    info: the VLM's VisionHookInfo / VisionTokens (per token batch_index, view_index, image_index,
    grid_rc; per image view_grid_hw). Each view's grid is resampled to that view's merged-patch grid,
    then read at the token's (row, col). Views sharing a patch-grid size are resampled together.
    """
    check_views(geometry, info)
    sample, view = image_owners(info)
    device = info.image_index.device
    aligned = geometry.tokens.new_zeros(info.image_index.shape[0], geometry.dim)
    grids = [(h, w) for _, h, w in info.view_grids]  # host ints: no data-dependent shapes in a compiled graph
    sizes = [t * h * w for t, h, w in info.view_grids]
    starts = [sum(sizes[:image]) for image in range(len(sizes))]  # an image's tokens are consecutive
    for out_h, out_w in sorted(set(grids)):
        images = [image for image, grid in enumerate(grids) if grid == (out_h, out_w)]
        chosen = torch.tensor(images, device=device)
        resampled = resample_grid(geometry.tokens[sample[chosen], view[chosen]], out_h, out_w)  # [n, p_h, p_w, C]
        spans = [range(starts[image], starts[image] + sizes[image]) for image in images]
        tokens = torch.tensor([n for span in spans for n in span], device=device)
        local = torch.tensor([k for k, span in enumerate(spans) for _ in span], device=device)  # row of resampled
        rc = info.grid_rc[tokens]
        values = resampled[local, rc[:, 0], rc[:, 1]]
        aligned = aligned.index_copy(0, tokens, values)
    return aligned


def cell_centres(grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor:
    """(row, col) centre of every cell of a grid, row-major, in image fractions: [grid_h * grid_w, 2]."""
    rows = (torch.arange(grid_h, device=device, dtype=torch.float32) + 0.5) / grid_h
    cols = (torch.arange(grid_w, device=device, dtype=torch.float32) + 0.5) / grid_w
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
