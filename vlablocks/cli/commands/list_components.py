"""`vlablocks list [KIND]`: registered components per kind with a one-line description."""

from __future__ import annotations

import argparse

from vlablocks.core.registry import KINDS, kind

NAME = "list"
HELP = "list registered components (frameworks, vlms, action_models, datasets, eval_envs, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}")


def format_kind(name: str) -> str:
    entries = list(kind(name).entries())
    lines = [f"{name} ({len(entries)})"]
    width = max((len(e.name) for e in entries), default=0)
    lines += [f"  {e.name.ljust(width)}  {e.description}" for e in entries]
    return "\n".join(lines)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    names = [args.kind] if args.kind else list(KINDS)
    print("\n\n".join(format_kind(n) for n in names))
    return 0
