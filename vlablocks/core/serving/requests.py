"""The server's one validation path for a request, whatever policy (or policy wrapper) it serves.

1. `validate_observation`: the decoded message against the observation contract (`validate_sample` with the
   policy's metadata) and a closed set of request fields (`REQUEST_KEYS`): a training-only field (`answer`,
   `action`, ...) or an unknown key is refused at the door, never passed to the processor.
2. The prompt's character limit, before anything is tokenized.
3. The served policy's own `check_request` (tokens and control tokens with its tokenizer, known dataset names,
   a steered policy's latent tasks): a client mistake is `invalid_value`, never an `inference_error`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from deployment.client.protocol import ProtocolError
from vlablocks.core.dataloader.sample import SampleError, validate_sample
from vlablocks.core.processor.embodiment import embodiment_sizes

# What a request may carry: the observation, the robot's name and dataset (which stats), the first request of an
# episode (`episode_start`: per-episode policies reset), and the stages' instructions (`subtasks`, steering).
OBSERVATION_KEYS = ("images", "state", "prompt", "depth", "intrinsics")
REQUEST_KEYS = (*OBSERVATION_KEYS, "embodiment", "dataset_name", "episode_start", "subtasks")
MAX_NAME_CHARS = 200  # dataset_name / embodiment
MAX_SUBTASKS = 8


def _state_as_float32(state: Any) -> Any:
    """The wire accepts a state of any real numeric dtype (or a list of numbers) and casts it to float32."""
    if isinstance(state, (list, tuple)):
        with contextlib.suppress(ValueError):  # ragged: left for the validator to name
            state = np.asarray(state)
    if isinstance(state, np.ndarray) and state.dtype.kind in "fiu":
        return state.astype(np.float32, copy=False)
    return state


def _check_fields(obs: dict, max_prompt_chars: int) -> None:
    """The closed set of request keys and the types of the non-observation fields."""
    unknown = [key for key in obs if key not in REQUEST_KEYS]
    if unknown:
        shown = sorted(repr(k)[:40] for k in unknown)[:5]
        raise ProtocolError(
            "invalid_value",
            f"unknown request key(s) {shown}: a request carries only {list(REQUEST_KEYS)} "
            "(training fields such as 'action' or 'answer' are never sent to a server)",
        )
    for key in ("embodiment", "dataset_name"):
        if key in obs and not isinstance(obs[key], str):
            raise ProtocolError("wrong_type", f"{key!r} must be a string, got {type(obs[key]).__name__}")
        if key in obs and not 0 < len(obs[key]) <= MAX_NAME_CHARS:
            raise ProtocolError("invalid_value", f"{key!r} must be 1 to {MAX_NAME_CHARS} characters")
    if "episode_start" in obs and not isinstance(obs["episode_start"], bool):
        raise ProtocolError(
            "wrong_type", f"'episode_start' must be true or false, got {type(obs['episode_start']).__name__}"
        )
    if "subtasks" in obs:
        subtasks = obs["subtasks"]
        if not isinstance(subtasks, (list, tuple)) or not all(isinstance(s, str) for s in subtasks):
            raise ProtocolError("wrong_type", "'subtasks' must be a list of instruction strings")
        if len(subtasks) > MAX_SUBTASKS or any(len(s) > max_prompt_chars for s in subtasks):
            raise ProtocolError(
                "invalid_value", f"'subtasks' holds at most {MAX_SUBTASKS} strings of <= {max_prompt_chars} characters"
            )


def validate_observation(obs: Any, metadata: dict) -> dict:
    """obs (decoded wire message) -> the request the policy gets: the same map with `images` in the order of
    metadata["camera_keys"] and `state` float32 [metadata["state_dim"]]; only `REQUEST_KEYS` are accepted.
    A policy serving several embodiments (metadata["embodiments"]): the request's `embodiment` (default
    metadata["embodiment"]) must be one of them, its state is checked against that robot's own state_dim, a
    `dataset_name` must be one of that robot's datasets, and the returned request names the embodiment.

    Raises `ProtocolError` naming the problem (see `validate_sample`).
    """
    if isinstance(obs, dict):
        _check_fields(obs, int(metadata.get("max_prompt_chars", 2000)))
    if isinstance(obs, dict) and "state" in obs:
        obs = {**obs, "state": _state_as_float32(obs["state"])}
    camera_keys = list(metadata["camera_keys"])
    state_dim = int(metadata["state_dim"])
    if metadata.get("embodiments") and isinstance(obs, dict):
        try:
            embodiment, _, state_dim = embodiment_sizes(metadata, obs)
        except ValueError as exc:
            raise ProtocolError("invalid_value", str(exc)) from None
        datasets = metadata["embodiments"][embodiment].get("datasets") or []
        if "dataset_name" in obs and obs["dataset_name"] not in datasets:
            raise ProtocolError(
                "invalid_value",
                f"'dataset_name' {obs['dataset_name'][:80]!r} is not one of embodiment {embodiment!r}'s datasets "
                f"{datasets}: send a matching pair, or only the embodiment",
            )
        obs = {**obs, "embodiment": embodiment}
    try:
        validate_sample(obs, camera_keys=camera_keys, state_dim=state_dim)
    except SampleError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    # Any H x W: the model resizes every view to metadata["image_size"] itself (sending that size saves bandwidth).
    return {**obs, "images": {key: obs["images"][key] for key in camera_keys}}


def check_prompt_chars(prompt: str, max_prompt_chars: int) -> None:
    if len(prompt) > max_prompt_chars:
        raise ProtocolError(
            "invalid_value", f"'prompt' is {len(prompt)} characters, over the limit of {max_prompt_chars}"
        )
