"""What the server serves: the `Policy` protocol and the adapter from a vlablocks framework to it."""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

METADATA_KEYS = ("action_horizon", "action_dim", "state_dim", "camera_keys", "image_size", "embodiment")


class Policy(Protocol):
    """metadata: action_horizon, action_dim, state_dim, camera_keys, image_size, embodiment.

    `infer` receives a validated observation {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S],
    "prompt": str} and returns {"actions": float32 [T, D]} in robot units (un-normalized).
    """

    metadata: dict

    def infer(self, obs: dict) -> dict: ...


class FrameworkPolicy:
    """Serves a framework: one observation -> a batch of one example -> `predict_action` -> actions [T, D].

    The framework un-normalizes inside `predict_action` with the checkpoint's stats. Calls are not thread-safe;
    the server runs them one at a time.
    """

    def __init__(self, framework: Any) -> None:
        self.framework = framework
        platform = framework.platform
        image_size = framework.image_size
        self.metadata = {
            "action_horizon": int(platform.action_horizon),
            "action_dim": int(platform.action_dim),
            "state_dim": int(platform.state_dim),
            "camera_keys": list(framework.camera_keys),
            "image_size": list(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
            "embodiment": str(framework.embodiment),
        }

    def infer(self, obs: dict) -> dict:
        """obs: validated observation -> {"actions": float32 [T, D]}"""
        example = {
            # Decoded arrays are read-only views on the network buffer; the model may want to write.
            "image": [np.array(obs["images"][key]) for key in self.metadata["camera_keys"]],
            "lang": obs["prompt"],
            "state": np.array(obs["state"], dtype=np.float32),
            "dataset_name": self.metadata["embodiment"],
        }
        actions = np.asarray(self.framework.predict_action([example])["actions"], dtype=np.float32)
        return {"actions": actions[0]}


def load_policy(checkpoint_dir: str | os.PathLike, device: str = "cpu") -> FrameworkPolicy:
    """A checkpoint written by `save_pretrained` -> a servable policy on `device`."""
    import torch

    from vlablocks.framework.base import Framework

    framework = Framework.from_pretrained(checkpoint_dir)
    framework.to(torch.device(device))
    return FrameworkPolicy(framework)
