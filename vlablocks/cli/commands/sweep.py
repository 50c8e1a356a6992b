"""`vlablocks sweep --base F --variants V1.yaml V2.yaml [--grid sweep.yaml] [--seeds 0 1 2] --out DIR [--eval-env toy]
[--report docs/F.md] [--submit slurm --slurm-nodes N ...] [overrides]`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from vlablocks.cli.arguments import count

NAME = "sweep"
HELP = "run an ablation sweep (variant YAMLs over a base and/or a grid) and tabulate the results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base experiment YAML the variants are merged over")
    parser.add_argument("--variants", nargs="*", default=[], help="variant YAMLs (small diffs over the base)")
    parser.add_argument("--grid", help="sweep YAML: {base: F, grid: {dotted.key: [values, ...]}}")
    parser.add_argument("--out", default="runs/sweep", help="output directory (one sub-directory per variant)")
    parser.add_argument("--print-commands", action="store_true", help="print accelerate launch commands, run nothing")
    parser.add_argument("--jobs", type=count(1), default=1, help="variants trained at the same time (one process each)")
    parser.add_argument(
        "--seeds",
        type=count(0),
        nargs="+",
        help="training seeds: every variant runs once per seed (mean, minimum and spread reported)",
    )
    parser.add_argument(
        "--report", help="also write this markdown file: the command that regenerates it, then the results tables"
    )
    cluster = parser.add_argument_group("cluster submission (one job script per variant and seed, docs/distributed.md)")
    cluster.add_argument(
        "--submit",
        choices=["slurm"],
        help="write <out>/<variant>/job.sbatch per variant and seed; sbatch each when sbatch is on PATH, else print",
    )
    cluster.add_argument("--slurm-nodes", type=count(1), default=1, help="nodes per job")
    cluster.add_argument("--slurm-gpus-per-node", type=count(1), default=8, help="GPUs per node (one rank each)")
    cluster.add_argument("--slurm-time", default="24:00:00", help="time limit per job")
    cluster.add_argument("--slurm-partition", help="partition to submit to")
    cluster.add_argument(
        "--sbatch-option",
        action="append",
        default=[],
        help="another #SBATCH line (repeatable), written with =: --sbatch-option=--account=NAME",
    )
    cluster.add_argument(
        "--accelerate-config", default="configs/accelerate/zero2.yaml", help="accelerate config of the jobs"
    )
    evaluation = parser.add_argument_group("closed-loop evaluation of each variant's final checkpoint")
    evaluation.add_argument("--eval-env", help="registered eval env (vlablocks list eval_envs); omit to skip eval")
    evaluation.add_argument("--eval-episodes", type=count(1), default=50)
    evaluation.add_argument(
        "--eval-seed", type=count(0), default=1000, help="episode i uses seed + i, for every variant"
    )
    evaluation.add_argument(
        "--eval-option", action="append", default=[], help="env option as key=value (repeatable), e.g. cameras=[a,b]"
    )
    evaluation.add_argument(
        "--eval-wrong-instruction", action="store_true", help="also run the wrong-instruction control per variant"
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.tools.sweep.sweep import SweepEval, build_variants, load_grid, run_sweep

    base, grid = args.base, None
    if args.grid:
        grid_base, grid = load_grid(args.grid)
        base = base or grid_base
    if not (args.variants or grid):
        raise ValueError("nothing to sweep: give --variants FILES and/or --grid FILE")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.submit and (args.eval_env or args.print_commands or args.report):
        raise ValueError(
            "--submit only writes and submits the training jobs; once they finish, rerun the same sweep without "
            "--submit (and with --eval-env / --report): finished variants are read back, not retrained"
        )
    evaluation = None
    if args.eval_env:
        from vlablocks.core.registry import EVAL_ENVS

        EVAL_ENVS.get(args.eval_env)  # an unknown env fails now, naming the closest one, not after training
        evaluation = SweepEval(
            args.eval_env,
            args.eval_episodes,
            args.eval_seed,
            tuple(args.eval_option),
            wrong_instruction=args.eval_wrong_instruction,
        )
    elif args.eval_option or args.eval_wrong_instruction:
        raise ValueError("--eval-option / --eval-wrong-instruction need --eval-env NAME")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    variants = build_variants(base, args.variants, grid, overrides, args.seeds)
    if args.submit:
        return submit(args, variants)
    rows = run_sweep(variants, Path(args.out), args.print_commands, evaluation, args.jobs)
    if rows:
        results = (Path(args.out) / "results.md").read_text()
        if args.report:
            Path(args.report).write_text(report_text(args, overrides, results))
        print(results, end="")
        print(f"results: {Path(args.out) / 'results.csv'}, plot: {Path(args.out) / 'comparison.png'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def submit(args: argparse.Namespace, variants: list) -> int:
    from vlablocks.tools.sweep.slurm import SlurmOptions, submit_or_print, write_job_scripts

    options = SlurmOptions(
        nodes=args.slurm_nodes,
        gpus_per_node=args.slurm_gpus_per_node,
        time=args.slurm_time,
        partition=args.slurm_partition,
        accelerate_config=args.accelerate_config,
        sbatch_options=tuple(args.sbatch_option),
    )
    scripts = write_job_scripts(variants, Path(args.out), options)
    job_ids = submit_or_print(scripts)
    if job_ids:
        print(f"{len(job_ids)} job(s) submitted; when they finish, rerun this sweep without --submit to tabulate")
    return 0


def regenerate_command(args: argparse.Namespace, overrides: list[str]) -> str:
    """The `vlablocks sweep` command line these arguments came from (written at the top of a report)."""
    parts = ["vlablocks", "sweep"]
    for flag, value in (("--base", args.base), ("--grid", args.grid), ("--out", args.out), ("--report", args.report)):
        if value:
            parts += [flag, str(value)]
    for flag, values in (("--variants", args.variants), ("--seeds", args.seeds)):
        if values:
            parts += [flag, *map(str, values)]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    if args.eval_env:
        parts += [
            "--eval-env",
            args.eval_env,
            "--eval-episodes",
            str(args.eval_episodes),
            "--eval-seed",
            str(args.eval_seed),
        ]
        for option in args.eval_option:
            parts += ["--eval-option", option]
        if args.eval_wrong_instruction:
            parts.append("--eval-wrong-instruction")
    return shlex.join(parts + list(overrides))


def report_text(args: argparse.Namespace, overrides: list[str], results: str) -> str:
    """A report: the command that regenerates it, what the columns mean, then the results tables."""
    lines = [f"Regenerate: `{regenerate_command(args, overrides)}`", ""]
    lines.append(
        "Each row of the first table is one training run; `final_loss` is the mean of the last tenth of the "
        "training losses and `train_minutes` the training loop's wall time."
    )
    if args.eval_env:
        lines[-1] += (
            f" Success is closed-loop on {args.eval_episodes} `{args.eval_env}` episodes (seeds {args.eval_seed}-"
            f"{args.eval_seed + args.eval_episodes - 1}), with `success_ci95` its 95% Wilson interval"
            + (
                "; `wrong_instruction_success_rate` is the control with another object named."
                if args.eval_wrong_instruction
                else "."
            )
        )
    lines.append(f"Plot: `{Path(args.out) / 'comparison.png'}`.")
    return "\n".join(lines) + "\n\n" + results
