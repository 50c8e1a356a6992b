"""Ablation sweeps: run config variants one after another and tabulate their results.

Variants come from YAML files merged over a base (each may itself use `_base_`), and/or from a grid of
dotlist overrides (every combination). Each variant trains in its own subprocess under
`<out>/<variant>/`, so a crash in one does not take the others down; the sweep then writes
`results.csv`, `results.md` and `comparison.png`.
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlablocks.config import ExperimentConfig, load_yaml, merge_overrides, resolve, to_yaml, validate


@dataclass(frozen=True)
class Variant:
    name: str
    experiment: dict
    overrides: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def build_variants(
    base: str | None, variant_files: list[str], grid: dict[str, list] | None, overrides: list[str]
) -> list[Variant]:
    """Variant files merged over `base`, crossed with the grid; shared `overrides` apply to all."""
    base_data = load_yaml(base) if base else {}
    sources = [(Path(f).stem, load_yaml(f)) for f in variant_files] or [("base", {})]
    grid_items = sorted((grid or {}).items())
    combos = list(itertools.product(*[values for _, values in grid_items])) or [()]
    variants = []
    for (stem, data), combo in itertools.product(sources, combos):
        grid_overrides = [f"{key}={value}" for (key, _), value in zip(grid_items, combo)]
        merged = OmegaConf.to_container(OmegaConf.merge(base_data, data), resolve=False)
        name = "_".join([stem] + [_slug(o) for o in grid_overrides])
        all_overrides = grid_overrides + list(overrides)
        experiment = validate(_apply(merged, all_overrides), ExperimentConfig)
        variants.append(Variant(name=name, experiment=experiment, overrides=all_overrides))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep variants have duplicate names: {names}; give the variant files distinct names")
    return variants


def _apply(data: dict, overrides: list[str]) -> dict:
    return resolve(merge_overrides(data, overrides))


def launch_command(config_path: Path, accelerate_config: str = "configs/accelerate/zero2.yaml") -> str:
    return (
        f"accelerate launch --config_file {accelerate_config} vlablocks/training/train.py "
        f"--config_yaml {shlex.quote(str(config_path))}"
    )


def run_sweep(variants: list[Variant], out_dir: Path, dry_run: bool = False) -> list[dict]:
    """Trains each variant in a subprocess; returns one result row per variant."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in variants:
        run_dir = out_dir / variant.name
        run_dir.mkdir(parents=True, exist_ok=True)
        experiment = {**variant.experiment, "run_dir": str(run_dir)}
        config_path = run_dir / "variant.yaml"
        config_path.write_text(to_yaml(experiment))
        if dry_run:
            print(launch_command(config_path))
            continue
        command = [sys.executable, "-m", "vlablocks.cli", "train", "--config_yaml", str(config_path)]
        print(f"[sweep] {variant.name}: {' '.join(command)}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        (run_dir / "train.log").write_text(result.stdout + result.stderr)
        rows.append(_result_row(variant, run_dir, result.returncode, result.stderr))
    if rows:
        write_results(rows, out_dir)
    return rows


def _result_row(variant: Variant, run_dir: Path, returncode: int, stderr: str) -> dict:
    losses = []
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        losses = [json.loads(line)["loss"] for line in metrics_file.read_text().splitlines() if line.strip()]
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    row = {
        "variant": variant.name,
        "status": (
            "ok" if returncode == 0 else f"failed: {stderr.strip().splitlines()[-1] if stderr.strip() else returncode}"
        ),
        "steps": len(losses),
        "first_loss": round(losses[0], 5) if losses else None,
        "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "overrides": " ".join(variant.overrides),
    }
    eval_file = run_dir / "eval" / "summary.json"
    if eval_file.is_file():
        summary = json.loads(eval_file.read_text())
        row["success_rate"] = summary.get("success_rate")
    return row


def write_results(rows: list[dict], out_dir: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out_dir)


def _plot(rows: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        metrics_file = out_dir / row["variant"] / "metrics.jsonl"
        if metrics_file.is_file():
            records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=row["variant"], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "comparison.png", dpi=100)
    plt.close(fig)


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
