"""`vlablocks sweep --base F --variants V1.yaml V2.yaml [--grid sweep.yaml] --out DIR [overrides]`."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sweep"
HELP = "run an ablation sweep (variant YAMLs over a base and/or a grid) and tabulate the results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base experiment YAML the variants are merged over")
    parser.add_argument("--variants", nargs="*", default=[], help="variant YAMLs (small diffs over the base)")
    parser.add_argument("--grid", help="sweep YAML: {base: F, grid: {dotted.key: [values, ...]}}")
    parser.add_argument("--out", default="runs/sweep", help="output directory (one sub-directory per variant)")
    parser.add_argument("--print-commands", action="store_true", help="print accelerate launch commands, run nothing")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.training.sweep import build_variants, load_grid, run_sweep

    base, grid = args.base, None
    if args.grid:
        grid_base, grid = load_grid(args.grid)
        base = base or grid_base
    if not (args.variants or grid):
        raise ValueError("nothing to sweep: give --variants FILES and/or --grid FILE")
    variants = build_variants(base, args.variants, grid, overrides)
    rows = run_sweep(variants, Path(args.out), dry_run=args.print_commands)
    if rows:
        print((Path(args.out) / "results.md").read_text(), end="")
        print(f"results: {Path(args.out) / 'results.csv'}, plot: {Path(args.out) / 'comparison.png'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1
