"""Image resizing in plain numpy, so robot-side code can match the server's `image_size` without PIL."""

from __future__ import annotations

import numpy as np


def _bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """image: [H, W, C] -> float32 [height, width, C], pixel-centre aligned (like PIL / cv2 INTER_LINEAR)."""
    in_h, in_w = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * in_h / height - 0.5, 0, in_h - 1)
    xs = np.clip((np.arange(width) + 0.5) * in_w / width - 0.5, 0, in_w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    src = image.astype(np.float32)
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """image: uint8 [H, W, C] -> uint8 [height, width, C], aspect ratio kept, centred, zero (black) padding."""
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    in_h, in_w = image.shape[:2]
    scale = min(height / in_h, width / in_w)
    new_h, new_w = max(1, round(in_h * scale)), max(1, round(in_w * scale))
    resized = np.clip(np.rint(_bilinear(image, new_h, new_w)), 0, 255).astype(np.uint8)
    out = np.zeros((height, width, image.shape[2]), dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out
