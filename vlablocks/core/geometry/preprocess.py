"""Views, depth and intrinsics -> the geometric encoder's inputs: normalized pixels and unprojected depth, per view.

Every view is stretched (not cropped) to the encoder's size, exactly as the VLM stretches it to its own
size, so both grids tile the same image. Depth is unprojected at its native resolution with that
view's intrinsics, then the xyz map is resized: intrinsics never need rescaling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vlablocks.core.vlm.inputs import to_pil_views

# DINOv2 was trained on ImageNet-normalized pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_batch(views: list[list], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """views: per sample, its views (uint8 [H, W, 3] arrays or PIL images).

    -> (pixels [B, V, 3, h, w] float, ImageNet-normalized; view_mask [B, V] bool), V = the most views.
    """
    per_sample = [to_pil_views(sample, f"sample[{b}]['images']") for b, sample in enumerate(views)]
    most = max(len(sample) for sample in per_sample)
    pixels = torch.zeros(len(per_sample), most, 3, *size)
    view_mask = torch.zeros(len(per_sample), most, dtype=torch.bool)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for b, sample in enumerate(per_sample):
        for v, view in enumerate(sample):
            image = torch.from_numpy(np.array(view.convert("RGB"))).permute(2, 0, 1).float() / 255.0
            resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            pixels[b, v] = (resized - mean) / std
            view_mask[b, v] = True
    return pixels, view_mask


def default_intrinsics(height: int, width: int, fov_degrees: float) -> np.ndarray:
    """[3, 3] pinhole with principal point at the centre and horizontal field of view `fov_degrees`."""
    focal = width / (2.0 * math.tan(math.radians(fov_degrees) / 2.0))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def unproject_depth(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-frame points of every pixel. depth: [H, W] metres (<= 0 or non-finite = invalid); intrinsics: [3, 3].

    -> [4, H, W]: x, y, z (= depth) in metres, then a validity channel (1 valid, 0 invalid, xyz zeroed there).
    Pixel centres sit at (u + 0.5, v + 0.5), the convention of the toy renderer (vlablocks/tools/toy/toy_scene.py).
    """
    height, width = depth.shape
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    v, u = torch.meshgrid(
        torch.arange(height, device=depth.device, dtype=depth.dtype) + 0.5,
        torch.arange(width, device=depth.device, dtype=depth.dtype) + 0.5,
        indexing="ij",
    )
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x = (u - cx) / fx * z
    y = (v - cy) / fy * z
    return torch.stack([x, y, z, valid.to(depth.dtype)])


def point_batch(
    depths: list[list | None],
    intrinsics: list[list | None],
    size: tuple[int, int],
    num_views: int,
    fov_degrees: float,
) -> torch.Tensor | None:
    """depths / intrinsics: per sample, one [H, W] depth map (metres) / [3, 3] matrix per view, or None.

    -> [B, V, 4, h, w] per-pixel camera-frame xyz + validity, resized to `size`; None when no sample has depth.
    Samples (or views) without depth are all-invalid (zeros). A view without intrinsics gets a centred
    pinhole with horizontal field of view `fov_degrees`.
    """
    if not any(sample_depths is not None for sample_depths in depths):
        return None
    points = torch.zeros(len(depths), num_views, 4, *size)
    for b, (sample_depths, matrices) in enumerate(zip(depths, intrinsics)):
        if sample_depths is None:
            continue
        if len(sample_depths) > num_views or (matrices is not None and len(matrices) != len(sample_depths)):
            raise ValueError(
                f"sample[{b}]: {len(sample_depths)} depth maps and "
                f"{'no' if matrices is None else len(matrices)} intrinsics for {num_views} views; "
                "give one [H, W] depth map (and one [3, 3] intrinsics matrix) per camera"
            )
        for v, depth in enumerate(sample_depths):
            if depth is None:
                continue
            depth = np.asarray(depth, dtype=np.float32)
            if depth.ndim != 2:
                raise ValueError(
                    f"sample[{b}]['depth'] view {v}: expected [H, W] metres, got shape {list(depth.shape)}"
                )
            matrix = matrices[v] if matrices is not None and matrices[v] is not None else None
            if matrix is None:
                matrix = default_intrinsics(*depth.shape, fov_degrees)
            xyzv = unproject_depth(torch.tensor(depth), torch.tensor(np.asarray(matrix, np.float32)))
            # Bilinear on xyz blends across depth edges; nearest keeps every point a real one.
            points[b, v] = F.interpolate(xyzv[None], size=size, mode="nearest-exact")[0]
    return points
