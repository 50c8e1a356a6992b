"""Row 1: time per training step of the vlablocks loop (`train()`) vs a bare PyTorch loop, same model and batches.

vlablocks: `vlablocks.core.training.train.train(experiment, dataset=examples)`, the real loop (accelerate,
           rank-aware resumable batches, loss reduction, LR schedule, metrics.jsonl + tensorboard every
           step). Its step times come from metrics.jsonl: `samples_per_s` is the batch over the wall time
           between two consecutive steps' logs, so a step includes fetching its batch and logging.
bare:      the same framework built from the same seed, `torch.optim.AdamW` with the same settings, the same
           batches in the same order (taken from the loop's own sampler beforehand), and per step only
           forward, backward, `optimizer.step()`, `zero_grad` and `loss.item()`.
Both use a constant learning rate and no clipping, so they do identical arithmetic: the row checks that
their losses agree. It also reports the model FLOPs per sample counted from the config (flops.py) and the MFU of
both sides against the chip's peak (a goal of 35% at 3B on a GPU, issue 38), and the share of the LLM's tokens that
are padding in the run's batches and in the batches trainer.group_by_length draws from the same samples. Runs alternate (vlablocks, bare, vlablocks, ...); the first steps of each run are
dropped as warm-up; the median step time over the rest is compared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import torch

from vlablocks.core.config import ExperimentConfig
from vlablocks.core.framework.synthetic import synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.training.batches import length_source, micro_batches
from vlablocks.core.training.components import seed_everything
from vlablocks.core.training.train import train
from vlablocks.tools.bench.flops import peak_flops, step_flops
from vlablocks.tools.bench.models import SEED, bench_examples, bench_experiment, free_memory
from vlablocks.tools.bench.result import Goal, Row, Side
from vlablocks.tools.bench.settings import BenchSettings

LEARNING_RATE = 1e-4
BETAS = (0.9, 0.95)


def training_experiment(settings: BenchSettings, run_dir: Path) -> ExperimentConfig:
    framework = {"name": "QwenOFT", "action_model": {"name": "l1_regression", "hidden_dim": 256, "num_blocks": 2}}
    trainer = {
        "max_steps": settings.train_warmup_steps + settings.train_steps,
        "batch_size": settings.batch_size,
        "learning_rate": LEARNING_RATE,
        "betas": list(BETAS),
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": None,
        "save_every": 10**9,  # only the final checkpoint, written after the last timed step
        "log_every": 1,
        "mixed_precision": "bf16" if settings.device == "cuda" else "no",
    }
    return bench_experiment(framework, settings, run_dir=str(run_dir), trainer=trainer)


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Makes accelerate place `train()` on `device` (it picks CUDA whenever there is one)."""
    previous = os.environ.get("ACCELERATE_USE_CPU")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = previous


