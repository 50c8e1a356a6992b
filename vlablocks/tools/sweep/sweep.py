"""Ablation sweeps: run config variants one after another and tabulate their results.

Variants come from YAML files merged over a base (each may itself use `_base_`), and/or from a grid of
dotlist overrides (every combination). Each variant trains in its own subprocess under
`<out>/<variant>/`, so a crash in one does not take the others down; with a `SweepEval`, the variant's
final checkpoint is then evaluated closed-loop by `vlablocks eval` (and optionally under the
wrong-instruction control) into `<out>/<variant>/eval*/summary.json`. The sweep writes `results.csv`,
`results.md` and `comparison.png` (vlablocks/tools/sweep/report.py). With `seeds`, every variant runs
once per training seed (`<variant>_seed<S>`), and the report adds the mean and spread over seeds.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlablocks.core.config import (
    ExperimentConfig,
    load_config,
    load_yaml,
    merge_overrides,
    parse_experiment,
    resolve,
    to_yaml,
)
from vlablocks.core.training.checkpoint import latest_checkpoint
from vlablocks.tools.sweep.report import write_results

EVAL_DIR = "eval"
WRONG_INSTRUCTION_EVAL_DIR = "eval_wrong_instruction"
TRAIN_CPU_FILE = "train_cpu.json"


@dataclass(frozen=True)
class Variant:
    name: str  # the run's directory name: `group`, or `<group>_seed<S>` when the sweep has seeds
    experiment: ExperimentConfig
    overrides: list[str] = field(default_factory=list)
    group: str = ""  # the variant the seeds are averaged over
    seed: int | None = None


@dataclass(frozen=True)
class SweepEval:
    """Closed-loop evaluation of every variant's final checkpoint (the `vlablocks eval` options)."""

    env: str
    episodes: int = 50
    seed: int = 1000
    env_options: tuple[str, ...] = ()  # env config as dotlist, e.g. "cameras=[top,wrist]"
    wrong_instruction: bool = False  # also run the wrong-instruction control


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def build_variants(
    base: str | None,
    variant_files: list[str],
    grid: dict[str, list] | None,
    overrides: list[str],
    seeds: list[int] | None = None,
) -> list[Variant]:
    """Variant files merged over `base`, crossed with the grid, then with the training `seeds` (each sets the
    experiment's `seed`); shared `overrides` apply to all."""
    base_data = load_yaml(base) if base else {}
    sources = [(Path(f).stem, load_yaml(f)) for f in variant_files] or [("base", {})]
    grid_items = sorted((grid or {}).items())
    combos = list(itertools.product(*[values for _, values in grid_items])) or [()]
    variants = []
    for (stem, data), combo in itertools.product(sources, combos):
        grid_overrides = [f"{key}={value}" for (key, _), value in zip(grid_items, combo)]
        merged = OmegaConf.to_container(OmegaConf.merge(base_data, data), resolve=False)
        name = "_".join([stem] + [_slug(o) for o in grid_overrides])
        for seed in seeds or [None]:
            all_overrides = grid_overrides + list(overrides) + ([] if seed is None else [f"seed={seed}"])
            experiment = parse_experiment(_apply(merged, all_overrides))
            run_name = name if seed is None else f"{name}_seed{seed}"
            variants.append(Variant(run_name, experiment, all_overrides, group=name, seed=seed))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep variants have duplicate names: {names}; give the variant files distinct names")
    return variants


def _apply(data: dict, overrides: list[str]) -> dict:
    return resolve(merge_overrides(data, overrides))


def launch_command(config_path: Path, accelerate_config: str = "configs/accelerate/zero2.yaml") -> str:
    return (
        f"accelerate launch --config_file {accelerate_config} vlablocks/core/training/train.py "
        f"--config-yaml {shlex.quote(str(config_path))}"
    )


