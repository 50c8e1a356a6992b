"""Seconds from process start to the first optimizer step of `train()` (issue 38: <= 60 s at 3B on a GPU).

    python -m vlablocks.tools.bench.first_step --arch 3b [--device cuda]

The bench's training experiment (QwenOFT, L1 head, Qwen2.5-VL of `--arch`, random init) on synthetic samples; a
watcher thread notes when the run's metrics.jsonl gets its first record (written after step 1's optimizer step),
prints the time since the process started, and ends the process there (the run's final checkpoint is not waited for).
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports, so they count (interpreter start-up, tens of ms, does not)

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402


def watch(metrics: Path, started: float) -> None:
    while not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    print(f"first optimizer step {time.time() - started:.1f} s after the process started", flush=True)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "3b"], default="3b")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    args = parser.parse_args()
    from vlablocks.core.training.train import train
    from vlablocks.tools.bench.models import SEED, bench_examples
    from vlablocks.tools.bench.settings import bench_settings
    from vlablocks.tools.bench.training import on_device, training_experiment

    settings = bench_settings("quick", device=args.device, arch=args.arch)
    run_dir = Path(tempfile.mkdtemp()) / "run"
    experiment = training_experiment(settings, run_dir)
    examples = bench_examples(settings, 2 * settings.batch_size, seed=SEED)
    threading.Thread(target=watch, args=(run_dir / "metrics.jsonl", STARTED), daemon=True).start()
    with on_device(args.device):
        train(experiment, dataset=examples)
    time.sleep(5)  # the watcher ends the process; this is reached only if metrics.jsonl never filled
    raise SystemExit("train() returned without a metrics record")


if __name__ == "__main__":
    main()
