"""Synthetic smooth, normalized action chunks: what FAST is fitted and measured on without a dataset."""

from __future__ import annotations

import numpy as np


def smooth_chunks(n: int, horizon: int, dim: int, seed: int) -> np.ndarray:
    """[n, T, D] smooth trajectories spanning about [-1, 1]: offset + linear trend + three low sines."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    chunks = rng.uniform(-0.5, 0.5, (n, 1, dim)) + rng.uniform(-0.5, 0.5, (n, 1, dim)) * t
    for _ in range(3):
        frequency = rng.uniform(0.1, 1.5, (n, 1, dim))
        phase = rng.uniform(0.0, 2 * np.pi, (n, 1, dim))
        chunks = chunks + rng.uniform(0.0, 0.2, (n, 1, dim)) * np.sin(2 * np.pi * frequency * t + phase)
    return chunks
