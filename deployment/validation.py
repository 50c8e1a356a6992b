"""Checks an observation against the policy's metadata before it reaches the model.

Every failure is a `ProtocolError` whose message names the offending field, what was expected and what came.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployment.client.protocol import ProtocolError

REQUIRED_KEYS = ("images", "state", "prompt")


def _check_image(key: str, image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ProtocolError(
            "wrong_type", f"images[{key!r}] must be a numpy uint8 array [H, W, 3], got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ProtocolError(
            "wrong_dtype", f"images[{key!r}] has dtype {image.dtype}; expected uint8 [H, W, 3] (0-255, not 0-1 floats)"
        )
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape) == 0:
        raise ProtocolError(
            "wrong_shape", f"images[{key!r}] has shape {image.shape}; expected (H, W, 3) uint8 (HWC, RGB, H and W >= 1)"
        )
    return image


def _check_images(images: Any, metadata: dict) -> dict[str, np.ndarray]:
    camera_keys = list(metadata["camera_keys"])
    if not isinstance(images, dict):
        raise ProtocolError("wrong_type", f"'images' must be a map camera_key -> image, got {type(images).__name__}")
    got = sorted(str(k) for k in images)
    if got != sorted(camera_keys):
        raise ProtocolError(
            "wrong_views",
            f"got {len(got)} view(s) {got}; this policy takes {len(camera_keys)} view(s) {camera_keys} "
            "(send exactly these camera keys)",
        )
    # Any H x W: the model resizes every view to metadata["image_size"] itself (sending that size saves bandwidth).
    return {key: _check_image(key, images[key]) for key in camera_keys}


def _check_state(state: Any, state_dim: int) -> np.ndarray:
    if isinstance(state, (list, tuple)):
        state = np.asarray(state)
    if not isinstance(state, np.ndarray):
        raise ProtocolError("wrong_type", f"'state' must be a float32 array [{state_dim}], got {type(state).__name__}")
    if state.dtype.kind not in "fiu":
        raise ProtocolError("wrong_dtype", f"'state' has dtype {state.dtype}; expected float32 [{state_dim}]")
    if state.shape != (state_dim,):
        raise ProtocolError("wrong_shape", f"'state' has shape {state.shape}; expected ({state_dim},) float32")
    state = state.astype(np.float32)
    if not np.isfinite(state).all():
        raise ProtocolError(
            "invalid_value", f"'state' contains NaN or inf at indices {np.flatnonzero(~np.isfinite(state)).tolist()}"
        )
    return state


def validate_observation(obs: Any, metadata: dict) -> dict:
    """obs (decoded wire message) -> {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str}

    Raises `ProtocolError` naming the problem. Extra top-level keys are ignored (clients may send more).
    """
    if not isinstance(obs, dict):
        raise ProtocolError("malformed_message", f"an observation must be a map, got {type(obs).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obs]
    if missing:
        raise ProtocolError(
            "missing_key",
            f"observation lacks {missing}; expected keys {list(REQUIRED_KEYS)}, got {sorted(map(str, obs))}",
        )
    prompt = obs["prompt"]
    if not isinstance(prompt, str):
        raise ProtocolError("wrong_type", f"'prompt' must be a string, got {type(prompt).__name__}")
    return {
        "images": _check_images(obs["images"], metadata),
        "state": _check_state(obs["state"], int(metadata["state_dim"])),
        "prompt": prompt,
    }