def run_train(experiment: ExperimentConfig, dataset: list[dict], device: str) -> tuple[list[dict], list[float]]:
    """Runs `train()` -> (its metrics.jsonl records, losses). Its console output is swallowed."""
    with on_device(device), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = train(experiment, dataset=dataset)
    records = [json.loads(line) for line in (Path(experiment.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return records, result["losses"]


def step_ms(records: list[dict], batch_size: int) -> list[float]:
    """Wall time per step from the logged samples/s (a step includes fetching its batch and logging)."""
    return [1e3 * batch_size / record["samples_per_s"] for record in records]


def vlablocks_loop(experiment: ExperimentConfig, examples: list[dict], device: str) -> tuple[list[float], list[float]]:
    """Runs `train()` -> (ms per step from metrics.jsonl, losses)."""
    records, losses = run_train(experiment, examples, device)
    return step_ms(records, experiment.trainer.batch_size), losses


def bare_loop(
    experiment: ExperimentConfig, examples: list[dict], device: str
) -> tuple[list[float], list[float], tuple[float, float]]:
    """Forward, backward, AdamW step on the same model and batches -> (ms per step, losses, (counted training FLOPs
    per sample (flops.py), the share of the LLM's tokens that are padding, the same share over the batches
    trainer.group_by_length would draw))."""
    trainer = experiment.trainer
    seed_everything(experiment.seed)  # as train() does before building, so the weights are the same
    policy = build_policy(experiment, synthetic_norm_stats(examples)).to(device)
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.learning_rate, betas=BETAS, weight_decay=0.0)
    batches = list(islice(micro_batches(examples, trainer.batch_size, experiment.seed), trainer.max_steps))
    # train() runs the processor in this process too (trainer.num_workers 0): the bare loop does the same.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")  # train()'s bf16 on CUDA
    model.train()
    counted = [step_flops(model, policy.processor(batch)) for batch in batches]
    flops_per_sample = sum(c.training for c in counted) / sum(len(batch) for batch in batches)
    padding = padding_of(model, policy.processor, batches)
    grouped = list(islice(grouped_batches(examples, trainer, experiment.seed, policy.processor), trainer.max_steps))
    padding_grouped = padding_of(model, policy.processor, grouped)
    times, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        with autocast:
            loss = model(policy.processor(batch).to(device))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append((time.perf_counter() - start) * 1e3)
    return times, losses, (flops_per_sample, padding, padding_grouped)


def grouped_batches(examples: list[dict], trainer, seed: int, processor) -> Iterator[list[dict]]:
    """The batches `train()` draws with trainer.group_by_length (the same sampler, grouped by prompt length)."""
    lengths = length_source(dataclasses.replace(trainer, group_by_length=True), examples, processor)
    return micro_batches(
        examples, trainer.batch_size, seed, lengths=lengths, mega_batches=trainer.group_by_length_mega_batches
    )


def padding_of(model, processor, batches: list[list[dict]]) -> float:
    """The share of the LLM's tokens that are padding over `batches` (as processed: rows x the longest row)."""
    counted = [step_flops(model, processor(batch)) for batch in batches]
    return 1 - sum(c.real_tokens for c in counted) / sum(c.padded_tokens for c in counted)


def training_row(settings: BenchSettings) -> Row:
    examples = bench_examples(settings, 8 * settings.batch_size, seed=SEED)
    skip = settings.train_warmup_steps
    ours, bare, loss_gap = [], [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(settings.train_runs):
            experiment = training_experiment(settings, Path(tmp) / f"run_{run}")
            loop_ms, loop_losses = vlablocks_loop(experiment, examples, settings.device)
            free_memory(settings.device)
            bare_ms, bare_losses, (flops_per_sample, padding, grouped) = bare_loop(
                experiment, examples, settings.device
            )
            free_memory(settings.device)
            ours += loop_ms[skip:]
            bare += bare_ms[skip:]
            loss_gap = max(loss_gap, max(abs(a - b) for a, b in zip(loop_losses, bare_losses)))
    batch = settings.batch_size
    loop_side, bare_side = Side("vlablocks train()", ours), Side("bare PyTorch", bare)
    peak, peak_source = peak_flops(settings.device)
    mfu = {
        name: flops_per_sample * 1e3 * batch / side.median / peak
        for name, side in (("ours", loop_side), ("bare", bare_side))
    }
    notes = [
        f"QwenOFT (Qwen2.5-VL arch {settings.arch}, L1 head), batch {batch}, 1 view {settings.image_size}px,"
        f" AdamW lr {LEARNING_RATE:g} constant, no clipping; runs per side (alternating): {settings.train_runs},"
        f" each {settings.train_steps} timed steps after {skip} warm-up steps.",
        f"Samples/s: vlablocks {1e3 * batch / loop_side.median:.1f}, bare {1e3 * batch / bare_side.median:.1f}.",
        f"Same arithmetic on both sides: losses differ by at most {loss_gap:.1e}.",
        f"Model FLOPs (flops.py, from the config): {flops_per_sample / 1e9:.3g} GFLOP per training sample; padding"
        f" {100 * padding:.1f}% of the LLM's tokens (not counted), {100 * grouped:.1f}% with trainer.group_by_length"
        f" (the same samples' batches grouped by prompt length). MFU: vlablocks {100 * mfu['ours']:.1f}%,"
        f" bare {100 * mfu['bare']:.1f}% of {peak_source}.",
    ]
    return Row(
        key="training",
        title="training step: vlablocks loop vs bare PyTorch loop",
        unit="ms/step",
        ours=loop_side,
        baseline=bare_side,
        ratio_name="vlablocks / bare",
        goals=[Goal("ratio", "<=", 1.05)] + ([Goal("mfu", ">=", 0.35)] if settings.arch == "3b" else []),
        notes=notes,
        checks={
            "loss_max_abs_diff": loss_gap,
            "mfu": mfu["ours"],
            "gflop_per_sample": flops_per_sample / 1e9,
            "padding": padding,
            "padding_grouped": grouped,
        },
    )
