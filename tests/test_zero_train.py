"""The real training loop (tiny QwenOFT) under DeepSpeed ZeRO-2 on 2 CPU ranks matches one plain process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from launch_helpers import ROOT, accelerate_launch, cpu_env, printed_losses, train_worker_args


def run(prefix: list[str], run_dir: Path, batch_size: int) -> list[float]:
    command = prefix + train_worker_args(run_dir, batch_size, 10)
    return printed_losses(subprocess.run(command, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600))


def test_zero2_two_ranks_match_one_process(tmp_path):
    single = run([sys.executable], tmp_path / "single", batch_size=4)
    zero2 = run(accelerate_launch("zero2.yaml", 2), tmp_path / "zero2", batch_size=2)
    assert len(single) == len(zero2) == 10
    assert single[0] != single[-1]  # it trained
    np.testing.assert_allclose(zero2, single, rtol=0, atol=1e-4)
