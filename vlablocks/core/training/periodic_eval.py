"""Closed-loop evaluation during training (`trainer.eval_every`): the current weights, in process, on seeded episodes.

The policy is the model with its processor (`Policy`, as served), so the figure is what
`vlablocks eval --ckpt` would report for a checkpoint of this step; episodes use fixed seeds (eval_seed,
eval_seed + 1, ...) so the curve compares like with like. Runs on the main process only.
"""

from __future__ import annotations

from pathlib import Path

from vlablocks.core.build import build
from vlablocks.core.evaluation.rollout import evaluate, played_per_chunk
from vlablocks.core.registry import EVAL_ENVS


class PeriodicEval:
    """Builds the env once; `__call__(policy, step)` -> success rate of this step's weights."""

    def __init__(self, trainer, run_dir: Path) -> None:
        if not trainer.eval_env:
            raise ValueError("trainer.eval_every is set but trainer.eval_env is not; name one, e.g. {name: toy}")
        if trainer.eval_episodes < 1:
            raise ValueError(f"trainer.eval_episodes must be >= 1, got {trainer.eval_episodes}")
        self.env = build(EVAL_ENVS, dict(trainer.eval_env))
        self.trainer = trainer
        self.out = run_dir / "eval"

    def __call__(self, policy, step: int) -> float:
        summary = evaluate(
            self.env,
            policy,
            self.trainer.eval_episodes,
            self.trainer.eval_seed,
            self.out / f"step_{step}",
            open_loop_horizon=played_per_chunk(policy.metadata),
            videos=0,
            progress=False,
        )
        return summary["success_rate"]
