"""Online RL from 0/1 task success: `vlablocks rl --config-yaml F --init-ckpt DIR [overrides]`, or under accelerate:

    accelerate launch --config_file configs/accelerate/ddp.yaml vlablocks/methods/rl/loop.py --config-yaml F ...

Per iteration every process rolls out its share: B initial states x G sampled episodes, batched over a
vector env (one policy call serves every live episode); reward = success x verifier_reward_coef; groups
with all-equal rewards are dropped and refilled (dynamic sampling); then one PPO-clip pass with clip-higher
over the kept episodes' policy calls (GRPO: vlablocks/methods/rl/grpo.py; or, with rl.algorithm: ppo,
advantages from GAE on a critic's values, the critic regressed on the same minibatches: ppo.py). rl.lora adds
LoRA adapters to the VLM before the optimizer is built (lora.py). Every random draw is keyed on
(seed, iteration, process), so a run resumed from its last checkpoint continues exactly. Checkpoints are
ordinary framework checkpoints (servable, evaluable). The loop reads top to bottom; options: rl_config.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlablocks.core.capabilities import StochasticPolicy, require
from vlablocks.core.config import ExperimentConfig, load_config, to_yaml
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.actors import GreedyActor, SamplingActor
from vlablocks.core.evaluation.rollout import Episode, run_episodes
from vlablocks.core.evaluation.summary import success_summary
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.base import Framework
from vlablocks.core.logs import show_project_logs
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.checkpoint import (
    STATE_DIR,
    latest_checkpoint,
    load_training_state,
    save_training_checkpoint,
)
from vlablocks.core.training.components import make_accelerator, seed_everything, set_threads
from vlablocks.core.training.distributed import end_distributed
from vlablocks.core.training.optim import build_optimizer
from vlablocks.core.training.precision import keep_trainable_weights_fp32
from vlablocks.core.training.run_dir import check_run_dir, remove_stale_temporaries, truncate_metrics
from vlablocks.methods.rl.config import RLConfig
from vlablocks.methods.rl.grpo import clipped_policy_loss, fill_with_informative_groups
from vlablocks.methods.rl.lora import add_rl_lora
from vlablocks.methods.rl.ppo import Critic
from vlablocks.methods.rl.report import plot_success


class ChoiceLogProbs(nn.Module):
    """The framework's `choice_log_probs` as a forward pass, so DDP / DeepSpeed wrap the RL update like SFT's."""

    def __init__(self, framework: Framework, temperature: float) -> None:
        super().__init__()
        self.framework, self.temperature = framework, temperature

    def forward(self, batch, choices: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.framework.choice_log_probs(batch, choices, self.temperature)


def rl(experiment: ExperimentConfig) -> dict:
    """Runs RL from `experiment.rl.init_ckpt` (or resumes the run) -> {"checkpoint", "history", "run_dir"}."""
    cfg: RLConfig = experiment.rl
    run_dir = Path(experiment.run_dir)
    trainer = dataclasses.replace(
        experiment.trainer,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_schedule=cfg.lr_schedule,
        min_lr_ratio=cfg.min_lr_ratio,
        warmup_steps=0,
        max_steps=cfg.iterations,
        gradient_accumulation_steps=1,
    )
    if cfg.init_ckpt is None:  # before anything is written
        raise ValueError("vlablocks rl needs a starting policy: pass --init-ckpt DIR (an SFT checkpoint)")
    accelerator = make_accelerator(trainer, find_unused_parameters=True)  # e.g. QwenOFT never reads its LM head
    set_threads(trainer.torch_threads)
    seed_everything(experiment.seed)
    main, rank = accelerator.is_main_process, accelerator.process_index
    check_run_dir(run_dir, experiment)
    resume_from = latest_checkpoint(run_dir) if trainer.resume else None
    source = resume_from or cfg.init_ckpt
    policy = Policy.from_pretrained(source, device=accelerator.device)
    framework = policy.model
    require(framework, StochasticPolicy, "vlablocks rl")
    if cfg.lora.enabled and resume_from is None:  # a resumed run's checkpoint has its adapters already
        add_rl_lora(framework, cfg.lora, str(source))  # before the optimizer: it holds the adapters (and the head)
    framework.eval()  # no dropout: the update's log-probs must be those of the policy that acted
    critic = Critic(policy, cfg.ppo, accelerator) if cfg.algorithm == "ppo" else None  # ppo.py
    accelerator.wait_for_everyone()
    if main:  # only now, every refusal above came first
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        (run_dir / "config.yaml").write_text(to_yaml(experiment.to_dict()))

    reference = None
    if cfg.kl_coef > 0:  # the initial policy, frozen (a fresh load is its own copy)
        reference = Policy.from_pretrained(cfg.init_ckpt, device=accelerator.device).model.eval().requires_grad_(False)
    keep_trainable_weights_fp32(framework, trainer, deepspeed=accelerator.state.deepspeed_plugin is not None)
    optimizer, scheduler = build_optimizer(framework, trainer)
    start, history = 0, []
    if resume_from is not None:
        record = load_training_state(resume_from, optimizer, scheduler)
        start, history = record["step"], record["history"]
        if main:
            truncate_metrics(run_dir, start)
            print(f"resumed from {resume_from} at iteration {start}")
    model, optimizer = accelerator.prepare(ChoiceLogProbs(framework, cfg.temperature), optimizer)
    if critic is not None:
        if resume_from is not None:
            critic.load(resume_from / STATE_DIR)
        critic.prepare(accelerator)

    evaluates = main and (cfg.eval_every > 0 or cfg.val_only)  # the main process evaluates, on envs built once
    eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, cfg.env_workers) if evaluates else None
    if cfg.val_only:
        summary = evaluate_greedy(policy, eval_envs, cfg, wrong_instruction_too=True) if main else {}
        if main:
            eval_envs.close()
            (run_dir / "val_only.json").write_text(json.dumps(summary, indent=1))
            print(json.dumps(summary))
        end_distributed(accelerator)
        return {"checkpoint": None, "history": history, "run_dir": run_dir, "eval": summary}

    envs = make_vector_env(cfg.env, cfg.groups_per_iteration * cfg.group_size, cfg.env_workers)
    checkpoint = resume_from
    for iteration in range(start + 1, cfg.iterations + 1):
        # ---- rollouts: B groups of G episodes, refilled while groups carry no signal -------------------
        rollout_start = time.perf_counter()
        rounds: list[list[Episode]] = []  # every episode rolled out this iteration, for the success rate
        sample_round = functools.partial(
            _rollout_round, policy, envs, cfg, (experiment.seed, iteration, rank), accelerator.device, rounds
        )
        kept, sampled = fill_with_informative_groups(
            sample_round, cfg.groups_per_iteration, cfg.max_sampling_rounds, cfg.dynamic_sampling
        )
        successes = sum(e.success for episodes in rounds for e in episodes)
        episodes_run = sum(len(episodes) for episodes in rounds)
        degenerate = _degenerate_groups(rounds, cfg.group_size)  # (all failed, all succeeded) of the sampled groups
        rollout_s = time.perf_counter() - rollout_start

        # ---- advantages: the group's (GRPO) or GAE on the critic's values (PPO) --------------------------
        update_start = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])  # this iteration's rate (rl.lr_schedule)
        if critic is None:
            calls = [
                (call, float(adv))
                for group, advs in kept
                for episode, adv in zip(group, advs)
                for call in episode.calls
            ]
        else:
            episodes = [episode for group, _ in kept for episode in group]
            rows, value_stats = critic.advantages(episodes, cfg.verifier_reward_coef)  # (call, A_hat, V_old, R)
            calls = [(call, advantage) for call, advantage, *_ in rows]

        # ---- one PPO-clip pass (clip-higher) over the kept episodes' policy calls ----------------------
        steps = _minibatch_count(accelerator, len(calls), cfg.minibatch_size) * cfg.update_epochs
        order = np.random.default_rng(_key(experiment.seed, iteration, 99, rank)).permutation(len(calls))
        parts = np.array_split(np.tile(order, cfg.update_epochs), steps) if steps else []
        stats = []
        before = _trainable_snapshot(framework)  # to log how far this iteration moved the VLM and the rest
        for part in parts:
            loss, numbers = _minibatch_loss(model, policy, reference, [calls[i] for i in part], cfg, accelerator)
            accelerator.backward(loss)
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if critic is not None:  # the critic's clipped value loss on the same minibatch
                numbers.update(critic.step([rows[i] for i in part], accelerator, cfg.max_grad_norm))
            stats.append(numbers)
        if parts:
            scheduler.step()  # rl.lr_schedule, counted per iteration that updated (saved: resume is exact)
        moved = _relative_change(framework, before)
        update_s = time.perf_counter() - update_start

        # ---- log, evaluate, save ----------------------------------------------------------------------
        totals = accelerator.reduce(torch.tensor([successes, episodes_run, len(kept), sampled], dtype=torch.float64))
        metrics = {
            "step": iteration,
            "success_rate": float(totals[0] / totals[1]),
            "mean_reward": float(totals[0] / totals[1]) * cfg.verifier_reward_coef,
            "groups_kept": int(totals[2]),
            "groups_sampled": int(totals[3]),
            "policy_calls": len(calls),
            "groups_all_failed": degenerate[0],
            "groups_all_succeeded": degenerate[1],
            "advantage_abs_mean": float(np.mean([abs(a) for _, a in calls])) if calls else float("nan"),
            "update_vlm": moved["vlm"],
            "update_head": moved["head"],
            **{k: float(np.nanmean([s[k] for s in stats])) if stats else float("nan") for k in _stat_keys(critic)},
            **(value_stats if critic is not None else {}),
            "lr": lr,
            "rollout_s": rollout_s,
            "update_s": update_s,
        }
        if main and cfg.eval_every and (iteration % cfg.eval_every == 0 or iteration == cfg.iterations):
            metrics["eval_success"] = evaluate_greedy(policy, eval_envs, cfg)["success_rate"]
        if main:
            history.append(metrics)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(_describe(metrics), flush=True)
        if iteration % cfg.save_every == 0 or iteration == cfg.iterations:
            accelerator.wait_for_everyone()
            if main:
                shard_dir = None
                if critic is not None:  # its weights and optimizer go into the checkpoint's trainer_state/
                    shard_dir = run_dir / "critic.tmp"
                    shard_dir.mkdir(exist_ok=True)
                    critic.save(shard_dir)
                checkpoint = save_training_checkpoint(
                    run_dir, iteration, policy, optimizer.optimizer, scheduler, {"history": history}, cfg.keep_last,
                    shard_dir=shard_dir,
                )  # fmt: skip
            accelerator.wait_for_everyone()
    envs.close()
    if eval_envs is not None:
        eval_envs.close()
    if main and history:
        plot_success(history, run_dir / "success_curve.png")
    end_distributed(accelerator)
    return {"checkpoint": checkpoint, "history": history, "run_dir": run_dir}


def _degenerate_groups(rounds: list[list[Episode]], group_size: int) -> tuple[int, int]:
    """The sampled groups (consecutive `group_size` episodes of each round) whose episodes all failed / all succeeded."""
    counts = [
        sum(e.success for e in episodes[g : g + group_size])
        for episodes in rounds
        for g in range(0, len(episodes), group_size)
    ]
    return sum(c == 0 for c in counts), sum(c == group_size for c in counts)


def _trainable_snapshot(framework: Framework) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in framework.named_parameters() if p.requires_grad}


def _relative_change(framework: Framework, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """||theta - theta_before|| / ||theta_before|| over the trainable parameters of the VLM ("vlm": names under
    `vlm.`) and of everything else ("head": the action head, the proprio projector); NaN for a part with none."""
    sums = {"vlm": [0.0, 0.0], "head": [0.0, 0.0]}
    for name, p in framework.named_parameters():
        if name in before:
            part = sums["vlm" if name.startswith("vlm.") else "head"]
            part[0] += float((p.detach() - before[name]).float().pow(2).sum())
            part[1] += float(before[name].float().pow(2).sum())
    return {k: math.sqrt(d / w) if w > 0 else float("nan") for k, (d, w) in sums.items()}


def _stat_keys(critic) -> tuple[str, ...]:
    """The per-minibatch numbers averaged into an iteration's metrics."""
    value_keys = ("value_loss", "value_clip_fraction") if critic is not None else ()
    return ("loss", "clip_fraction", "approx_kl", "entropy", *value_keys)


