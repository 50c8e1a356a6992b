"""`ActionChunkBroker`: plays a predicted chunk out one step per call (open-loop), re-querying when done."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class InferencePolicy(Protocol):
    def infer(self, obs: dict) -> dict: ...


class ActionChunkBroker:
    """Wraps a policy returning `{"actions": [T, D]}` into one returning `{"actions": [D]}` per call.

    The first `open_loop_horizon` steps of each chunk are executed without looking at new observations
    (the observations passed meanwhile are ignored); then the next call queries the policy again.
    `open_loop_horizon` must be between 1 and the chunk length T.
    """

    def __init__(self, policy: InferencePolicy, open_loop_horizon: int) -> None:
        if open_loop_horizon < 1:
            raise ValueError(f"open_loop_horizon must be >= 1, got {open_loop_horizon}")
        self.policy = policy
        self.open_loop_horizon = open_loop_horizon
        self._chunk: dict[str, Any] | None = None
        self._step = 0

    def infer(self, obs: dict) -> dict:
        """-> {"actions": [D], "chunk_step": int, ...the chunk reply's other keys (e.g. server_timing)}"""
        if self._chunk is None:
            chunk = self.policy.infer(obs)
            length = np.asarray(chunk["actions"]).shape[0]
            if self.open_loop_horizon > length:
                raise ValueError(
                    f"open_loop_horizon {self.open_loop_horizon} is longer than the policy's chunk of {length} "
                    f"actions; use at most {length}"
                )
            self._chunk, self._step = chunk, 0
        result = dict(self._chunk)
        result["actions"] = np.asarray(self._chunk["actions"])[self._step]
        result["chunk_step"] = self._step
        self._step += 1
        if self._step >= self.open_loop_horizon:
            self._chunk = None
        return result

    def reset(self) -> None:
        """Drops the chunk in flight (call at the start of an episode)."""
        self._chunk = None
        self._step = 0
        reset = getattr(self.policy, "reset", None)
        if reset is not None:
            reset()
