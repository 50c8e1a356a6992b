"""Benchmark rows: both sides' measurements, their medians, the ratio and the goals, as JSON and markdown."""

from __future__ import annotations

import json
import operator
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

OPERATORS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Goal:
    """A target on the row's ratio, one side's median or one of its `checks`: `subject op value`, e.g. ratio >= 15."""

    subject: str  # "ratio", "ours", "baseline" or a key of Row.checks
    op: Literal["<=", ">="]
    value: float

    def met(self, row: Row) -> bool:
        if self.subject == "ratio":
            measured = row.ratio
        elif self.subject in ("ours", "baseline"):
            measured = getattr(row, self.subject).median
        else:
            measured = row.checks[self.subject]
        return OPERATORS[self.op](measured, self.value)

    def describe(self, row: Row) -> str:
        if self.subject not in ("ratio", "ours", "baseline"):
            return f"{self.subject} {self.op} {self.value:g}"
        what = "ratio" if self.subject == "ratio" else f"{getattr(row, self.subject).label} ({row.unit})"
        return f"{what} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a label and one value per repeat (after warm-up), in the row's unit."""

    label: str
    values: list[float]

    @property
    def median(self) -> float:
        if not self.values:
            raise ValueError(f"{self.label}: no measurements")
        return float(statistics.median(self.values))


@dataclass(frozen=True)
class Row:
    """One figure: `ours` against `baseline`; ratio = ours.median / baseline.median unless `invert`."""

    key: str
    title: str
    unit: str
    ours: Side
    baseline: Side
    ratio_name: str  # how the ratio reads, e.g. "vlablocks / bare"
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)  # fairness checks, e.g. {"loss_max_abs_diff": 0.0}
    invert: bool = False  # ratio = baseline / ours (speed-ups where the unit is a time)

    @property
    def ratio(self) -> float:
        top, bottom = (
            (self.baseline.median, self.ours.median) if self.invert else (self.ours.median, self.baseline.median)
        )
        return top / bottom if bottom else float("inf")

    def verdict(self) -> str:
        """'meets ...' / 'MISSES ...' per goal, or 'report' when the row has none."""
        if not self.goals:
            return "report (no goal)"
        return "; ".join(f"{'meets' if g.met(self) else 'MISSES'} {g.describe(self)}" for g in self.goals)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "ours": {**asdict(self.ours), "median": self.ours.median},
            "baseline": {**asdict(self.baseline), "median": self.baseline.median},
            "ratio_name": self.ratio_name,
            "ratio": self.ratio,
            "goals": [{**asdict(g), "text": g.describe(self), "met": g.met(self)} for g in self.goals],
            "verdict": self.verdict(),
            "notes": list(self.notes),
            "checks": dict(self.checks),
        }


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: str = "cpu") -> dict:
    """Times several callables in alternation (a, b, a, b, ...) so both sides see the same machine load.

    -> {name: [ms per call]} for `repeats` calls each, after `warmup` untimed calls each.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(warmup + repeats):
        for name, fn in fns.items():
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            if index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def markdown_table(rows: list[Row]) -> str:
    """One line per row: both medians, the ratio and the verdict."""
    lines = [
        "| # | figure | ours | baseline | ratio | goal |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for number, row in enumerate(rows, 1):
        ours = f"{row.ours.label}: {_fmt(row.ours.median)} {row.unit}"
        baseline = f"{row.baseline.label}: {_fmt(row.baseline.median)} {row.unit}"
        ratio = f"{row.ratio:.2f} ({row.ratio_name})"
        lines.append(f"| {number} | {row.title} | {ours} | {baseline} | {ratio} | {row.verdict()} |")
    return "\n".join(lines)


def notes_markdown(rows: list[Row]) -> str:
    return "\n".join(f"- **{row.title}**: " + " ".join(row.notes) for row in rows if row.notes)


def report_markdown(rows: list[Row], meta: dict) -> str:
    """The table with a header line naming the run, then each row's notes and any failed rows."""
    header = (
        f"`vlablocks bench` profile {meta['profile']}, device {meta['device']}, arch {meta['arch']}; "
        f"{meta['machine']}; {meta['date']}"
    )
    failures = "\n".join(f"- **{key} FAILED**: {error}" for key, error in meta.get("errors", {}).items())
    return "\n\n".join(part for part in (header, markdown_table(rows), notes_markdown(rows), failures) if part) + "\n"


def write_report(rows: list[Row], meta: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Writes `bench.json` (every measured value) and `bench.md` (the table) into out_dir -> their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps({"meta": meta, "rows": [row.to_dict() for row in rows]}, indent=1))
    md_path.write_text(report_markdown(rows, meta))
    return json_path, md_path


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
