"""The sample contract: the raw, model-agnostic dict every dataset returns and every framework consumes.

Values are numpy arrays (never tensors) and actions/state are RAW: the framework normalizes them with
`vlablocks.dataloader.normalization.Normalizer`, so that training and serving share one transform.
An observation from an environment or a robot client is the same dict without `action`/`action_is_pad`.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np

from vlablocks.config import PlatformConfig


class Sample(TypedDict):
    """One training example. V views, chunk length T, action dim D, state dim S (from the platform).

    image:         list of V arrays [H, W, 3] uint8 (views may differ in size)
    lang:          the instruction
    action:        [T, D] float32, raw; step t is the action t frames after the observation
    action_is_pad: [T] bool, True where the chunk ran past the episode end (the value there repeats
                   the episode's last action and must not be learned from)
    state:         [S] float32, raw proprioception (absent when the platform has none)
    depth:         list of V arrays [H, W] float32, metres, one per view
    intrinsics:    [V, 3, 3] float32 pinhole intrinsics of each view
    dataset_name:  selects the normalization stats (`norm_stats.json` is keyed by it)
    embodiment:    the platform/robot tag
    """

    image: list[np.ndarray]
    lang: str
    action: np.ndarray
    action_is_pad: np.ndarray
    state: NotRequired[np.ndarray]
    depth: NotRequired[list[np.ndarray]]
    intrinsics: NotRequired[np.ndarray]
    dataset_name: str
    embodiment: str


REQUIRED_KEYS = ("image", "lang", "action", "action_is_pad", "dataset_name", "embodiment")
OPTIONAL_KEYS = ("state", "depth", "intrinsics")
ACTION_KEYS = ("action", "action_is_pad")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {list(value.shape)}"
    return type(value).__name__


def _check_array(sample: dict, key: str, dtype: type, shape: tuple[int | None, ...]) -> None:
    value = sample[key]
    ok = (
        isinstance(value, np.ndarray)
        and value.dtype == dtype
        and value.ndim == len(shape)
        and all(e is None or e == g for e, g in zip(shape, value.shape))
    )
    if not ok:
        expected = [e if e is not None else "*" for e in shape]
        raise ValueError(f"sample[{key!r}]: expected ndarray {np.dtype(dtype)} {expected}, got {_describe(value)}")


def _check_views(sample: dict, key: str, channels: int | None, dtype: type, count: int | None) -> None:
    views = sample[key]
    if not isinstance(views, list) or not views:
        raise ValueError(f"sample[{key!r}]: expected a non-empty list of per-view arrays, got {_describe(views)}")
    if count is not None and len(views) != count:
        raise ValueError(f"sample[{key!r}]: expected {count} views (one per image), got {len(views)}")
    for i, view in enumerate(views):
        shape = (None, None, channels) if channels else (None, None)
        _check_array({f"{key}[{i}]": view}, f"{key}[{i}]", dtype, shape)


def validate_sample(sample: dict, platform: PlatformConfig, require_action: bool = True) -> None:
    """Raises ValueError naming the offending key, with expected vs got, unless `sample` keeps the contract.

    `require_action=False` checks an observation (no `action`/`action_is_pad`, which are then forbidden).
    """
    if not isinstance(sample, dict):
        raise ValueError(f"sample: expected a dict, got {type(sample).__name__}")
    required = [k for k in REQUIRED_KEYS if require_action or k not in ACTION_KEYS]
    allowed = set(required) | set(OPTIONAL_KEYS)
    missing = [k for k in required if k not in sample]
    if missing:
        raise ValueError(f"sample is missing key(s) {missing}; it has {sorted(sample)}")
    unexpected = sorted(set(sample) - allowed)
    if unexpected:
        raise ValueError(f"sample has unexpected key(s) {unexpected}; allowed: {sorted(allowed)}")
    _check_views(sample, "image", 3, np.uint8, None)
    for key in ("lang", "dataset_name", "embodiment"):
        if not isinstance(sample[key], str):
            raise ValueError(f"sample[{key!r}]: expected str, got {_describe(sample[key])}")
    if require_action:
        _check_array(sample, "action", np.float32, (platform.action_horizon, platform.action_dim))
        _check_array(sample, "action_is_pad", np.bool_, (platform.action_horizon,))
    if "state" in sample:
        _check_array(sample, "state", np.float32, (platform.state_dim,))
    views = len(sample["image"])
    if "depth" in sample:
        _check_views(sample, "depth", None, np.float32, views)
        for i, (depth, image) in enumerate(zip(sample["depth"], sample["image"])):
            if depth.shape != image.shape[:2]:
                raise ValueError(
                    f"sample['depth'][{i}]: expected [H, W] = {list(image.shape[:2])}, got {list(depth.shape)}"
                )
    if "intrinsics" in sample:
        _check_array(sample, "intrinsics", np.float32, (views, 3, 3))
