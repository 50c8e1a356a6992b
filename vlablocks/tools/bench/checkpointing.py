"""Row: activation checkpointing's trade, time per training step with it vs without, and the memory it saves.

Both sides run the bare training step of the training row (forward, backward, AdamW step) on the same QwenOFT, the
same batches and the same seed; one with `framework.vlm.gradient_checkpointing: true` (the VLM's decoder layers keep
only their inputs and recompute the rest in the backward pass), one without. Runs alternate. The first step of a run
allocates AdamW's state and is not timed. Its forward is where the memory is counted, on any device: the bytes of
the tensors autograd saves for backward (`torch.autograd.graph.saved_tensors_hooks`; distinct storages, parameters
excluded), i.e. the activations held at the end of the forward pass; inside a checkpointed layer the checkpoint's own
hooks keep nothing but the layer's inputs. On a GPU the row also reports the peak allocated over the timed steps
above the weights, gradients and optimizer state (`torch.cuda.max_memory_allocated`). Checkpointing does the same
arithmetic, so the row checks that both sides' losses agree.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from vlablocks.core.config import ExperimentConfig
from vlablocks.core.framework.synthetic import synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.training.batches import micro_batches
from vlablocks.core.training.components import seed_everything
from vlablocks.tools.bench.models import SEED, bench_examples, count_calls, free_memory
from vlablocks.tools.bench.result import Row, Side
from vlablocks.tools.bench.settings import BenchSettings
from vlablocks.tools.bench.training import BETAS, training_experiment


def with_checkpointing(experiment: ExperimentConfig, enabled: bool) -> ExperimentConfig:
    framework = experiment.framework  # the framework section as parsed: a dict
    vlm = {**framework["vlm"], "gradient_checkpointing": enabled}
    return dataclasses.replace(experiment, framework={**framework, "vlm": vlm})


def first_attention(model: torch.nn.Module) -> torch.nn.Module:
    """The self-attention of the LLM's first decoder layer. transformers checkpoints a layer's `forward` (its own
    hooks stay outside), so a recompute shows as a second entry into the layer's children, not into the layer."""
    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    return dict(layer.named_children())["self_attn"]


@contextmanager
def saved_for_backward(model: torch.nn.Module) -> Iterator[list[int]]:
    """Bytes of the distinct non-parameter storages autograd saves for backward inside the block: [n]."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    total = [0]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total
    total[0] = sum(storages.values())


@dataclass
class Steps:
    """One run's measurements."""

    ms: list[float]  # per timed step
    losses: list[float]  # every step's
    saved_bytes: int  # saved for backward in the first step's forward (`saved_for_backward`)
    attention_entries: int  # per step, into the first decoder layer's attention: 2 when recomputed in backward
    cuda_peak_bytes: int  # on a GPU: peak allocated over the timed steps above what was held before them; else 0


def bare_steps(experiment: ExperimentConfig, examples: list[dict], device: str) -> Steps:
    """The training row's bare step (forward, backward, AdamW) on `experiment`'s model, batches processed first."""
    trainer = experiment.trainer
    seed_everything(experiment.seed)
    policy = build_policy(experiment, synthetic_norm_stats(examples)).to(device)
    model = policy.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.learning_rate, betas=BETAS, weight_decay=0.0)
    raw = list(islice(micro_batches(examples, trainer.batch_size, experiment.seed), trainer.max_steps))
    batches = [policy.processor(batch).to(device) for batch in raw]  # processed before timing: the model's trade only
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    times, losses, held, saved = [], [], 0, [0]
    with count_calls(first_attention(model)) as entries:
        for index, batch in enumerate(batches):
            if index == 1 and device == "cuda":  # AdamW's state exists from here on
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                held = torch.cuda.memory_allocated()
            start = time.perf_counter()
            with autocast, saved_for_backward(model) if index == 0 else nullcontext() as counted:
                loss = model(batch)["loss"]
            saved = counted or saved
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if index >= 1:
                times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() - held if device == "cuda" else 0
    return Steps(times, losses, saved[0], entries[0] // len(batches), peak)


def checkpointing_row(settings: BenchSettings) -> Row:
    examples = bench_examples(settings, 8 * settings.batch_size, seed=SEED)
    skip = max(settings.train_warmup_steps - 1, 0)  # the first step is never timed
    runs: dict[bool, list[Steps]] = {True: [], False: []}
    for run in range(settings.train_runs):
        for enabled in (True, False):
            experiment = with_checkpointing(training_experiment(settings, Path(f"unused_run_{run}")), enabled)
            runs[enabled].append(bare_steps(experiment, examples, settings.device))
            free_memory(settings.device)
    on, off = runs[True][-1], runs[False][-1]
    loss_gap = max(abs(a - b) for a, b in zip(on.losses, off.losses))
    saved = 1 - on.saved_bytes / off.saved_bytes
    notes = [
        f"QwenOFT (Qwen2.5-VL arch {settings.arch}, L1 head), batch {settings.batch_size}, 1 view"
        f" {settings.image_size}px, bare forward/backward/AdamW step; runs per side (alternating): {settings.train_runs}.",
        f"Activations saved for backward by one forward: with checkpointing {on.saved_bytes / 2**20:.1f} MiB,"
        f" without {off.saved_bytes / 2**20:.1f} MiB ({100 * saved:.0f}% less).",
        f"Same arithmetic on both sides: losses differ by at most {loss_gap:.1e}. Entries into the first decoder"
        f" layer's attention per step: {on.attention_entries} with checkpointing (recomputed in backward),"
        f" {off.attention_entries} without.",
    ]
    checks = {
        "loss_max_abs_diff": loss_gap,
        "saved_mib_on": on.saved_bytes / 2**20,
        "saved_mib_off": off.saved_bytes / 2**20,
        "activation_memory_saved": saved,
        "attention_entries_on": on.attention_entries,
        "attention_entries_off": off.attention_entries,
    }
    if settings.device == "cuda":
        peak_on, peak_off = (min(r.cuda_peak_bytes for r in runs[side]) / 2**30 for side in (True, False))
        notes.append(
            f"Peak allocated above weights, gradients and AdamW state: {peak_on:.2f} GiB on, {peak_off:.2f} off."
        )
        checks |= {"cuda_peak_gib_on": peak_on, "cuda_peak_gib_off": peak_off}
    return Row(
        key="checkpointing",
        title="training step with activation checkpointing vs without (time; memory in the notes)",
        unit="ms/step",
        ours=Side("checkpointing on", [ms for r in runs[True] for ms in r.ms[skip:]]),
        baseline=Side("checkpointing off", [ms for r in runs[False] for ms in r.ms[skip:]]),
        ratio_name="on / off",
        goals=[],
        notes=notes,
        checks=checks,
    )
