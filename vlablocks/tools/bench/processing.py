"""Row: where preprocessing runs. The same `train()` loop, model and samples, with the processor as the
DataLoader's collate function in a worker process vs in the training process (`trainer.num_workers` 0).

Each step's time comes from metrics.jsonl (`samples_per_s`), and `data_ms` is how long the training
process waited for its batch: with `num_workers: 0` that is the whole processor (chat template, tokenizer,
resize, Qwen image processor, normalization, collation); with workers it is only the hand-over, since the
next batch is prepared while the model trains on this one. Runs alternate (in-process, workers, ...); the
first steps of each run are dropped as warm-up; the median step time over the rest is compared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vlablocks.core.config import ExperimentConfig
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.tools.bench.models import SEED, bench_experiment, free_memory
from vlablocks.tools.bench.result import Goal, Row, Side
from vlablocks.tools.bench.settings import BenchSettings, bench_platform
from vlablocks.tools.bench.training import run_train, step_ms


def processing_experiment(settings: BenchSettings, run_dir: Path, workers: int) -> ExperimentConfig:
    framework = {"name": "QwenOFT", "action_model": {"name": "l1_regression", "hidden_dim": 256, "num_blocks": 2}}
    trainer = {
        "max_steps": settings.train_warmup_steps + settings.train_steps,
        "batch_size": settings.processing_batch,
        "learning_rate": 1e-4,
        "lr_schedule": "constant",
        "save_every": 10**9,
        "log_every": 1,
        "num_workers": workers,
        "torch_threads": 1 if settings.device == "cpu" else None,  # the other core is the worker's
        "mixed_precision": "bf16" if settings.device == "cuda" else "no",
    }
    return bench_experiment(
        framework, settings, run_dir=str(run_dir), trainer=trainer, image_size=settings.processing_image
    )


def handover_floor_ms(fetches: int, worker_sharing: str) -> float:
    """Median ms to receive a batch of ONE tiny tensor from a DataLoader worker that is already ahead: the
    cost of the hand-over itself (queue, unpickling, shared memory), whatever the batch holds."""
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy(worker_sharing)
    try:
        loader = iter(DataLoader(range(10**6), batch_size=1, num_workers=1, collate_fn=lambda _: torch.zeros(1)))
        next(loader)  # the worker is started
        times = []
        for _ in range(fetches):
            time.sleep(0.05)  # let the worker get ahead
            start = time.perf_counter()
            next(loader)
            times.append(1e3 * (time.perf_counter() - start))
        del loader
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)
    return statistics.median(times)


def processing_row(settings: BenchSettings) -> Row:
    batch, views, image, workers_side = (
        settings.processing_batch,
        settings.processing_views,
        settings.processing_image,
        settings.processing_workers,
    )
    samples = synthetic_examples(bench_platform(), 8 * batch, num_views=views, image_size=image, seed=SEED)
    skip = settings.train_warmup_steps
    steps = {0: [], workers_side: []}
    waits = {0: [], workers_side: []}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(settings.train_runs):
            for workers in (0, workers_side):
                experiment = processing_experiment(settings, Path(tmp) / f"run_{run}_{workers}", workers)
                records, losses[workers] = run_train(experiment, samples, settings.device)
                free_memory(settings.device)
                steps[workers] += step_ms(records, batch)[skip:]
                waits[workers] += [record["data_ms"] for record in records][skip:]
    loss_gap = max(abs(a - b) for a, b in zip(losses[0], losses[workers_side]))
    floor = handover_floor_ms(20, experiment.trainer.worker_sharing)
    wait_workers, wait_inline = statistics.median(waits[workers_side]), statistics.median(waits[0])
    notes = [
        f"QwenOFT (Qwen2.5-VL arch {settings.arch}), batch {batch} x {views} views x {image} px, "
        f"{workers_side} DataLoader worker vs none; runs per side (alternating): {settings.train_runs}, each "
        f"{settings.train_steps} timed steps after {skip} warm-up steps.",
        f"Training process waiting for its batch (median ms/step): {wait_workers:.2f} with the worker, "
        f"{wait_inline:.1f} preprocessing in process; the DataLoader hand-over of a batch of one tiny tensor "
        f"takes {floor:.2f} ms here ({experiment.trainer.worker_sharing} sharing), the floor of the first figure.",
        f"Same batches on both sides: losses differ by at most {loss_gap:.1e}.",
    ]
    return Row(
        key="processing",
        title="processing: processor in the DataLoader worker vs in the training process",
        unit="ms/step",
        ours=Side(f"{workers_side} worker", steps[workers_side]),
        baseline=Side("in process", steps[0]),
        ratio_name="steps/s workers / in process",
        invert=True,
        goals=[Goal("ratio", ">=", 1.1), Goal("training_process_data_ms", "<=", 1.0)],
        notes=notes,
        checks={
            "training_process_data_ms": wait_workers,
            "in_process_data_ms": wait_inline,
            "handover_floor_ms": floor,
            "loss_max_abs_diff": loss_gap,
        },
    )
