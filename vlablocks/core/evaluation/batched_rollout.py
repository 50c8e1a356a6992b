"""Batched closed-loop rollouts: one policy call serves every live episode of a vector env.

    episodes = run_batched_episodes(envs, seeds, SamplingActor(framework, temperature=1.6, generator=g))

Each policy call takes the observations of the live episodes [N] and returns action chunks [N, T, D] in
robot units plus one record per observation (for RL: the sampled choices and their log-probabilities);
the chunks are played open-loop (`open_loop_horizon` steps, the whole chunk by default) and the episodes
that end drop out of the next call. An `Episode` keeps every call's observation (as the policy saw it) and
record, which is what an RL update recomputes log-probabilities from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

Actor = Callable[[list[dict]], tuple[np.ndarray, list[dict]]]


@dataclass
class PolicyCall:
    observation: dict  # the request the policy was given (with the instruction it was given)
    record: dict  # the actor's per-observation record, e.g. {"choices", "log_probs", "mask"} (CPU tensors)


@dataclass
class Episode:
    seed: int
    success: bool = False
    steps: int = 0
    calls: list[PolicyCall] = field(default_factory=list)


def run_batched_episodes(
    envs,
    seeds: list[int],
    actor: Actor,
    open_loop_horizon: int | None = None,
    wrong_instruction: bool = False,
    instructions: list[str] | None = None,
) -> list[Episode]:
    """Runs len(envs) episodes at once (env i from seeds[i]) -> one Episode each, in env order.

    wrong_instruction: the policy is told the colour of another object (the language control).
    instructions: one per env, given to the policy instead of the env's own (a rephrasing of it).
    """
    if wrong_instruction and instructions is not None:
        raise ValueError("wrong_instruction and instructions exclude each other")
    if instructions is not None and len(instructions) != len(seeds):
        raise ValueError(f"instructions must give one per episode: {len(instructions)} for {len(seeds)} seeds")
    observations = envs.reset(seeds)
    given = instructions or [envs.wrong_instruction(i) if wrong_instruction else None for i in range(len(seeds))]
    episodes = [Episode(int(seed)) for seed in seeds]
    live = list(range(len(seeds)))
    while live:
        requests = [observations[i] if given[i] is None else {**observations[i], "prompt": given[i]} for i in live]
        chunks, records = actor(requests)
        for i, request, record in zip(live, requests, records):
            episodes[i].calls.append(PolicyCall(request, record))
        horizon = open_loop_horizon or chunks.shape[1]
        if not 1 <= horizon <= chunks.shape[1]:
            raise ValueError(f"open_loop_horizon must be in [1, {chunks.shape[1]}] (the chunk), got {horizon}")
        running = dict(zip(live, chunks))
        for t in range(horizon):
            last = t == horizon - 1  # only the observation after the chunk is read (envs that can, skip the rest)
            results = envs.step({i: chunk[t] for i, chunk in running.items()}, observe=last)
            for i, (obs, _, done, info) in results.items():
                if obs is not None:
                    observations[i] = obs
                episodes[i].steps += 1
                if done:
                    episodes[i].success = bool(info["success"])
                    del running[i]
            if not running:
                break
        live = [i for i in live if i in running]
    return episodes


class GreedyActor:
    """The policy as served: the processor, `sample_actions` (greedy for the binned head), the output steps."""

    def __init__(self, framework) -> None:
        self.framework = framework

    @torch.no_grad()
    def __call__(self, observations: list[dict]) -> tuple[np.ndarray, list[dict]]:
        actions = self.framework.predict_action(observations)["actions"]
        return actions, [{} for _ in observations]


class SamplingActor:
    """Samples chunks at `temperature` and records, per observation, the choices and their log-probabilities.

    framework: any framework with `sample_with_log_probs(batch, temperature, generator)` (QwenOFT with the
    binned head: normalized "actions"; QwenFAST: "action_tokens" the processor decodes). Records, per observation:
    {"choices": [N] long, "log_probs": [N], "mask": [N] bool}.
    """

    def __init__(self, framework, temperature: float, generator: torch.Generator | None = None) -> None:
        if not hasattr(framework, "sample_with_log_probs"):
            raise ValueError(f"{type(framework).__name__} has no stochastic policy (sample_with_log_probs) to sample")
        self.framework, self.temperature, self.generator = framework, temperature, generator

    @torch.no_grad()
    def __call__(self, observations: list[dict]) -> tuple[np.ndarray, list[dict]]:
        processor = self.framework.processor
        batch = processor(observations, targets=False).to(self.framework.device)
        drawn = self.framework.sample_with_log_probs(batch, self.temperature, self.generator)
        output = {key: drawn[key] for key in ("actions", "action_tokens") if key in drawn}
        actions = processor.postprocess(output, batch)["actions"]
        choices, log_probs, mask = (drawn[key].cpu() for key in ("choices", "log_probs", "mask"))
        records = [
            {"choices": choices[k], "log_probs": log_probs[k], "mask": mask[k]} for k in range(len(observations))
        ]
        return actions, records
