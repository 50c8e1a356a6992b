"""Views and instructions -> validated, resized PIL views and the chat layout of a Qwen-VL prompt.

Views are PIL images or uint8 arrays/tensors HxWx3 (or one uint8 array/tensor [V, H, W, 3]). Every view is resized to the configured
size by qwen-vl-utils (`fetch_image`, which rounds to multiples of patch x merge size), so the
processor sees images it does not need to resize again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils import fetch_image, smart_resize


def view_size(image_size: int | Sequence[int], factor: int) -> tuple[int, int]:
    """The (height, width) every view is resized to: `image_size` rounded to multiples of `factor`.

    Rounding follows qwen-vl-utils' `smart_resize` (nearest multiple, at least 4 merged tokens).
    """
    if isinstance(image_size, int):
        height = width = image_size
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
        height, width = image_size
    else:
        raise ValueError(f"image_size must be an int or [height, width], got {image_size!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return smart_resize(height, width, factor=factor)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{str(value.dtype).replace('torch.', '')} array of shape {tuple(value.shape)}"
    return type(value).__name__


def _to_pil(view: Any, where: str) -> Image.Image:
    if isinstance(view, Image.Image):
        return view
    if isinstance(view, torch.Tensor):
        view = view.detach().cpu().numpy() if view.dtype == torch.uint8 else view
    if isinstance(view, np.ndarray) and view.dtype == np.uint8 and view.ndim == 3 and view.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(view))
    raise ValueError(f"{where}: expected a PIL image or a uint8 HxWx3 array, got {_describe(view)}")


def to_pil_views(views: Any, where: str) -> list[Image.Image]:
    """A list of views (PIL images, or uint8 [H, W, 3] arrays/tensors) as PIL images; ValueError naming the problem."""
    if isinstance(views, (np.ndarray, torch.Tensor)) and views.ndim == 4:
        views = list(views)
    if isinstance(views, (Image.Image, np.ndarray, torch.Tensor)):
        raise ValueError(f"{where}: expected a list of views, got a single {_describe(views)}; wrap it in a list")
    if not isinstance(views, (list, tuple)):
        raise ValueError(f"{where}: expected a list of views, got {_describe(views)}")
    if len(views) == 0:
        raise ValueError(f"{where}: a sample needs at least one view, got 0")
    return [_to_pil(view, f"{where}[{i}]") for i, view in enumerate(views)]


def resize_views(views: list[Image.Image], size: tuple[int, int], patch_size: int) -> list[Image.Image]:
    """Resizes (and converts to RGB) each view to `size` = (height, width) with qwen-vl-utils."""
    height, width = size
    return [
        fetch_image({"image": view, "resized_height": height, "resized_width": width}, image_patch_size=patch_size)
        for view in views
    ]


def user_messages(num_views: int, instruction: str) -> list[dict]:
    """One user turn holding the views, then the instruction (the Qwen-VL chat layout)."""
    content = [{"type": "image"} for _ in range(num_views)] + [{"type": "text", "text": instruction}]
    return [{"role": "user", "content": content}]