def _minibatch_loss(model, policy, reference, calls, cfg: RLConfig, accelerator) -> tuple[torch.Tensor, dict]:
    """calls: [(PolicyCall, advantage)] -> (the clipped loss, its numbers)."""
    device = accelerator.device
    batch = policy.processor([c.observation for c, _ in calls], targets=False).to(device)
    choices = torch.stack([c.record["choices"] for c, _ in calls]).to(device)
    old = torch.stack([c.record["log_probs"] for c, _ in calls]).to(device)
    mask = torch.stack([c.record["mask"] for c, _ in calls]).to(device)
    advantages = torch.tensor([a for _, a in calls], device=device)
    now = model(batch, choices)
    ref = None
    if reference is not None:
        with torch.no_grad():
            ref = reference.choice_log_probs(batch, choices, cfg.temperature)["log_probs"]
    result = clipped_policy_loss(
        now["log_probs"], old, advantages, mask, cfg.clip_low, cfg.clip_high,
        now["entropy"], cfg.entropy_coef, ref, cfg.kl_coef,
    )  # fmt: skip
    numbers = {"loss": result.loss.item(), "clip_fraction": result.clip_fraction}
    return result.loss, {**numbers, "approx_kl": result.approx_kl, "entropy": result.entropy}


def evaluate_greedy(policy, envs, cfg: RLConfig, wrong_instruction_too: bool = False) -> dict:
    """The served (greedy) policy on `eval_episodes` fresh seeds over `envs` (that many), batched
    -> success_summary ({"episodes", "successes", "success_rate", "ci95"}) + "seeds" [first, last], and with the
    control its figures prefixed "wrong_instruction_"."""
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    summary = {}
    for control in (False, True) if wrong_instruction_too else (False,):
        episodes = run_episodes(envs, seeds, GreedyActor(policy), cfg.open_loop_horizon, control, keep_calls=False)
        figures = success_summary(sum(e.success for e in episodes), len(episodes))
        if control:
            figures = {f"wrong_instruction_{key}": figures[key] for key in ("successes", "success_rate", "ci95")}
        summary.update(figures)
    summary["seeds"] = [seeds[0], seeds[-1]]
    return summary


