"""Closed-loop evaluation: run episodes of a registered env against a policy, report success with a CI.

A policy is anything with `infer(request) -> {"actions": [T, D]}` taking an observation of the sample.py
contract (`{"images": {camera_key: uint8 [H, W, 3]}, "prompt": str, "state": float32 [S], ...}`): the
websocket `PolicyClient`, the in-process `FrameworkPolicy`, or the baselines below. Env observations are
such requests already and go to the policy as they are; the first one of an episode is checked against the
policy's metadata (camera keys, state dim) when it has any. Chunks are played out by `ActionChunkBroker`
with a configurable open-loop horizon.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deployment.client.action_chunk_broker import ActionChunkBroker
from vlablocks.core.dataloader.sample import SampleError, validate_sample
from vlablocks.core.evaluation.video import save_episode_gif
from vlablocks.core.processor.embodiment import embodiment_sizes


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (well-behaved at 0% and 100%, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def success_summary(successes: int, trials: int) -> dict:
    """{"episodes", "successes", "success_rate", "ci95": Wilson 95% interval} of `successes` in `trials`."""
    low, high = wilson_interval(successes, trials)
    return {"episodes": trials, "successes": successes, "success_rate": successes / max(trials, 1), "ci95": [low, high]}


def check_request(obs: dict, policy) -> None:
    """Raises `SampleError` where an env observation is not a request this policy takes (a baseline has no metadata).

    Catches an env/policy camera mismatch (e.g. a two-view checkpoint on a one-camera env) before any inference.
    """
    metadata = getattr(policy, "metadata", None) or {}
    try:
        state_dim = embodiment_sizes(metadata, obs)[2]  # a cross-embodiment policy: the obs' robot's own size
    except ValueError as exc:
        raise SampleError("invalid_value", str(exc)) from None
    validate_sample(obs, camera_keys=metadata.get("camera_keys"), state_dim=state_dim)


def action_bounds(env) -> tuple[np.ndarray, np.ndarray]:
    """The env's action range: a gymnasium `action_space` (sim adapters), else +-`config.max_move` (toy)."""
    space = getattr(getattr(env, "env", None), "action_space", None)
    if space is not None:
        return np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    max_move = getattr(env.config, "max_move", None)
    if max_move is None:
        raise ValueError(f"env {env.config.name!r} exposes no action range for the random baseline")
    return np.full(env.action_dim, -max_move, np.float32), np.full(env.action_dim, max_move, np.float32)


def played_per_chunk(metadata: dict) -> int:
    """Actions of each chunk a client plays before it asks again: the served `n_action_steps` (platform config),
    else the whole chunk (`action_horizon`)."""
    return int(metadata.get("n_action_steps") or metadata["action_horizon"])


class RandomPolicy:
    """Baseline: actions drawn uniformly from [low, high] per dimension."""

    def __init__(self, low: np.ndarray, high: np.ndarray, horizon: int, seed: int = 0) -> None:
        self.low, self.high, self.horizon = np.asarray(low), np.asarray(high), horizon
        self.rng = np.random.default_rng(seed)

    def infer(self, request: dict) -> dict:
        return {"actions": self.rng.uniform(self.low, self.high, (self.horizon, len(self.low))).astype(np.float32)}


class ExpertPolicy:
    """The env's scripted expert behind the policy interface (validates the env and the success metric)."""

    def __init__(self, env) -> None:
        self.env = env

    def infer(self, request: dict) -> dict:
        return {"actions": self.env.expert_action()[None]}


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    instruction: str
    infer_ms: float


def first_view(obs: dict) -> np.ndarray:
    return next(iter(obs["images"].values()))


def run_episode(
    env, broker: ActionChunkBroker, seed: int, record: bool, wrong_instruction: bool, instruction: str | None = None
):
    """One episode -> (EpisodeResult, frames of the first view after every step if `record`, the last info,
    the instruction the policy was given). `instruction` replaces the env's own (a rephrasing of it)."""
    obs = env.reset(seed=seed)
    broker.reset()
    check_request(obs, broker.policy)
    given = instruction or (env.wrong_instruction() if wrong_instruction else obs["prompt"])
    replaced = given != obs["prompt"]
    frames = [first_view(obs)] if record else []
    infer_ms, done, info, steps = [], False, {"success": False}, 0
    while not done:
        if replaced:
            obs = {**obs, "prompt": given}
        start = time.perf_counter()
        reply = broker.infer(obs)
        infer_ms.append((time.perf_counter() - start) * 1e3)
        obs, _, done, info = env.step(np.asarray(reply["actions"], np.float32))
        steps += 1
        if record:
            frames.append(first_view(obs))
    result = EpisodeResult(seed, bool(info["success"]), steps, obs["prompt"], float(np.median(infer_ms)))
    return result, frames, info, given


def evaluate(
    env,
    policy,
    episodes: int,
    seed: int,
    out_dir: Path,
    open_loop_horizon: int,
    videos: int = 3,
    wrong_instruction: bool = False,
    progress: bool = True,
) -> dict:
    """Runs `episodes` seeded episodes; writes `summary.json` and GIFs of the first `videos` episodes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    broker = ActionChunkBroker(policy, open_loop_horizon)
    results, video_paths = [], []
    for i in tqdm(range(episodes), desc="eval", disable=not progress, dynamic_ncols=True):
        result, frames, info, given = run_episode(env, broker, seed + i, i < videos, wrong_instruction)
        results.append(result)
        if frames:
            path = out_dir / f"episode_{i:03d}_{'success' if result.success else 'failure'}.gif"
            save_episode_gif(frames, path, given, result.success, info)
            video_paths.append(str(path))
    summary = {
        **success_summary(sum(r.success for r in results), episodes),
        "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
        "median_infer_ms": float(np.median([r.infer_ms for r in results])) if results else 0.0,
        "wrong_instruction": wrong_instruction,
        "videos": video_paths,
        "per_episode": [r.__dict__ for r in results],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
