"""`vlablocks rl --config-yaml F --init-ckpt DIR [overrides]`: online RL from task success (docs/rl.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

NAME = "rl"
HELP = "online RL with 0/1 task rewards (GRPO, clip-higher, dynamic sampling) from an SFT checkpoint"

AT_LEAST_ONE = (
    "iterations",
    "groups_per_iteration",
    "group_size",
    "max_sampling_rounds",
    "minibatch_size",
    "update_epochs",
    "eval_episodes",
    "save_every",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", required=True, help="experiment YAML with an `rl:` section")
    parser.add_argument("--init-ckpt", default=None, help="the SFT checkpoint to start from (sets rl.init_ckpt)")


def check(experiment) -> None:
    """The `rl:` options and the starting checkpoint, before the run folder or anything in it is written."""
    from vlablocks.core.manifest import verify_manifest

    cfg = experiment.rl
    for name in AT_LEAST_ONE:
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"rl.{name} must be an integer >= 1, got {value!r} (--rl.{name}=N)")
    if not (isinstance(cfg.temperature, (int, float)) and math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ValueError(f"rl.temperature must be a finite number > 0, got {cfg.temperature!r}")
    if cfg.init_ckpt is None:
        raise ValueError("vlablocks rl needs a starting policy: pass --init-ckpt DIR (an SFT checkpoint)")
    if not (Path(cfg.init_ckpt) / "config.yaml").is_file():
        raise FileNotFoundError(f"--init-ckpt {cfg.init_ckpt}: not a checkpoint directory (no config.yaml)")
    verify_manifest(cfg.init_ckpt)  # a damaged starting point is named now, not after the run folder is written


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.methods.rl.loop import load_rl_experiment, rl

    experiment = load_rl_experiment(args.config_yaml, args.init_ckpt, overrides)
    check(experiment)
    result = rl(experiment)
    print(f"checkpoint: {result['checkpoint']}; metrics: {result['run_dir'] / 'metrics.jsonl'}")
    return 0
