"""One normalizer for both directions, built from `norm_stats.json`, shared by training and serving.

The stats file fully describes the transform, per dataset name:

    {"toy": {"mode": "q99",
             "action": {"min": [..], "max": [..], "mean": [..], "std": [..], "q01": [..], "q99": [..],
                        "mask": [true, false, ..], "count": 1234},
             "state": {...}}}

Modes (applied to the dimensions whose `mask` is true; the others pass through unchanged):
  q99       x -> 2 (x - q01) / (q99 - q01) - 1, clipped to [-1, 1]
  min_max   x -> 2 (x - min) / (max - min) - 1
  mean_std  x -> (x - mean) / std
  identity  x -> x
A degenerate spread (a constant dimension) becomes a plain shift. `unnormalize` is the exact inverse on
[-1, 1] (q99 clips only on the way in). Works on numpy arrays and torch tensors of any leading shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlablocks.core.dataloader.stats import compute_norm_stats  # noqa: F401  (the stats side, importable from here)

MODES = ("q99", "mean_std", "min_max", "identity")
KEYS = ("action", "state")
STAT_FIELDS = ("min", "max", "mean", "std", "q01", "q99")
EPS = 1e-8


def _check_entry(name: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ValueError(
            f"norm stats[{name!r}]: expected a mapping with 'mode' and 'action', got {type(entry).__name__}"
        )
    if entry.get("mode") not in MODES:
        raise ValueError(f"norm stats[{name!r}].mode: expected one of {list(MODES)}, got {entry.get('mode')!r}")
    if "action" not in entry:
        raise ValueError(f"norm stats[{name!r}]: missing 'action' (has {sorted(entry)})")
    for key in KEYS:
        if key not in entry:
            continue
        fields = entry[key]
        missing = [f for f in (*STAT_FIELDS, "mask") if f not in fields]
        if missing:
            raise ValueError(f"norm stats[{name!r}].{key}: missing {missing}")
        dims = {f: len(fields[f]) for f in (*STAT_FIELDS, "mask")}
        if len(set(dims.values())) != 1:
            raise ValueError(f"norm stats[{name!r}].{key}: fields disagree on the dimension: {dims}")


class Normalizer:
    """normalize / unnormalize raw actions and states with per-dataset stats (see the module docstring)."""

    def __init__(self, stats: dict[str, dict]) -> None:
        if not isinstance(stats, dict) or not stats:
            raise ValueError("norm stats must be a non-empty mapping {dataset_name: {mode, action, state}}")
        for name, entry in stats.items():
            _check_entry(name, entry)
        self.stats = stats
        self._affine: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    # -- persistence ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"norm stats file not found: {path} (write one with `vlablocks stats`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls(data)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.stats, indent=2) + "\n")

    def to_dict(self) -> dict[str, dict]:
        return self.stats

    @property
    def dataset_names(self) -> list[str]:
        return sorted(self.stats)

    def dim(self, key: str, dataset_name: str) -> int | None:
        """Stored dimension of `key` for a dataset, or None when the stats have no such key."""
        entry = self._entry(dataset_name)
        return len(entry[key]["mean"]) if key in entry else None

    def check_dims(self, dataset_name: str, action_dim: int, state_dim: int | None = None) -> None:
        """Fails early, with expected vs got, when the stats do not fit the platform's dimensions."""
        for key, dim in (("action", action_dim), ("state", state_dim)):
            stored = self.dim(key, dataset_name)
            if dim is not None and stored is not None and stored != dim:
                raise ValueError(
                    f"norm stats for {dataset_name!r} {key}: expected dim {dim}, got {stored} in the stats file"
                )

    # -- transform ------------------------------------------------------------------------------

    def normalize(self, x: Any, key: str = "action", dataset_name: str | Sequence[str] | None = None) -> Any:
        """x: [..., D] (or [B, ..., D] with one dataset name per row) -> same shape, normalized."""
        x = _as_float(x)
        offset, scale, lo, hi = self._params(x, key, dataset_name)
        y = (x - offset) / scale
        return y.clamp(lo, hi) if _is_torch(y) else np.clip(y, lo, hi)

    def unnormalize(self, x: Any, key: str = "action", dataset_name: str | Sequence[str] | None = None) -> Any:
        """Inverse of `normalize` (exact on [-1, 1] for q99): [..., D] -> same shape, raw units."""
        x = _as_float(x)
        offset, scale, _, _ = self._params(x, key, dataset_name)
        return x * scale + offset

    # -- internals ------------------------------------------------------------------------------

    def _entry(self, dataset_name: str | None) -> dict:
        if dataset_name is None:
            if len(self.stats) != 1:
                raise ValueError(f"norm stats hold several datasets {self.dataset_names}: pass dataset_name")
            return next(iter(self.stats.values()))
        if dataset_name not in self.stats:
            raise KeyError(f"no norm stats for dataset {dataset_name!r}; the stats file has {self.dataset_names}")
        return self.stats[dataset_name]

    def _affine_for(self, key: str, dataset_name: str | None) -> tuple[np.ndarray, ...]:
        """(offset, scale, lo, hi), each [D] float64: normalized = clip((x - offset) / scale, lo, hi)."""
        cache_key = (key, dataset_name or "")
        if cache_key in self._affine:
            return self._affine[cache_key]
        entry = self._entry(dataset_name)
        if key not in entry:
            raise KeyError(f"norm stats for {dataset_name!r} have no {key!r} (have {[k for k in KEYS if k in entry]})")
        s = {f: np.asarray(v, dtype=np.float64) for f, v in entry[key].items() if f in STAT_FIELDS}
        mask = np.asarray(entry[key]["mask"], dtype=bool)
        mode = entry["mode"]
        inf = np.full_like(s["mean"], math.inf)
        lo, hi = -inf, inf
        if mode == "q99":
            offset, spread = (s["q01"] + s["q99"]) / 2, (s["q99"] - s["q01"]) / 2
            lo, hi = np.where(mask, -1.0, -inf), np.where(mask, 1.0, inf)
        elif mode == "min_max":
            offset, spread = (s["min"] + s["max"]) / 2, (s["max"] - s["min"]) / 2
        elif mode == "mean_std":
            offset, spread = s["mean"], s["std"]
        else:
            offset, spread = np.zeros_like(inf), np.ones_like(inf)
        spread = np.where(spread > EPS, spread, 1.0)
        params = (np.where(mask, offset, 0.0), np.where(mask, spread, 1.0), lo, hi)
        self._affine[cache_key] = params
        return params

    def _params(self, x: Any, key: str, dataset_name: str | Sequence[str] | None) -> tuple[Any, ...]:
        if isinstance(dataset_name, str) or dataset_name is None:
            params = self._affine_for(key, dataset_name)
            name = dataset_name or self.dataset_names[0]
        else:  # one name per leading row: stack that row's parameters, broadcast over middle dims
            names = list(dataset_name)
            if len(names) != x.shape[0]:
                raise ValueError(f"normalize: expected {x.shape[0]} dataset names (one per row), got {len(names)}")
            rows = [self._affine_for(key, n) for n in names]
            if len({len(r[0]) for r in rows}) != 1:
                raise ValueError(
                    f"normalize: datasets {sorted(set(names))} have different {key} dims; batch them apart"
                )
            shape = (len(names),) + (1,) * (x.ndim - 2) + (-1,)
            params = tuple(np.stack([r[i] for r in rows]).reshape(shape) for i in range(4))
            name = names[0]
        stored = params[0].shape[-1]
        if x.shape[-1] != stored:
            raise ValueError(
                f"norm stats for {name!r} {key}: expected dim {stored} (from the stats file), got data of dim "
                f"{x.shape[-1]} (shape {list(x.shape)}); recompute the stats for this data or fix the platform"
            )
        if _is_torch(x):
            import torch

            return tuple(torch.as_tensor(p, dtype=x.dtype, device=x.device) for p in params)
        return tuple(p.astype(x.dtype) for p in params)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _as_float(x: Any) -> Any:
    """Keeps floating arrays/tensors as they are (dtype and device); anything else becomes float32 numpy."""
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
