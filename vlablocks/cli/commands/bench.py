"""`vlablocks bench [--quick | --smoke] [--out DIR] [--device cpu|cuda] [--arch tiny|3b] [--threads N] [--only ROW ...]`."""

from __future__ import annotations

import argparse

from vlablocks.cli.arguments import count

NAME = "bench"
HELP = "measure every speed ratio side by side in one run -> DIR/bench.md (table) and DIR/bench.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument(
        "--quick", dest="profile", action="store_const", const="quick", help="fewer repeats (< 5 min on CPU)"
    )
    profile.add_argument(
        "--smoke",
        dest="profile",
        action="store_const",
        const="smoke",
        help="tiny sizes, 1 repeat: checks every row runs; the numbers mean nothing",
    )
    parser.set_defaults(profile="full")
    parser.add_argument("--out", default="runs/bench", help="output directory (default: runs/bench)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the model rows")
    parser.add_argument("--arch", choices=["tiny", "3b"], default="tiny", help="Qwen2.5-VL size (3b: random init)")
    parser.add_argument(
        "--threads",
        type=count(0),
        default=None,
        help="torch CPU threads in the bench process (default: 1 with --device cpu, torch's choice with cuda; 0: torch's)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        help="measure only these rows: training processing data inference compiled flow_matching pi05 rollout server memory",
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"vlablocks bench takes no config overrides, got {' '.join(overrides)}")
    from vlablocks.tools.bench.result import report_markdown
    from vlablocks.tools.bench.settings import bench_settings
    from vlablocks.tools.bench.suite import run_suite

    settings = bench_settings(args.profile, args.device, args.arch, args.threads)
    report = run_suite(settings, args.out, args.only)
    print(report_markdown(report.rows, report.meta))
    print("wrote " + " and ".join(str(p) for p in report.paths))
    return 1 if report.errors else 0
