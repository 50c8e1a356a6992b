"""A sweep's tables and plot: `results.csv` / `results.md` (one row per run), and when the sweep has
training seeds, `over_seeds.csv` plus a second table in `results.md` (per variant: mean, minimum, standard
deviation and range over seeds of success and of the wrong-instruction control, final loss, training time)
and `comparison.png` (loss curves: per variant the mean over seeds with the min-max band; success bars
with the spread over seeds beside the control).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

SEED_COLUMNS = ("success_rate", "wrong_instruction_success_rate", "final_loss", "train_minutes", "train_cpu_minutes")


def over_seeds(rows: list[dict]) -> list[dict]:
    """Per variant group (rows carrying `group` and `seed`), the statistics over its seeds that finished: for each
    of SEED_COLUMNS the mean, the minimum (a recipe's worst seed), the sample standard deviation and the range."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if "seed" in row:
            groups.setdefault(row["group"], []).append(row)
    table = []
    for group, members in groups.items():
        done = [m for m in members if m["status"] == "ok"]
        entry = {"variant": group, "seeds": " ".join(str(m["seed"]) for m in done), "failed": len(members) - len(done)}
        for column in SEED_COLUMNS:
            values = np.array([m[column] for m in done if m.get(column) is not None], dtype=float)
            if values.size:
                entry[f"{column}_mean"] = round(float(values.mean()), 4)
                entry[f"{column}_min"] = round(float(values.min()), 4)  # the worst seed, for success
                entry[f"{column}_std"] = round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4)
                entry[f"{column}_range"] = f"{values.min():.4g}-{values.max():.4g}"
        table.append(entry)
    return table


def _columns(rows: list[dict]) -> list[str]:
    # A failed variant has no eval columns; sorting keeps `overrides` last whichever row comes first.
    return sorted(dict.fromkeys(key for row in rows for key in row), key=lambda column: column == "overrides")


def markdown_table(rows: list[dict]) -> list[str]:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + [
        "| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows
    ]


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = _columns(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(rows: list[dict], out_dir: Path) -> list[dict]:
    """Writes the tables and the plot; returns the over-seeds table (empty without seeds)."""
    _write_csv(rows, out_dir / "results.csv")
    lines = markdown_table(rows)
    seeds_table = over_seeds(rows)
    if seeds_table:
        _write_csv(seeds_table, out_dir / "over_seeds.csv")
        heading = "Over training seeds (mean, minimum, sample standard deviation, range):"
        lines += ["", heading, ""] + markdown_table(seeds_table)
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, seeds_table, out_dir)
    return seeds_table


def _losses(metrics_file: Path) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return np.array([r["step"] for r in records]), np.array([r["loss"] for r in records])


def _smooth(losses: np.ndarray) -> tuple[np.ndarray, int]:
    # Per-step losses are noisy enough to hide the curves' differences: a running mean is drawn bold.
    window = max(1, len(losses) // 50)
    return np.convolve(losses, np.ones(window) / window, mode="valid"), window


def _plot(rows: list[dict], seeds_table: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if seeds_table else 1, figsize=(12 if seeds_table else 7, 4), squeeze=False)
    ax = axes[0, 0]
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row.get("group", row["variant"]), []).append(row)
    for group, members in by_group.items():
        curves = [_losses(f) for m in members if (f := out_dir / m["variant"] / "metrics.jsonl").is_file()]
        if not curves:
            continue
        length = min(len(steps) for steps, _ in curves)
        steps = curves[0][0][:length]
        smoothed = [_smooth(losses[:length]) for _, losses in curves]
        window = smoothed[0][1]
        stack = np.stack([s for s, _ in smoothed])
        (line,) = ax.plot(steps[window - 1 :], stack.mean(0), label=group, linewidth=1.5)
        if len(curves) > 1:
            ax.fill_between(steps[window - 1 :], stack.min(0), stack.max(0), color=line.get_color(), alpha=0.2)
        else:
            ax.plot(steps, curves[0][1][:length], color=line.get_color(), linewidth=0.5, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if seeds_table:
        _plot_success(axes[0, 1], seeds_table)
    fig.tight_layout()
    fig.savefig(out_dir / "comparison.png", dpi=100)
    plt.close(fig)


def _plot_success(ax, seeds_table: list[dict]) -> None:
    names = [entry["variant"] for entry in seeds_table]
    x = np.arange(len(names))
    for offset, column, label in ((-0.2, "success_rate", "success"), (0.2, "wrong_instruction_success_rate", "wrong")):
        means = [entry.get(f"{column}_mean", np.nan) for entry in seeds_table]
        stds = [entry.get(f"{column}_std", 0.0) for entry in seeds_table]
        ax.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, label=f"{label} (mean +- sd over seeds)")
    ax.set_xticks(x, names, rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-loop success")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
