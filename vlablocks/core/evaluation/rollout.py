"""The rollout engine: closed-loop episodes over a vector env, one actor call serving every live episode.

    episodes = run_episodes(envs, seeds, actor, open_loop_horizon=4)        # any number of seeds, N at a time
    summary = evaluate(env_or_envs, policy_or_actor, episodes=50, seed=1000, out_dir=..., open_loop_horizon=4)

Every closed-loop figure goes through `run_episodes`: `vlablocks eval` (checkpoint or websocket policy), periodic
eval, phrasing eval, RL's sampled rollouts and greedy eval, QD search, the demo, flow inversion and the LIBERO
example. The seeds run len(envs) at a time (a vector env of one runs them one after another: the same code path).
Per call the actor gets the requests of the live episodes [n] and returns action chunks [n, T, D] in robot units
plus one record per request (RL: the sampled choices and their log-probabilities); each chunk is played open-loop
for `open_loop_horizon` steps (the whole chunk by default), the episodes that end drop out of the next call.

An actor is either batched (actors.py: `GreedyActor`, `SamplingActor`, one framework call for all) or a policy with
`infer(request) -> {"actions": [T, D]}` (the websocket `PolicyClient`, a `Policy`, the baselines) wrapped in
`PolicyActor`, queried once per live env: the chunk broker's semantics, the open-loop horizon being the actions
played per chunk. Requests are the env observations (the sample.py contract), with the instruction replaced when
the episode is given another one (the wrong-instruction control, a rephrasing); the first request of each episode
is checked against the policy's metadata (camera keys, state dim) when it has any.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from vlablocks.core.dataloader.sample import SampleError, validate_sample
from vlablocks.core.envs.vector import InProcessEnvs
from vlablocks.core.evaluation.summary import success_summary
from vlablocks.core.evaluation.video import save_episode_gif
from vlablocks.core.processor.embodiment import embodiment_sizes


@dataclass
class PolicyCall:
    observation: dict  # the request the policy was given (with the instruction it was given)
    record: dict  # the actor's per-request record, e.g. {"choices", "log_probs", "mask"} (CPU tensors)


@dataclass
class Episode:
    index: int  # the env of the vector env that runs it
    seed: int
    instruction: str  # the env's own
    given: str  # the instruction the policy was given
    success: bool = False
    steps: int = 0
    info: dict = field(default_factory=dict)  # the last step's
    policy_calls: int = 0
    infer_ms: list[float] = field(default_factory=list)  # wall time of each actor call that served it
    calls: list[PolicyCall] = field(default_factory=list)  # with keep_calls: what an RL update recomputes from
    frames: list[np.ndarray] = field(default_factory=list)  # recorded: the first view at reset and after each step

    def record(self) -> dict:
        """The per-episode record of summary.json."""
        infer_ms = float(np.median(self.infer_ms)) if self.infer_ms else 0.0
        return {"seed": self.seed, "success": self.success, "steps": self.steps, "instruction": self.instruction,
                "infer_ms": infer_ms}  # fmt: skip


class Actor(Protocol):
    def __call__(self, requests: list[dict], episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        """requests of the live episodes [n] (and those episodes) -> (chunks [n, T, D] robot units, n records)."""
        ...


@runtime_checkable
class InferencePolicy(Protocol):
    def infer(self, obs: dict) -> dict: ...


@runtime_checkable
class EpisodicPolicy(Protocol):
    def reset(self) -> None: ...


def check_request(obs: dict, metadata: dict) -> None:
    """Raises `SampleError` where an env observation is not a request a policy of `metadata` takes (a baseline has
    none). Catches an env/policy camera mismatch (e.g. a two-view checkpoint on a one-camera env) before inference."""
    try:
        state_dim = embodiment_sizes(metadata, obs)[2]  # a cross-embodiment policy: the obs' robot's own size
    except ValueError as exc:
        raise SampleError("invalid_value", str(exc)) from None
    validate_sample(obs, camera_keys=metadata.get("camera_keys"), state_dim=state_dim)


def played_per_chunk(metadata: dict) -> int:
    """Actions of each chunk a client plays before it asks again: the served `n_action_steps` (platform config),
    else the whole chunk (`action_horizon`)."""
    return int(metadata.get("n_action_steps") or metadata["action_horizon"])


def first_view(obs: dict) -> np.ndarray:
    return next(iter(obs["images"].values()))


class PolicyActor:
    """A policy with `infer(request) -> {"actions": [T, D]}` queried once per live env -> chunks [n, T, D] float32.

    At each episode's first request: the request is checked against the policy's metadata and a policy with
    per-episode state is reset (`reset()`, as the chunk broker does); such a policy drives one env at a time."""

    def __init__(self, policy: InferencePolicy) -> None:
        self.policy = policy
        self.metadata = getattr(policy, "metadata", None) or {}  # a baseline declares none

    def __call__(self, requests: list[dict], episodes: list[Episode]) -> tuple[np.ndarray, list[dict]]:
        chunks = []
        for request, episode in zip(requests, episodes):
            if episode.policy_calls == 0:
                check_request(request, self.metadata)
                if isinstance(self.policy, EpisodicPolicy):
                    self.policy.reset()
            chunks.append(np.asarray(self.policy.infer(request)["actions"], np.float32))
        return np.stack(chunks), [{} for _ in requests]


def as_actor(policy: InferencePolicy | Actor) -> Actor:
    """A policy with `infer` -> its `PolicyActor`; an actor as it is."""
    return PolicyActor(policy) if isinstance(policy, InferencePolicy) else policy


def as_vector(envs) -> InProcessEnvs:
    """One env -> a vector env of one; a vector env as it is."""
    return envs if isinstance(envs, InProcessEnvs) else InProcessEnvs.wrap([envs])


def run_episodes(
    envs: InProcessEnvs,
    seeds: Sequence[int],
    actor: Actor,
    open_loop_horizon: int | None = None,
    wrong_instruction: bool = False,
    instructions: Sequence[str] | None = None,
    videos: int = 0,
    keep_calls: bool = True,
    progress: str | None = None,
) -> list[Episode]:
    """Runs one episode per seed (from env reset(seed)), len(envs) at a time -> one Episode each, in seed order.

    wrong_instruction: the policy is told another object (the language control, `env.wrong_instruction()`).
    instructions: one per seed, given to the policy instead of the env's own (a rephrasing of it).
    videos: the first `videos` episodes keep their frames (every step observed).
    keep_calls: keep every call's request and record on its episode (RL; evaluation needs none).
    progress: a tqdm bar over the episodes with this description; None: no bar.
    """
    if wrong_instruction and instructions is not None:
        raise ValueError("wrong_instruction and instructions exclude each other")
    if instructions is not None and len(instructions) != len(seeds):
        raise ValueError(f"instructions must give one per episode: {len(instructions)} for {len(seeds)} seeds")
    if open_loop_horizon is not None and open_loop_horizon < 1:
        raise ValueError(f"open_loop_horizon must be >= 1, got {open_loop_horizon}")
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds), desc=progress, dynamic_ncols=True)
    episodes, size = [], len(envs)
    for start in range(0, len(seeds), size):
        part = [int(seed) for seed in seeds[start : start + size]]
        given = list(instructions[start : start + size]) if instructions is not None else [None] * len(part)
        record = [start + k < videos for k in range(len(part))]
        episodes += _run_batch(envs, part, actor, open_loop_horizon, wrong_instruction, given, record, keep_calls)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return episodes


def _run_batch(envs, seeds, actor, horizon, wrong_instruction, given, record, keep_calls) -> list[Episode]:
    """Episodes of `seeds` on envs 0 .. len(seeds) - 1 at once (given[k]: None for the env's own instruction)."""
    observations = envs.reset(seeds)
    episodes = []
    for i, (seed, obs) in enumerate(zip(seeds, observations)):
        told = envs.wrong_instruction(i) if wrong_instruction else given[i] or obs["prompt"]
        episodes.append(Episode(i, seed, obs["prompt"], told, frames=[first_view(obs)] if record[i] else []))
    live = list(range(len(seeds)))
    while live:
        requests = [_request(observations[i], episodes[i].given) for i in live]
        start = time.perf_counter()
        chunks, records = actor(requests, [episodes[i] for i in live])
        elapsed_ms = (time.perf_counter() - start) * 1e3
        chunks = np.asarray(chunks)  # [n, T, D], the actor's dtype (an env casts as it needs)
        for i, request, call_record in zip(live, requests, records):
            episode = episodes[i]
            episode.policy_calls += 1
            episode.infer_ms.append(elapsed_ms)
            if keep_calls:
                episode.calls.append(PolicyCall(request, call_record))
        played = horizon or chunks.shape[1]
        if played > chunks.shape[1]:
            raise ValueError(
                f"open_loop_horizon {played} is longer than the policy's chunk of {chunks.shape[1]} actions; "
                f"use at most {chunks.shape[1]}"
            )
        running = dict(zip(live, chunks))
        for t in range(played):
            # only the observation after the chunk is read (envs that can skip rendering the rest), or every frame
            observe = t == played - 1 or any(record[i] for i in running)
            results = envs.step({i: chunk[t] for i, chunk in running.items()}, observe=observe)
            for i, (obs, _, done, info) in results.items():
                episode = episodes[i]
                episode.steps += 1
                if obs is not None:
                    observations[i] = obs
                    if record[i]:
                        episode.frames.append(first_view(obs))
                if done:
                    episode.success, episode.info = bool(info["success"]), info
                    del running[i]
            if not running:
                break
        live = [i for i in live if i in running]
    return episodes


def _request(obs: dict, instruction: str) -> dict:
    return obs if instruction == obs["prompt"] else {**obs, "prompt": instruction}


def evaluate(
    envs,
    policy: InferencePolicy | Actor,
    episodes: int,
    seed: int,
    out_dir: Path,
    open_loop_horizon: int,
    videos: int = 3,
    wrong_instruction: bool = False,
    progress: bool = True,
    videos_by_outcome: bool = False,
    video_stride: int = 1,
) -> dict:
    """Episodes of seeds seed .. seed + episodes - 1 over `envs` (an env, or a vector env running len(envs) at a
    time) -> summary (success with its Wilson CI, per-episode records), also written to out_dir/summary.json,
    with GIFs of the first `videos` episodes. `policy`: an `infer` policy (queried per env) or an actor.

    videos_by_outcome: every episode is recorded and the GIFs are of the first success and the first failure;
    video_stride: every video_stride-th frame goes into a GIF (fast control rates, e.g. Meta-World's 80 Hz)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = run_episodes(
        as_vector(envs),
        range(seed, seed + episodes),
        as_actor(policy),
        open_loop_horizon,
        wrong_instruction,
        videos=episodes if videos_by_outcome else videos,
        keep_calls=False,
        progress="eval" if progress else None,
    )
    video_paths, outcomes_saved = [], set()
    for i, episode in enumerate(runs):
        outcome = "success" if episode.success else "failure"
        if episode.frames and not (videos_by_outcome and outcome in outcomes_saved):
            path = out_dir / f"episode_{i:03d}_{outcome}.gif"
            frames = episode.frames[::video_stride] + (
                [episode.frames[-1]] if (len(episode.frames) - 1) % video_stride else []
            )
            save_episode_gif(frames, path, episode.given, episode.success, episode.info)
            video_paths.append(str(path))
            outcomes_saved.add(outcome)
        episode.frames = []  # the GIF is written: a suite of many episodes keeps no frames
    records = [episode.record() for episode in runs]
    summary = {
        **success_summary(sum(episode.success for episode in runs), episodes),
        "mean_steps": float(np.mean([r["steps"] for r in records])) if records else 0.0,
        "median_infer_ms": float(np.median([r["infer_ms"] for r in records])) if records else 0.0,
        "wrong_instruction": wrong_instruction,
        "videos": video_paths,
        "per_episode": records,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
