"""Rectified-flow inversion of a flow policy's chunks, closed loop on the toy env (`vlablocks invert`).

At every policy call of every episode, for the observation o (prompt p) and each step count S:

    a   = reconstruct(c_p, z0, N)      z0 ~ N(0, I), N = the head's num_inference_steps (= predict)
    z   = invert(c_p, a, S)            reverse-time Euler, t = 1 -> 0 (vlablocks/core/action_model/flow_matching.py)
    a'  = reconstruct(c_p, z, S)       the same prompt: a' = a + O(1 / S)
    a'' = reconstruct(c_q, z, S)       the edited prompt q = env.wrong_instruction() (names another block)
    a_q = reconstruct(c_q, z0, N)      re-prompting: the policy's own chunk for q from the same noise
    a_1 = reconstruct(c_p, z1, N)      another noise z1 ~ N(0, I): how much the chunk depends on its noise at all

c_p = framework.flow_conditioning(batch of o with prompt p). Per chunk: MSE(a, a') in normalized and in raw
(robot) units, MSE(z, z0) and mean(z^2) (does the inversion recover the sampled noise?), MSE(a'', a_q) against
MSE(a, a_q) (is the edit the same as re-prompting?), MSE(a, a_1) (the baseline: a chunk from any other noise),
and the edit: with u the unit vector from the puck to the block q names and
progress(x) = sum_t cap(raw x_t) . u (the chunk's planned displacement towards that block, each move capped
at the env's max_move as the env does),
    gain'' = progress(a'') - progress(a)     gain' = progress(a') - progress(a)  (the control)
    edit share    = share of chunks with gain'' > 0 (the control share: gain' > 0, i.e. inversion noise alone)
    redirect share = share of chunks whose summed displacement points closer (in angle) to the edited block
                     than to the instructed one (for a'' and, as the baseline, for a).
The executed chunk is a' at `execute_steps` (the closed loop runs on reconstructions), so the success rate
says whether a policy that acts through invert -> reconstruct still solves the task.
Summaries average over chunks; `variance` is the per-dimension variance of the sampled normalized chunks a
(over chunks and time steps), averaged over dimensions, and `mse_normalized / variance` is the acceptance ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vlablocks.core.action_model.flow_matching import FlowMatchingHead, random_tensor
from vlablocks.core.capabilities import FlowInvertible, models_with, require
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.evaluation.summary import success_summary

PER_STEP_KEYS = (
    "mse_normalized",
    "mse_raw",
    "noise_mse",
    "latent_power",
    "gain_edit",
    "gain_same",
    "redirect_edit",
    "mse_edit_vs_reprompt",
)


@dataclass(frozen=True)
class InversionOptions:
    steps: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # S: inversion = reconstruction step counts
    execute_steps: int = 10  # the S whose same-prompt reconstruction a' is executed in the env
    episodes: int = 20
    seed: int = 1000  # episode i resets with seed + i; the noise generator is seeded with seed
    batch_size: int = 25  # episodes run at once (one policy call serves every live one)


def flow_head(framework) -> FlowMatchingHead:
    """The framework's flow head: MissingCapability (a one-line ValueError) unless it is FlowInvertible, ValueError
    when its action head is not a flow-matching one."""
    require(framework, FlowInvertible, "vlablocks invert")
    head = getattr(framework, "action_model", None)
    if not isinstance(head, FlowMatchingHead):
        raise ValueError(
            f"{type(framework).__name__} has no flow-matching head to invert; use a checkpoint of "
            f"{', '.join(models_with(FlowInvertible))}"
        )
    return head


@runtime_checkable
class EditableLayout(Protocol):
    """An env whose block layout an edited instruction can point at (the toy env): the layout, the agent's
    position and an instruction naming another block than the target."""

    layout: Any  # `block_names`, `target`, `positions`, `target_position`
    agent: np.ndarray  # [2]

    def wrong_instruction(self) -> str: ...


def check_options(options: InversionOptions) -> None:
    if not options.steps or min(options.steps) < 1:
        raise ValueError(f"steps must be step counts >= 1, got {list(options.steps)}")
    if options.execute_steps not in options.steps:
        raise ValueError(f"execute_steps {options.execute_steps} must be one of steps {list(options.steps)}; add it")
    if options.episodes < 1 or options.batch_size < 1:
        raise ValueError(f"episodes and batch_size must be >= 1, got {options.episodes}, {options.batch_size}")


@torch.no_grad()
def invert_call(
    policy, observations: list[dict], edited_prompts: list[str], steps: tuple[int, ...], generator: torch.Generator
) -> dict:
    """One policy call over N observations -> normalized and raw chunks (numpy [N, T, D]):
    {"sampled", "sampled_raw", "noise" (z0), "reprompted" (a_q), "resampled" (a_1), and per S: "inverted"[S] (z), "same"[S] / "same_raw"[S] (a'),
    "edited"[S] / "edited_raw"[S] (a'')}."""
    framework, processor, device = policy.model, policy.processor, policy.device
    head = flow_head(framework)
    batch = processor(observations, targets=False).to(device)
    edited_batch = processor([{**o, "prompt": q} for o, q in zip(observations, edited_prompts)], targets=False)
    conditioning, state = framework.flow_conditioning(batch)
    edited_conditioning, edited_state = framework.flow_conditioning(edited_batch.to(device))
    shape = (len(observations), head.action_horizon, head.action_dim)
    noise = random_tensor("normal", shape, generator, device, head.position.dtype)  # as head.predict draws it
    sampled = head.reconstruct(conditioning, noise, state)
    reprompted = head.reconstruct(edited_conditioning, noise, edited_state)
    other_noise = random_tensor("normal", shape, generator, device, head.position.dtype)  # drawn after z0
    resampled = head.reconstruct(conditioning, other_noise, state)

    def raw(normalized: torch.Tensor) -> np.ndarray:
        return processor.unnormalize(normalized.float().cpu().numpy(), batch.dataset_names).astype(np.float64)

    def array(x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy().astype(np.float64)

    result = {
        "sampled": array(sampled),
        "sampled_raw": raw(sampled),
        "noise": array(noise),
        "reprompted": array(reprompted),
        "resampled": array(resampled),
    }
    for key in ("inverted", "same", "same_raw", "edited", "edited_raw"):
        result[key] = {}
    for s in steps:
        inverted = head.invert(conditioning, sampled, state, s)
        same = head.reconstruct(conditioning, inverted, state, s)
        edited = head.reconstruct(edited_conditioning, inverted, edited_state, s)
        result["inverted"][s], result["same"][s], result["edited"][s] = array(inverted), array(same), array(edited)
        result["same_raw"][s], result["edited_raw"][s] = raw(same), raw(edited)
    return result


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def edited_block(env, edited_prompt: str) -> int:
    """Index of the block the edited prompt names (the one named there that is not the instructed target)."""
    layout = env.layout
    named = [
        j
        for j, name in enumerate(layout.block_names)
        if j != layout.target and re.search(rf"\b{re.escape(name)}\b", edited_prompt)
    ]
    if len(named) != 1:
        raise ValueError(f"the edited prompt {edited_prompt!r} must name exactly one other block, found {named}")
    return named[0]


def displacement(chunk: np.ndarray, max_move: float) -> np.ndarray:
    """raw chunk [T, 2] -> [2]: the sum of its moves, each capped at max_move as the toy env applies it."""
    norms = np.linalg.norm(chunk, axis=-1, keepdims=True)
    return (chunk * np.minimum(1.0, max_move / np.maximum(norms, 1e-12))).sum(axis=0)


def chunk_records(call: dict, envs: list, edited_prompts: list[str], steps: tuple[int, ...]) -> list[dict]:
    """Per chunk k (env k at the time of the call): its metrics for every S (definitions in the module doc)."""
    records = []
    for k, (env, prompt) in enumerate(zip(envs, edited_prompts)):
        layout, agent, max_move = env.layout, np.asarray(env.agent, dtype=np.float64), env.config.max_move
        towards_edit = unit(layout.positions[edited_block(env, prompt)] - agent)
        towards_target = unit(layout.target_position - agent)
        moves = {"sampled": displacement(call["sampled_raw"][k], max_move)}
        for s in steps:
            moves[("same", s)] = displacement(call["same_raw"][s][k], max_move)
            moves[("edited", s)] = displacement(call["edited_raw"][s][k], max_move)
        progress = {key: float(move @ towards_edit) for key, move in moves.items()}
        redirected = {key: bool(unit(m) @ towards_edit > unit(m) @ towards_target) for key, m in moves.items()}
        sampled, sampled_raw = call["sampled"][k], call["sampled_raw"][k]
        reprompted = call["reprompted"][k]
        record = {
            "redirect_sampled": redirected["sampled"],
            "mse_sampled_vs_reprompt": float(np.mean((sampled - reprompted) ** 2)),
            "mse_other_noise": float(np.mean((sampled - call["resampled"][k]) ** 2)),
            **{key: {} for key in PER_STEP_KEYS},
        }
        for s in steps:
            record["mse_normalized"][s] = float(np.mean((call["same"][s][k] - sampled) ** 2))
            record["mse_raw"][s] = float(np.mean((call["same_raw"][s][k] - sampled_raw) ** 2))
            record["noise_mse"][s] = float(np.mean((call["inverted"][s][k] - call["noise"][k]) ** 2))
            record["latent_power"][s] = float(np.mean(call["inverted"][s][k] ** 2))
            record["mse_edit_vs_reprompt"][s] = float(np.mean((call["edited"][s][k] - reprompted) ** 2))
            record["gain_edit"][s] = progress[("edited", s)] - progress["sampled"]
            record["gain_same"][s] = progress[("same", s)] - progress["sampled"]
            record["redirect_edit"][s] = redirected[("edited", s)]
        records.append(record)
    return records


class InversionActor:
    """The rollout engine's actor for inversion: per call, `invert_call` over the live episodes' requests, one
    record per chunk (kept in call order), and the S = `execute_steps` same-prompt reconstructions a' as the chunks
    executed. The edited prompt of an episode is its env's `wrong_instruction()` (the layout is fixed per episode)."""

    def __init__(self, policy, envs, steps: tuple[int, ...], execute_steps: int, generator: torch.Generator):
        self.policy, self.envs, self.steps, self.execute_steps = policy, envs, steps, execute_steps
        self.generator = generator
        self.records: list[dict] = []
        self.sampled: list[np.ndarray] = []  # every sampled normalized chunk [T, D]
        self.edited: dict[int, str] = {}  # env index -> its episode's edited prompt

    def __call__(self, requests: list[dict], episodes: list) -> tuple[np.ndarray, list[dict]]:
        envs = [self.envs.envs[episode.index] for episode in episodes]
        for env, episode in zip(envs, episodes):
            if episode.policy_calls == 0:
                self.edited[episode.index] = env.wrong_instruction()
        prompts = [self.edited[episode.index] for episode in episodes]
        call = invert_call(self.policy, requests, prompts, self.steps, self.generator)
        for k, (episode, record) in enumerate(zip(episodes, chunk_records(call, envs, prompts, self.steps))):
            self.records.append({"seed": episode.seed, "call": episode.policy_calls, **record})
            self.sampled.append(call["sampled"][k])
        return call["same_raw"][self.execute_steps], [{} for _ in requests]


def run_inversion(policy, env_config: dict, options: InversionOptions) -> tuple[dict, list[dict]]:
    """Closed-loop episodes on `env_config` (an EVAL_ENVS section with a toy-like `layout`, `agent` and
    `wrong_instruction`), `batch_size` at a time through the rollout engine -> (summary, one record per chunk:
    episode seed, call index, metrics per S)."""
    check_options(options)
    flow_head(policy.model)
    policy.eval()
    steps = tuple(options.steps)
    generator = torch.Generator(device=policy.device).manual_seed(options.seed)
    envs = make_vector_env(env_config, min(options.batch_size, options.episodes))
    if not isinstance(envs.envs[0], EditableLayout):
        raise ValueError(f"env {env_config.get('name')!r} has no block layout to edit towards; use --env toy")
    actor = InversionActor(policy, envs, steps, options.execute_steps, generator)
    seeds = range(options.seed, options.seed + options.episodes)
    episodes = run_episodes(envs, seeds, actor, keep_calls=False)
    successes = sum(episode.success for episode in episodes)
    return summarize(actor.records, np.stack(actor.sampled), successes, options), actor.records


def summarize(records: list[dict], sampled: np.ndarray, successes: int, options: InversionOptions) -> dict:
    """Means over chunks per S; sampled: every sampled normalized chunk [C, T, D] (for the action variance)."""
    variance = float(sampled.reshape(-1, sampled.shape[-1]).var(axis=0).mean())
    per_steps = {}
    for s in options.steps:
        values = {key: np.array([record[key][s] for record in records], dtype=np.float64) for key in PER_STEP_KEYS}
        mse = float(values["mse_normalized"].mean())
        per_steps[str(s)] = {
            "mse_normalized": mse,
            "mse_over_variance": mse / variance if variance > 0 else float("nan"),
            "mse_raw": float(values["mse_raw"].mean()),
            "noise_mse": float(values["noise_mse"].mean()),
            "latent_power": float(values["latent_power"].mean()),
            "mse_edit_vs_reprompt": float(values["mse_edit_vs_reprompt"].mean()),
            "edit_share": float((values["gain_edit"] > 0).mean()),
            "control_share": float((values["gain_same"] > 0).mean()),
            "mean_gain_edit": float(values["gain_edit"].mean()),
            "mean_gain_same": float(values["gain_same"].mean()),
            "redirect_share_edit": float(values["redirect_edit"].mean()),
        }
    return {
        "episodes": options.episodes,
        "seed": options.seed,
        "chunks": len(records),
        "steps": list(options.steps),
        "execute_steps": options.execute_steps,
        "variance_normalized": variance,
        "mse_sampled_vs_reprompt": float(np.mean([record["mse_sampled_vs_reprompt"] for record in records])),
        "mse_other_noise": float(np.mean([record["mse_other_noise"] for record in records])),
        "redirect_share_sampled": float(np.mean([record["redirect_sampled"] for record in records])),
        "executed": success_summary(successes, options.episodes),
        "per_steps": per_steps,
    }
