"""Batched actors of the rollout engine (rollout.py): one model call serves every live episode.

GreedyActor(policy)                           the policy as served (processor, Policy.predict, output steps)
SamplingActor(policy, temperature, generator) RL: sampled chunks with the log-probabilities of the choices
"""

from __future__ import annotations

import numpy as np
import torch

from vlablocks.core.capabilities import StochasticPolicy, require
from vlablocks.core.evaluation.rollout import Episode, check_request


class GreedyActor:
    """The policy as served: the processor, `Policy.predict` (greedy for the binned head), the output steps.

    requests [n] -> (chunks [n, T, D] robot units, n empty records); each episode's first request is checked
    against the processor's metadata (as `PolicyActor` checks a served policy's)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    @torch.no_grad()
    def __call__(self, requests: list[dict], episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        for request, episode in zip(requests, episodes):
            if episode.policy_calls == 0:
                check_request(request, self.policy.metadata)
        actions = self.policy.predict(requests)["actions"]
        return actions, [{} for _ in requests]


class SamplingActor:
    """Samples chunks at `temperature` and records, per request, the choices and their log-probabilities.

    policy: a Policy whose model has `sample_with_log_probs(batch, temperature, generator)` (QwenOFT with the
    binned head: normalized "actions"; QwenFAST: "action_tokens" the processor decodes). Records, per request:
    {"choices": [N] long, "log_probs": [N], "mask": [N] bool}.
    """

    def __init__(self, policy, temperature: float, generator: torch.Generator | None = None) -> None:
        require(policy.model, StochasticPolicy, "sampling rollouts")
        self.policy, self.temperature, self.generator = policy, temperature, generator

    @torch.no_grad()
    def __call__(self, requests: list[dict], episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        processor, model = self.policy.processor, self.policy.model
        batch = processor(requests, targets=False).to(model.device)
        drawn = model.sample_with_log_probs(batch, self.temperature, self.generator)
        output = {key: drawn[key] for key in ("actions", "action_tokens") if key in drawn}
        actions = processor.postprocess(output, batch)["actions"]
        choices, log_probs, mask = (drawn[key].cpu() for key in ("choices", "log_probs", "mask"))
        records = [{"choices": choices[k], "log_probs": log_probs[k], "mask": mask[k]} for k in range(len(requests))]
        return actions, records