def eval_command(evaluation: SweepEval, checkpoint: Path, out: Path, wrong_instruction: bool = False) -> list[str]:
    command = [sys.executable, "-m", "vlablocks.cli.main", "eval", "--env", evaluation.env, "--ckpt", str(checkpoint)]
    command += ["--episodes", str(evaluation.episodes), "--seed", str(evaluation.seed), "--videos", "0"]
    command += ["--out", str(out)] + (["--wrong-instruction"] if wrong_instruction else [])
    return command + list(evaluation.env_options)


def run_sweep(
    variants: list[Variant],
    out_dir: Path,
    dry_run: bool = False,
    evaluation: SweepEval | None = None,
    jobs: int = 1,
) -> list[dict]:
    """Trains (and evaluates) each variant in subprocesses, `jobs` at a time; one result row per variant."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if dry_run:
        for variant in variants:
            config_path = write_variant(variant, out_dir)
            print(launch_command(config_path))
            if evaluation is not None:
                checkpoint = out_dir / variant.name / "checkpoints" / f"step_{variant.experiment.trainer.max_steps}"
                print(shlex.join(eval_command(evaluation, checkpoint, out_dir / variant.name / EVAL_DIR)))
        return []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(lambda variant: _run_variant(variant, out_dir, evaluation), variants))
    write_results(rows, out_dir)
    return rows


def write_variant(variant: Variant, out_dir: Path) -> Path:
    run_dir = out_dir / variant.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "variant.yaml"
    config_path.write_text(to_yaml({**variant.experiment.to_dict(), "run_dir": str(run_dir)}))
    return config_path


def _run_variant(variant: Variant, out_dir: Path, evaluation: SweepEval | None) -> dict:
    run_dir = out_dir / variant.name
    if finished(variant, run_dir, evaluation):
        print(f"[sweep] {variant.name}: finished before with this config, not rerun (delete {run_dir} to rerun)")
        return _result_row(variant, run_dir, "ok")
    config_path = write_variant(variant, out_dir)
    command = [sys.executable, "-m", "vlablocks.cli.main", "train", "--config-yaml", str(config_path)]
    print(f"[sweep] {variant.name}: {' '.join(command)}", flush=True)
    log = run_dir / "train.log"
    result, cpu_seconds = run_with_cpu_time(command, log)
    (run_dir / TRAIN_CPU_FILE).write_text(json.dumps({"cpu_seconds": cpu_seconds}))
    status = _status(result)
    if status == "ok" and evaluation is not None:
        status = evaluate_run(evaluation, run_dir)
    return _result_row(variant, run_dir, status)


def run_with_cpu_time(command: list[str], log: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `command` with its stdout and stderr into `log` -> (the completed process with its stderr, the CPU
    seconds, user + system, it and the children it waited for used: the training process and its DataLoader
    workers, whatever else shares the machine). The CPU time is the figure to hold against a CPU budget; the
    training loop's wall time (`train_minutes`) grows with every other process on the cores."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    result = subprocess.CompletedProcess(command, process.returncode, "", text if process.returncode else "")
    return result, usage.ru_utime + usage.ru_stime


def finished(variant: Variant, run_dir: Path, evaluation: SweepEval | None) -> bool:
    """The variant ran here before with the same config: its final checkpoint verifies and the evaluations
    the sweep asks for are written (so a sweep can be extended, or rerun after an interruption, cheaply)."""
    if not same_experiment(run_dir / "variant.yaml", {**variant.experiment.to_dict(), "run_dir": str(run_dir)}):
        return False
    last = latest_checkpoint(run_dir)
    if last is None or last.name != f"step_{variant.experiment.trainer.max_steps}":
        return False
    if evaluation is None:
        return True
    names = [EVAL_DIR] + ([WRONG_INSTRUCTION_EVAL_DIR] if evaluation.wrong_instruction else [])
    return all((run_dir / name / "summary.json").is_file() for name in names)


def same_experiment(config_path: Path, expected: dict) -> bool:
    """Whether the saved variant.yaml describes the `expected` experiment (a plain mapping).

    The saved file is parsed again with today's schema, so options added since it was written take their
    defaults: a run finished before a new option existed still counts as this experiment, as long as the
    option's default keeps the old behaviour (the project's rule for new options). A file that no longer
    parses (an option removed or renamed) does not count.
    """
    if not config_path.is_file():
        return False
    try:
        saved = load_config(config_path).to_dict()
    except (ValueError, TypeError):  # ConfigError is a ValueError
        return False
    return to_yaml(saved) == to_yaml(expected)


def _status(result: subprocess.CompletedProcess) -> str:
    if result.returncode == 0:
        return "ok"
    stderr = result.stderr.strip()
    return f"failed: {stderr.splitlines()[-1] if stderr else result.returncode}"


def evaluate_run(evaluation: SweepEval, run_dir: Path) -> str:
    """Evaluates the run's final checkpoint; -> "ok" or the failing eval's last error line."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return f"failed: no checkpoint under {run_dir / 'checkpoints'} to evaluate"
    runs = [(EVAL_DIR, False)] + ([(WRONG_INSTRUCTION_EVAL_DIR, True)] if evaluation.wrong_instruction else [])
    for name, wrong_instruction in runs:
        command = eval_command(evaluation, checkpoint, run_dir / name, wrong_instruction)
        (run_dir / name / "summary.json").unlink(missing_ok=True)  # a rerun's table never shows a stale result
        print(f"[sweep] {run_dir.name}: {' '.join(command)}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        (run_dir / f"{name}.log").write_text(shlex.join(command) + "\n" + result.stdout + result.stderr)
        if result.returncode != 0:
            return f"eval {_status(result)}"
    return "ok"


def _result_row(variant: Variant, run_dir: Path, status: str) -> dict:
    records = []
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records]
    trainer = variant.experiment.trainer
    samples = trainer.batch_size * trainer.gradient_accumulation_steps  # per step, one process
    train_seconds = sum(samples / r["samples_per_s"] for r in records if r.get("samples_per_s"))
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    row = {
        "variant": variant.name,
        **({} if variant.seed is None else {"group": variant.group, "seed": variant.seed}),
        "status": status,
        "steps": len(losses),
        "first_loss": round(losses[0], 5) if losses else None,
        "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
        # the training loop's wall time; 4 places: at 2 places a 2-step run under 0.3 s read as 0
        "train_minutes": round(train_seconds / 60, 4) if records else None,
    }
    cpu_file = run_dir / TRAIN_CPU_FILE  # the whole training process's CPU time (run_with_cpu_time)
    if cpu_file.is_file():
        row["train_cpu_minutes"] = round(json.loads(cpu_file.read_text())["cpu_seconds"] / 60, 4)
    eval_file = run_dir / EVAL_DIR / "summary.json"
    if eval_file.is_file():
        summary = json.loads(eval_file.read_text())
        low, high = summary["ci95"]
        row["success_rate"] = round(summary["success_rate"], 4)
        row["success_ci95"] = f"{low:.2f}-{high:.2f}"
        row["eval_episodes"] = summary["episodes"]
    wrong_file = run_dir / WRONG_INSTRUCTION_EVAL_DIR / "summary.json"
    if wrong_file.is_file():
        row["wrong_instruction_success_rate"] = round(json.loads(wrong_file.read_text())["success_rate"], 4)
    row["overrides"] = " ".join(variant.overrides)
    return row


def load_grid(path: str) -> tuple[str | None, dict[str, list]]:
    """A sweep YAML: `{base: path (relative to the sweep file), grid: {dotted.key: [values...]}}`."""
    data = load_yaml(path)
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ValueError(f"sweep file {path}: unknown keys {sorted(unknown)} (valid: base, grid)")
    grid = data.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep file {path}: grid.{key} must be a non-empty list of values")
    base = data.get("base")
    return (str((Path(path).parent / base).resolve()) if base else None), grid
