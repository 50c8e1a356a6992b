"""The rows of `vlablocks bench`, run one after another, and the report they make.

A row that raises is recorded with its one-line error and the others still run; the caller decides the
exit status. Rows are measured in this order so the cheap model rows come before the subprocess ones.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlablocks.tools.bench.checkpointing import checkpointing_row
from vlablocks.tools.bench.compiled import compiled_row
from vlablocks.tools.bench.data import data_row
from vlablocks.tools.bench.flow import flow_row
from vlablocks.tools.bench.inference import inference_row
from vlablocks.tools.bench.memory import memory_row
from vlablocks.tools.bench.pi05 import pi05_row
from vlablocks.tools.bench.processing import processing_row
from vlablocks.tools.bench.result import Row, write_report
from vlablocks.tools.bench.rollout import rollout_row
from vlablocks.tools.bench.server import server_row
from vlablocks.tools.bench.settings import BenchSettings
from vlablocks.tools.bench.training import training_row

ROWS: dict[str, Callable[[BenchSettings], Row]] = {
    "training": training_row,
    "checkpointing": checkpointing_row,
    "processing": processing_row,
    "data": data_row,
    "inference": inference_row,
    "compiled": compiled_row,
    "flow_matching": flow_row,
    "pi05": pi05_row,
    "rollout": rollout_row,
    "server": server_row,
    "memory": memory_row,
}


@dataclass
class BenchReport:
    rows: list[Row]
    errors: dict[str, str] = field(default_factory=dict)  # row key -> one-line error
    meta: dict = field(default_factory=dict)
    paths: tuple[Path, ...] = ()


def machine(settings: BenchSettings) -> str:
    """The machine in words: CPU count and model or the GPU name."""
    cpu = platform.processor() or platform.machine()
    if settings.device == "cuda":
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPUs)"
    return f"{os.cpu_count()}-CPU {cpu} host, torch {torch.__version__} with {torch.get_num_threads()} threads"


def run_suite(
    settings: BenchSettings,
    out_dir: str | Path,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> BenchReport:
    """Measures the selected rows (all by default), writes bench.json and bench.md into out_dir."""
    selected = only or list(ROWS)
    unknown = [key for key in selected if key not in ROWS]
    if unknown:
        raise ValueError(f"unknown bench row(s) {', '.join(unknown)} (available: {', '.join(ROWS)})")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    report = BenchReport(rows=[])
    seconds: dict[str, float] = {}
    for key in selected:
        log(f"[bench] {key} ...")
        start = time.perf_counter()
        try:
            report.rows.append(ROWS[key](settings))
        except Exception as exc:  # one broken row must not hide the others' figures
            report.errors[key] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log(f"[bench] {key} FAILED: {report.errors[key]}")
        seconds[key] = round(time.perf_counter() - start, 1)
        if key not in report.errors:
            log(f"[bench] {key}: {report.rows[-1].verdict()} ({seconds[key]} s)")
    report.meta = {
        "profile": settings.profile,
        "device": settings.device,
        "arch": settings.arch,
        "threads": torch.get_num_threads(),
        "machine": machine(settings),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds_per_row": seconds,
        "errors": report.errors,
    }
    report.paths = write_report(report.rows, report.meta, out_dir)
    return report
