"""What the server serves: the `Policy` protocol and the adapter from a vlablocks framework to it."""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

METADATA_KEYS = ("action_horizon", "action_dim", "state_dim", "camera_keys", "image_size", "embodiment")


class Policy(Protocol):
    """metadata: action_horizon, action_dim, state_dim, camera_keys, image_size, embodiment.

    `infer` receives a validated observation in the sample vocabulary (vlablocks/core/dataloader/sample.py:
    {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str, ...}) and returns
    {"actions": float32 [T, D]} in robot units (un-normalized).
    """

    metadata: dict

    def infer(self, obs: dict) -> dict: ...


class FrameworkPolicy:
    """Serves a framework: one observation -> its processor -> the model -> the processor's output steps.

    The metadata is the checkpoint's processor config; calls are not thread-safe (the server runs them one at
    a time).
    """

    def __init__(self, framework: Any) -> None:
        if framework.processor is None:
            raise ValueError("FrameworkPolicy needs a framework with a processor (load a checkpoint or build_policy)")
        self.framework = framework
        self.metadata = framework.processor.metadata

    def check_prompt(self, prompt: str, max_tokens: int) -> None:
        """ValueError naming the problem when the instruction is empty, too long or holds control tokens."""
        self.framework.processor.check_prompt(prompt, max_tokens)

    def infer(self, obs: dict) -> dict:
        """obs: validated observation -> {"actions": float32 [T, D]}"""
        # Decoded arrays are read-only views on the network buffer; the processor may want to write.
        sample = {**obs, "images": {key: np.array(view) for key, view in obs["images"].items()}}
        actions = np.asarray(self.framework.predict_action([sample])["actions"], dtype=np.float32)
        return {"actions": actions[0]}


def load_policy(checkpoint_dir: str | os.PathLike, device: str = "cpu", weights: str = "model") -> FrameworkPolicy:
    """A checkpoint written by `save_pretrained` -> a servable policy on `device` (weights "ema": the average)."""
    import torch

    from vlablocks.core.capabilities import ValuePredictor
    from vlablocks.core.framework.base import Framework

    framework = Framework.from_pretrained(checkpoint_dir, weights=weights)
    if isinstance(framework, ValuePredictor):
        raise ValueError(
            f"{checkpoint_dir} holds a value model ({type(framework).__name__}), which predicts no actions: "
            "serve or evaluate a policy checkpoint (value models: `vlablocks value --ckpt ...`)"
        )
    framework.to(torch.device(device))
    return FrameworkPolicy(framework)
