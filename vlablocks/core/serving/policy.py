"""What the server serves: the `ServedPolicy` protocol (a vlablocks `Policy` is one, vlablocks/core/policy/policy.py;
so is a steered policy), `served` (the check that a policy is one) and `load_policy` (a checkpoint -> a `Policy`)."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from vlablocks.core.capabilities import ValuePredictor
from vlablocks.core.policy.policy import Policy

METADATA_KEYS = ("action_horizon", "action_dim", "state_dim", "camera_keys", "image_size", "embodiment")


@runtime_checkable
class ServedPolicy(Protocol):
    """metadata: action_horizon, action_dim, state_dim, camera_keys, image_size, embodiment.

    `check_request(request, max_prompt_tokens)` raises ValueError naming a client mistake the observation contract
    cannot see (a prompt over the token limit or holding control tokens, an unknown dataset name or latent task);
    the server answers it as `invalid_value` before the model runs. Every served policy declares it: a wrapper
    cannot skip the checks of the policy it wraps by not forwarding them.

    `session()` -> the policy one connection talks to: itself when it keeps no per-episode state, else a fresh
    view sharing the model (a steered policy's schedule), so one client never moves another's episode.

    `infer` receives a validated request in the sample vocabulary (vlablocks/core/dataloader/sample.py:
    {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str, ...}) and returns
    {"actions": float32 [T, D]} in robot units (un-normalized).
    """

    metadata: dict

    def check_request(self, request: dict, max_prompt_tokens: int) -> None: ...

    def session(self) -> ServedPolicy: ...

    def infer(self, obs: dict) -> dict: ...


def served(policy: Policy | ServedPolicy) -> ServedPolicy:
    """The `ServedPolicy` the server talks to; TypeError naming what is missing for anything else."""
    if not isinstance(policy, ServedPolicy):
        missing = [name for name in ("metadata", "check_request", "session", "infer") if name not in dir(policy)]
        raise TypeError(
            f"{type(policy).__name__} is not a ServedPolicy: it lacks {missing} (vlablocks/core/serving/policy.py); "
            "a wrapper must forward the wrapped policy's check_request"
        )
    return policy


def load_policy(checkpoint_dir: str | os.PathLike, device: str = "cpu", weights: str = "model") -> Policy:
    """A checkpoint written by `save_pretrained` -> a servable policy on `device` (weights "ema": the average)."""
    policy = Policy.from_pretrained(checkpoint_dir, weights=weights)
    if isinstance(policy.model, ValuePredictor):
        raise ValueError(
            f"{checkpoint_dir} holds a value model ({type(policy.model).__name__}), which predicts no actions: "
            "serve or evaluate a policy checkpoint (value models: `vlablocks value --ckpt ...`)"
        )
    return policy.to(device)
