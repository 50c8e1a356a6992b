"""The one observation vocabulary: dataset samples, env observations and server requests share these keys.

Values are numpy arrays (never tensors) and actions/state are RAW: the framework normalizes them with
`vlablocks.core.dataloader.normalization.Normalizer`, so that training and serving share one transform.
An observation (what an env returns, what a client sends the policy server) is a sample without
`action`/`action_is_pad`; a dataset sample minus its action is therefore a valid server request.
`validate_sample` is the single check of this contract, used by datasets, envs, evaluation and the server.
A vision-language sample (`VLSample`, co-training data) is an observation whose `prompt` is a question and which
carries its `answer` instead of an `action`; `is_vl_sample` tells the two kinds apart, `validate_vl_sample` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

import numpy as np


class Observation(TypedDict):
    """What a policy reads. V cameras with keys K (insertion-ordered as the dataset's/env's camera keys).

    images:        {K: uint8 [H, W, 3]} RGB (views may differ in size)
    prompt:        the instruction
    state:         float32 [S], raw proprioception (absent only where the platform has none)
    depth:         {K: float32 [H, W]} metres, same keys as images, same H, W as that view
    intrinsics:    {K: float32 [3, 3]} pinhole intrinsics, same keys as images
    A served request may also carry embodiment, dataset_name, episode_start and subtasks, and nothing else: the
    server refuses any other key, training fields included (vlablocks/core/serving/requests.py).
    """

    images: dict[str, np.ndarray]
    prompt: str
    state: NotRequired[np.ndarray]
    depth: NotRequired[dict[str, np.ndarray]]
    intrinsics: NotRequired[dict[str, np.ndarray]]


class Sample(Observation):
    """One training example: an `Observation` plus its target. Chunk length T, action dim D (from the platform).

    action:        float32 [T, D], raw; step t is the action t frames after the observation
    action_is_pad: bool [T], True where the chunk ran past the episode end (the value there repeats
                   the episode's last action and must not be learned from)
    dataset_name:  selects the normalization stats (`norm_stats.json` is keyed by it)
    embodiment:    the platform/robot tag
    next:          optional, {"depth": {K: [H, W]}, "intrinsics": {K: [3, 3]}, "valid": bool}: the depth of a
                   later frame (`dataset.next_frame_offset`), for world-model losses; never sent at inference
    """

    action: np.ndarray
    action_is_pad: np.ndarray
    dataset_name: str
    embodiment: str


class VLSample(TypedDict):
    """One vision-language example (image-question-answer, co-training): no action, no state.

    images:        {K: uint8 [H, W, 3]} RGB, the same camera keys as the robot samples it is mixed with
    prompt:        the question
    answer:        the target answer, plain text (the processor appends the end-of-turn token)
    dataset_name:  names the VL dataset (it has no normalization stats: nothing to normalize)
    """

    images: dict[str, np.ndarray]
    prompt: str
    answer: str
    dataset_name: str


TRAINING_KEYS = ("action", "action_is_pad", "dataset_name", "embodiment")
VL_KEYS = ("images", "prompt", "answer", "dataset_name")
# The machine codes a `SampleError` carries: a subset of the wire protocol's ERROR_TYPES.
ERROR_CODES = (
    "malformed_message",
    "missing_key",
    "wrong_views",
    "wrong_shape",
    "wrong_dtype",
    "wrong_type",
    "invalid_value",
)


class SampleError(ValueError):
    """A sample or request that breaks the contract. `code` is one of ERROR_CODES; `message` is one line
    naming the key, what was expected and what came."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def camera_name(feature_key: str) -> str:
    """A dataset's camera feature key -> the camera key of samples: `observation.images.top` -> `top`."""
    return feature_key.rsplit(".", 1)[-1]


def _shape_text(shape: Sequence[int | str]) -> str:
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


def _check_array(where: str, value: Any, dtype: type, shape: Sequence[int | str], hint: str = "") -> None:
    """`value` must be an ndarray of `dtype` and `shape` (str entries: any size >= 1, named in the message)."""
    expected = _shape_text(shape)
    name = np.dtype(dtype).name
    if not isinstance(value, np.ndarray):
        raise SampleError("wrong_type", f"{where} must be a numpy {name} array {expected}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise SampleError("wrong_dtype", f"{where} has dtype {value.dtype}; expected {name} {expected}{hint}")
    if value.ndim != len(shape) or any(
        got != want if isinstance(want, int) else got < 1 for got, want in zip(value.shape, shape)
    ):
        raise SampleError("wrong_shape", f"{where} has shape {value.shape}; expected {expected} {name}{hint}")


def _check_finite(where: str, value: np.ndarray) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        raise SampleError(
            "invalid_value", f"{where} has NaN or inf at indices {np.flatnonzero(bad).tolist()}; expected finite values"
        )


def _check_views(sample: dict, key: str, camera_keys: Sequence[str] | None) -> dict:
    views = sample[key]
    if not isinstance(views, dict):
        raise SampleError("wrong_type", f"{key!r} must be a map camera_key -> array, got {type(views).__name__}")
    got = sorted(map(str, views))
    if camera_keys is None and not got:
        raise SampleError("wrong_views", f"{key!r} has 0 views; expected at least one camera")
    if camera_keys is not None and got != sorted(camera_keys):
        raise SampleError(
            "wrong_views",
            f"{key!r} has {len(got)} view(s) {got}; expected {len(camera_keys)} view(s) {list(camera_keys)} "
            "(exactly these camera keys)",
        )
    return views


def validate_sample(
    sample: Any,
    *,
    camera_keys: Sequence[str] | None = None,
    state_dim: int | None = None,
    action_shape: tuple[int, int] | None = None,
) -> None:
    """Raises `SampleError` (code + one-line message naming key, expected and got) unless `sample` keeps the contract.

    camera_keys:  the keys `images` must have (in any order); None: any non-empty set
    state_dim:    S: `state` is required, float32 [S] and finite; None: `state` is optional (checked if present)
    action_shape: (T, D) for a training sample: `action` float32 [T, D], `action_is_pad` bool [T], `dataset_name`
                  and `embodiment` are then required; None for an observation/request, whose extra keys are ignored
    """
    if not isinstance(sample, dict):
        raise SampleError("malformed_message", f"a sample must be a map, got {type(sample).__name__}")
    required = ["images", "prompt", *(["state"] if state_dim is not None else [])]
    required += list(TRAINING_KEYS) if action_shape is not None else []
    missing = [k for k in required if k not in sample]
    if missing:
        raise SampleError(
            "missing_key", f"missing key(s) {missing}; expected keys {required}, got {sorted(map(str, sample))}"
        )
    if not isinstance(sample["prompt"], str):
        raise SampleError("wrong_type", f"'prompt' must be a string, got {type(sample['prompt']).__name__}")
    if not sample["prompt"].strip():
        raise SampleError("invalid_value", "'prompt' is empty; send the instruction as plain text")
    images = _check_views(sample, "images", camera_keys)
    for key, image in images.items():
        _check_array(f"images[{key!r}]", image, np.uint8, ("H", "W", 3), " (HWC, RGB, 0-255, not 0-1 floats)")
    if "state" in sample:
        _check_array("'state'", sample["state"], np.float32, (state_dim if state_dim is not None else "S",))
        _check_finite("'state'", sample["state"])
    if "depth" in sample:
        for key, depth in _check_views(sample, "depth", list(images)).items():
            _check_array(f"depth[{key!r}]", depth, np.float32, images[key].shape[:2], " (metres, the view's H, W)")
    if "intrinsics" in sample:
        for key, matrix in _check_views(sample, "intrinsics", list(images)).items():
            _check_array(f"intrinsics[{key!r}]", matrix, np.float32, (3, 3))
    if action_shape is not None:
        _check_array("'action'", sample["action"], np.float32, action_shape)
        _check_finite("'action'", sample["action"])
        _check_array("'action_is_pad'", sample["action_is_pad"], np.bool_, action_shape[:1])
        for key in ("dataset_name", "embodiment"):
            if not isinstance(sample[key], str):
                raise SampleError("wrong_type", f"{key!r} must be a string, got {type(sample[key]).__name__}")


def is_vl_sample(sample: dict) -> bool:
    """True for a vision-language sample: it has an `answer` and no `action` (robot samples never carry an answer;
    the FAST answer a processor derives from an action is a working key added later)."""
    return "answer" in sample and sample.get("action") is None


def validate_vl_sample(sample: Any, *, camera_keys: Sequence[str] | None = None) -> None:
    """Raises `SampleError` unless `sample` is a `VLSample`: images, a non-empty question and answer, a dataset_name,
    and no `action`."""
    if not isinstance(sample, dict):
        raise SampleError("malformed_message", f"a sample must be a map, got {type(sample).__name__}")
    missing = [k for k in VL_KEYS if k not in sample]
    if missing:
        raise SampleError(
            "missing_key", f"missing key(s) {missing}; a VL sample has keys {list(VL_KEYS)}, got {sorted(sample)}"
        )
    if "action" in sample:
        raise SampleError("invalid_value", "a VL sample has an 'answer' and no 'action'; drop one of them")
    validate_sample({k: sample[k] for k in ("images", "prompt")}, camera_keys=camera_keys)
    for key in ("answer", "dataset_name"):
        if not isinstance(sample[key], str) or not sample[key].strip():
            raise SampleError("invalid_value", f"{key!r} must be a non-empty string, got {sample[key]!r}")
