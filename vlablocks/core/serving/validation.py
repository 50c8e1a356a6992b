"""The server's side of the observation contract: `vlablocks.core.dataloader.sample.validate_sample` with the policy's
metadata, its `SampleError` answered as the wire's `ProtocolError` (same code, same one-line message)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from deployment.client.protocol import ProtocolError
from vlablocks.core.dataloader.sample import SampleError, validate_sample
from vlablocks.core.processor.embodiment import embodiment_sizes


def _state_as_float32(state: Any) -> Any:
    """The wire accepts a state of any real numeric dtype (or a list of numbers) and casts it to float32."""
    if isinstance(state, (list, tuple)):
        with contextlib.suppress(ValueError):  # ragged: left for the validator to name
            state = np.asarray(state)
    if isinstance(state, np.ndarray) and state.dtype.kind in "fiu":
        return state.astype(np.float32, copy=False)
    return state


def validate_observation(obs: Any, metadata: dict) -> dict:
    """obs (decoded wire message) -> the request the policy gets: the same map with `images` in the order of
    metadata["camera_keys"] and `state` float32 [metadata["state_dim"]]; other keys pass through unchecked.
    A policy serving several embodiments (metadata["embodiments"]): the request's `embodiment` (default
    metadata["embodiment"]) must be one of them, its state is checked against that robot's own state_dim, and the
    returned request names it.

    Raises `ProtocolError` naming the problem (see `validate_sample`).
    """
    if isinstance(obs, dict) and "state" in obs:
        obs = {**obs, "state": _state_as_float32(obs["state"])}
    camera_keys = list(metadata["camera_keys"])
    state_dim = int(metadata["state_dim"])
    if metadata.get("embodiments") and isinstance(obs, dict):
        try:
            embodiment, _, state_dim = embodiment_sizes(metadata, obs)
        except ValueError as exc:
            raise ProtocolError("invalid_value", str(exc)) from None
        obs = {**obs, "embodiment": embodiment}
    try:
        validate_sample(obs, camera_keys=camera_keys, state_dim=state_dim)
    except SampleError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    # Any H x W: the model resizes every view to metadata["image_size"] itself (sending that size saves bandwidth).
    return {**obs, "images": {key: obs["images"][key] for key in camera_keys}}