def _rollout_round(
    policy, envs, cfg: RLConfig, key: tuple[int, int, int], device, rounds: list, round_index: int
) -> tuple[list[list[Episode]], torch.Tensor]:
    """One round of B groups x G sampled episodes -> (the groups' episodes [B][G], rewards [B, G]); appends them to
    `rounds`. key = (seed, iteration, process): the initial states and the sampling noise depend on it alone."""
    seed, iteration, rank = key
    seeds = _initial_states(cfg, seed, iteration, round_index, rank)
    generator = torch.Generator(device).manual_seed(_key(seed, iteration, round_index, rank))
    actor = SamplingActor(policy, cfg.temperature, generator)
    group = cfg.group_size
    told = group // 2 if cfg.contrast_instructions else 0  # episodes per group told another block
    own = run_episodes(envs, np.repeat(seeds, group - told).tolist(), actor, cfg.open_loop_horizon)
    other = run_episodes(envs, np.repeat(seeds, told).tolist(), actor, cfg.open_loop_horizon, True) if told else []
    for episode in other:
        episode.success = ended_on_the_named_block(episode)
    groups = [
        own[g * (group - told) : (g + 1) * (group - told)] + other[g * told : (g + 1) * told] for g in range(len(seeds))
    ]
    episodes = [episode for members in groups for episode in members]
    rounds.append(episodes)
    rewards = torch.tensor([e.success for e in episodes], dtype=torch.float32) * cfg.verifier_reward_coef
    return groups, rewards.reshape(len(seeds), group)


