"""`vlablocks rl --config-yaml F --init-ckpt DIR [overrides]`: online RL from task success (docs/rl.md)."""

from __future__ import annotations

import argparse

NAME = "rl"
HELP = "online RL with 0/1 task rewards (GRPO, clip-higher, dynamic sampling) from an SFT checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", required=True, help="experiment YAML with an `rl:` section")
    parser.add_argument("--init-ckpt", default=None, help="the SFT checkpoint to start from (sets rl.init_ckpt)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.methods.rl.loop import load_rl_experiment, rl

    result = rl(load_rl_experiment(args.config_yaml, args.init_ckpt, overrides))
    print(f"checkpoint: {result['checkpoint']}; metrics: {result['run_dir'] / 'metrics.jsonl'}")
    return 0
