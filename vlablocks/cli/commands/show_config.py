"""`vlablocks config --config-yaml F [overrides]`: print the resolved, validated config as YAML."""

from __future__ import annotations

import argparse

from vlablocks.core.config import load_config, to_yaml

NAME = "config"
HELP = "print the resolved config (bases merged, overrides applied, defaults filled, validated)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", help="experiment YAML; overrides follow as --a.b=v, --a.b v or a.b=v")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    print(to_yaml(load_config(args.config_yaml, overrides).to_dict()), end="")
    return 0