def ended_on_the_named_block(episode: Episode) -> bool:
    """A wrong-instruction episode's success: it ends on the block its instruction names (the env's step info
    "reached": the name of the block the agent is on, or None). Ending on the env's own target, which stops the
    episode, is a failure, and so is passing over the named block without stopping there: stricter than the env's
    own test, never easier."""
    if "reached" not in episode.info:
        raise ValueError(
            "rl.contrast_instructions needs an env whose step info names the block the agent ends on ('reached'), "
            "as the toy env's does; set rl.contrast_instructions: false"
        )
    reached = episode.info["reached"]
    return reached is not None and episode.given != episode.instruction and reached in episode.given.split()


def _initial_states(cfg: RLConfig, seed: int, iteration: int, round_index: int, rank: int) -> np.ndarray:
    """B env seeds for this (iteration, round, process), drawn above `train_seed` (disjoint from eval seeds)."""
    rng = np.random.default_rng(_key(seed, iteration, round_index, rank, 7))
    return cfg.train_seed + rng.integers(0, 2**31 - 1 - cfg.train_seed, size=cfg.groups_per_iteration)


def _key(*numbers: int) -> int:
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])


def _minibatch_count(accelerator, calls: int, minibatch_size: int) -> int:
    """Gradient steps per epoch, equal on every process (DDP needs the same number of backward passes)."""
    most = int(accelerator.gather(torch.tensor([calls], device=accelerator.device)).max())
    return math.ceil(most / minibatch_size) if most else 0


