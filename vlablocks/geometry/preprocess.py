"""Raw examples -> the geometric encoder's inputs: normalized pixels and unprojected depth, per view.

Every view is stretched (not cropped) to the encoder's size, exactly as the VLM stretches it to its own
size, so both grids tile the same image. Depth is unprojected at its native resolution with that
view's intrinsics, then the xyz map is resized: intrinsics never need rescaling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vlablocks.vlm.inputs import check_examples, example_views

# DINOv2 was trained on ImageNet-normalized pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def views_per_sample(examples: list[dict]) -> list[int]:
    return [len(example_views(example, i)) for i, example in enumerate(check_examples(examples))]


def pixel_batch(examples: list[dict], size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (pixels [B, V, 3, h, w] float, ImageNet-normalized; view_mask [B, V] bool), V = the most views."""
    examples = check_examples(examples)
    per_sample = [example_views(example, i) for i, example in enumerate(examples)]
    most = max(len(views) for views in per_sample)
    pixels = torch.zeros(len(examples), most, 3, *size, device=device)
    view_mask = torch.zeros(len(examples), most, dtype=torch.bool, device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    for b, views in enumerate(per_sample):
        for v, view in enumerate(views):
            image = torch.from_numpy(np.array(view.convert("RGB"))).to(device).permute(2, 0, 1).float() / 255.0
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
    Pixel centres sit at (u + 0.5, v + 0.5), the convention of the toy renderer (vlablocks/envs/toy_scene.py).
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
    examples: list[dict], size: tuple[int, int], num_views: int, device: torch.device, fov_degrees: float
) -> torch.Tensor | None:
    """-> [B, V, 4, h, w] per-pixel camera-frame xyz + validity, resized to `size`; None when no example has depth.

    Samples without depth are all-invalid (zeros). Intrinsics come from `example["intrinsics"]` [V, 3, 3]
    when present, else a centred pinhole with horizontal field of view `fov_degrees`.
    """
    examples = check_examples(examples)
    if not any(example.get("depth") is not None for example in examples):
        return None
    points = torch.zeros(len(examples), num_views, 4, *size, device=device)
    for b, example in enumerate(examples):
        depths = example.get("depth")
        if depths is None:
            continue
        intrinsics = example.get("intrinsics")
        if len(depths) > num_views or (intrinsics is not None and len(intrinsics) != len(depths)):
            raise ValueError(
                f"examples[{b}]: {len(depths)} depth maps and "
                f"{'no' if intrinsics is None else len(intrinsics)} intrinsics for {num_views} views; "
                "give one [H, W] depth map (and one [3, 3] intrinsics matrix) per view"
            )
        for v, depth in enumerate(depths):
            depth = np.asarray(depth, dtype=np.float32)
            if depth.ndim != 2:
                raise ValueError(f"examples[{b}]['depth'][{v}]: expected [H, W] metres, got shape {list(depth.shape)}")
            matrix = intrinsics[v] if intrinsics is not None else default_intrinsics(*depth.shape, fov_degrees)
            xyzv = unproject_depth(
                torch.tensor(depth, device=device), torch.tensor(np.asarray(matrix, np.float32), device=device)
            )
            # Bilinear on xyz blends across depth edges; nearest keeps every point a real one.
            points[b, v] = F.interpolate(xyzv[None], size=size, mode="nearest-exact")[0]
    return points
