"""`vlablocks make-metaworld-data --out DIR --tasks mt10 --episodes-per-task 50 [--seed 0] [--image-size 128]`:
Meta-World's scripted experts as a LeRobot v3 dataset (failed demonstrations dropped and counted)."""

from __future__ import annotations

import argparse

from vlablocks.cli.arguments import count

NAME = "make-metaworld-data"
HELP = (
    "write Meta-World scripted-expert demonstrations (mt10, mt50, a difficulty group or tasks) as a LeRobot v3 dataset"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument(
        "--tasks", default="mt10", help="mt10, mt50, easy|medium|hard|very_hard, or comma-separated task names"
    )
    parser.add_argument("--episodes-per-task", type=count(1), default=50, help="demonstrations attempted per task")
    parser.add_argument(
        "--seed",
        type=count(0),
        default=0,
        help="episode i of each task uses env seed SEED + i (kept below eval's 1000)",
    )
    parser.add_argument("--image-size", type=count(8), default=128, help="pixels per side of the corner2 view")
    parser.add_argument(
        "--max-steps", type=count(1), default=200, help="steps before an unfinished demo counts as failed"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    from vlablocks.core.envs.metaworld_tasks import resolve_tasks
    from vlablocks.tools.metaworld.metaworld_dataset import write_metaworld_dataset

    tasks = resolve_tasks(args.tasks)
    protocol = write_metaworld_dataset(
        args.out, tasks, args.episodes_per_task, args.seed, args.image_size, args.max_steps, args.overwrite
    )
    for task, row in protocol["per_task"].items():
        print(f"{task:28s} kept {row['kept']:3d}  dropped {row['dropped']:2d}  mean steps {row['mean_steps']:.0f}")
    print(
        f"wrote {protocol['kept']} demonstrations of {len(tasks)} tasks to {args.out} in {protocol['seconds']:.0f} s "
        f"({protocol['dropped']} failed demos dropped; seeds {protocol['seeds'][0]}..{protocol['seeds'][1]})"
    )
    return 0
