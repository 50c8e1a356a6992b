"""`vlablocks train --config-yaml F [overrides]`: train in one process (use `accelerate launch` for more)."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a framework from a config (one process; see README for accelerate launch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", required=True, help="experiment YAML; overrides follow as --a.b=v")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.core.config import load_config
    from vlablocks.core.training.train import train

    result = train(load_config(args.config_yaml, overrides))
    print(f"final loss {result['losses'][-1]:.5f}; checkpoint {result['checkpoint']}")
    return 0
