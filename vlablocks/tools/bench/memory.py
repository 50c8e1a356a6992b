"""Row 6: peak RSS per rank of a training run under DeepSpeed ZeRO-2 vs DDP, 2 CPU ranks (reported, no goal).

Launches `tests/zero_worker.py` (the 2-layer MLP run of tests/test_zero.py, which gathers every rank's
`ru_maxrss`) as `accelerate launch --config_file configs/accelerate/{zero2,ddp}.yaml --num_processes 2`,
alternating the two; each launch contributes the larger of its two ranks' peaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vlablocks.tools.bench.result import Row, Side
from vlablocks.tools.bench.settings import REPO, BenchSettings, require_checkout

BATCH_SIZE = 4


def peak_rss_mib(config: str, settings: BenchSettings, out: Path) -> float:
    """One 2-rank launch of the ZeRO worker under `config` -> the largest per-rank peak RSS in MiB."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(require_checkout(f"configs/accelerate/{config}")),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",  # a free port
        str(require_checkout("tests/zero_worker.py")),
        "--out",
        str(out),
        "--batch_size",
        str(BATCH_SIZE),
        "--steps",
        str(settings.zero_steps),
        "--hidden",
        str(settings.zero_hidden),
    ]
    # CPU ranks even on a GPU host: the comparison is about ZeRO's sharded optimizer, as in tests/test_zero.py.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"accelerate launch with {config} failed (exit {proc.returncode}): {tail[0]}")
    return max(json.loads(out.read_text())["peak_rss_mib_per_rank"])


def memory_row(settings: BenchSettings) -> Row:
    peaks: dict[str, list[float]] = {"zero2.yaml": [], "ddp.yaml": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(settings.zero_runs):
            for config in peaks:
                peaks[config].append(peak_rss_mib(config, settings, Path(tmp) / f"{config}.{run}.json"))
    params = 18 * settings.zero_hidden + 1  # Linear(16, H) + Linear(H, 1)
    return Row(
        key="memory",
        title="memory: peak RSS per rank of a training run, ZeRO-2 vs DDP, 2 CPU ranks",
        unit="MiB",
        ours=Side("ZeRO-2", peaks["zero2.yaml"]),
        baseline=Side("DDP", peaks["ddp.yaml"]),
        ratio_name="ZeRO-2 / DDP",
        notes=[
            f"tests/zero_worker.py MLP 16 -> {settings.zero_hidden} -> 1 ({params:,} parameters, AdamW),"
            f" micro-batch {BATCH_SIZE}, {settings.zero_steps} steps, launches per side (alternating): {settings.zero_runs};"
            " the larger rank's peak per launch; always CPU ranks (gloo), whatever --device says."
        ],
    )
