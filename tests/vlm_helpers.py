"""Shared VLM test helpers: tiny backbones, random views, and raw view/prompt dicts -> the VLM's inputs."""

from __future__ import annotations

import numpy as np
import torch

from vlablocks.core.batch import VLMInputs
from vlablocks.core.build import build as build_component
from vlablocks.core.processor.pipeline import VLMTokenize
from vlablocks.core.registry import VLMS
from vlablocks.core.vlm import VLMBackbone

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


def build(name: str, seed: int = 0, **options) -> VLMBackbone:
    """A tiny random-init backbone of family `name` (seeded), with `options` for its `framework.vlm` section."""
    torch.manual_seed(seed)
    return build_component(VLMS, {"name": name, **options})


def random_views(rng: np.random.Generator, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def encode(vlm, examples: list[dict], suffix: str = "") -> VLMInputs:
    """examples: [{"views": [...], "prompt": str, optional "answer": str}] -> VLMInputs on the VLM's device."""
    return VLMTokenize(vlm.processor, vlm.view_size, vlm.patch_size, suffix=suffix)(examples).to(vlm.device)