def _describe(m: dict) -> str:
    text = (
        f"iter {m['step']}: success {m['success_rate']:.0%} kept {m['groups_kept']}/{m['groups_sampled']} "
        f"clip {m['clip_fraction']:.3f} kl {m['approx_kl']:.4f} entropy {m['entropy']:.3f} "
        f"all-0/all-1 groups {m['groups_all_failed']}/{m['groups_all_succeeded']} "
        f"moved vlm {m['update_vlm']:.1e} head {m['update_head']:.1e} "
        f"rollout {m['rollout_s']:.1f}s update {m['update_s']:.1f}s"
    )
    if "value_loss" in m:
        text += f" value loss {m['value_loss']:.4f} explained var {m['explained_variance']:.3f}"
    return text + (f" eval {m['eval_success']:.0%}" if "eval_success" in m else "")


def load_rl_experiment(config_yaml: str, init_ckpt: str | None, overrides: list[str]) -> ExperimentConfig:
    """The experiment of `--config-yaml F [--init-ckpt DIR] [overrides]` (--init-ckpt sets rl.init_ckpt)."""
    return load_config(config_yaml, [*overrides, f"rl.init_ckpt={init_ckpt}"] if init_ckpt else overrides)


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-yaml", required=True)
    parser.add_argument("--init-ckpt", default=None, help="SFT checkpoint to start from (sets rl.init_ckpt)")
    args, overrides = parser.parse_known_args(argv)
    show_project_logs()
    rl(load_rl_experiment(args.config_yaml, args.init_ckpt, overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
