"""The real training loop (tiny QwenOFT) under DeepSpeed ZeRO-2 on 2 CPU ranks matches one plain process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"


def run(prefix: list[str], run_dir: Path, batch_size: int) -> list[float]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    command = prefix + [str(WORKER), "--run_dir", str(run_dir), "--batch_size", str(batch_size)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_zero2_two_ranks_match_one_process(tmp_path):
    single = run([sys.executable], tmp_path / "single", batch_size=4)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(ROOT / "configs/accelerate/zero2.yaml"), "--num_processes", "2", "--main_process_port", "0"]
    zero2 = run(launch, tmp_path / "zero2", batch_size=2)
    assert len(single) == len(zero2) == 10
    assert single[0] != single[-1]  # it trained
    np.testing.assert_allclose(zero2, single, rtol=0, atol=1e-4)
