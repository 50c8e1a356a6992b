"""What the server serves: the `ServedPolicy` protocol, and `load_policy` (a checkpoint -> a vlablocks `Policy`,
vlablocks/core/policy/policy.py, which implements the protocol)."""

from __future__ import annotations

import os
from typing import Protocol

from vlablocks.core.capabilities import ValuePredictor
from vlablocks.core.policy.policy import Policy

METADATA_KEYS = ("action_horizon", "action_dim", "state_dim", "camera_keys", "image_size", "embodiment")


class ServedPolicy(Protocol):
    """metadata: action_horizon, action_dim, state_dim, camera_keys, image_size, embodiment.

    `infer` receives a validated observation in the sample vocabulary (vlablocks/core/dataloader/sample.py:
    {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str, ...}) and returns
    {"actions": float32 [T, D]} in robot units (un-normalized).
    """

    metadata: dict

    def infer(self, obs: dict) -> dict: ...


def load_policy(checkpoint_dir: str | os.PathLike, device: str = "cpu", weights: str = "model") -> Policy:
    """A checkpoint written by `save_pretrained` -> a servable policy on `device` (weights "ema": the average)."""
    policy = Policy.from_pretrained(checkpoint_dir, weights=weights)
    if isinstance(policy.model, ValuePredictor):
        raise ValueError(
            f"{checkpoint_dir} holds a value model ({type(policy.model).__name__}), which predicts no actions: "
            "serve or evaluate a policy checkpoint (value models: `vlablocks value --ckpt ...`)"
        )
    return policy.to(device)
