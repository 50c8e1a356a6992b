"""Trainer options: the `trainer:` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LossScheduleConfig:
    """`trainer.loss_schedule` (vlablocks/core/training/loss_schedule.py): one part of the loss alone for the first
    `phase_a_steps` optimizer steps, then the other ramped in linearly over `ramp_steps` (alg1); both 0: no schedule.
    `order`: geometry_first (the auxiliary losses first, the action loss ramped in: what issue 21 asked) or
    action_first (the action loss first, the auxiliary losses ramped in: the StarVLA-3D fork's draft)."""

    phase_a_steps: int = 0
    ramp_steps: int = 0
    order: Literal["geometry_first", "action_first"] = "geometry_first"


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 8  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    # A number, or {base: x, <regex over parameter names>: y, ...}: each pattern forms a parameter group.
    learning_rate: float | dict[str, float] = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # Regular expressions searched (re.search) in parameter names; a pattern matching nothing is an error.
    freeze_modules: list[str] = field(default_factory=list)
    num_workers: int = 0
    # Length-grouped batching (Hugging Face's group_by_length): each epoch's shuffled order is cut into mega-batches
    # of `group_by_length_mega_batches` micro-batches, sorted by prompt token length, cut into micro-batches whose
    # order is shuffled; little of a batch is then padding. Deterministic given the seed, exactly resumable, each
    # rank a disjoint micro-batch (vlablocks/core/dataloader/sampler.py). Off by default: it changes which samples
    # share a batch, and the toy results were measured without it.
    group_by_length: bool = False
    group_by_length_mega_batches: int = 50
    # How DataLoader workers hand processed batches over: "file_system" (a shared-memory name per tensor; torch's
    # shm manager frees the segments of killed processes) or "file_descriptor" (torch's Linux default: one file
    # descriptor passed over a socket per tensor, several times slower per batch; docs/benchmarks.md row 2).
    worker_sharing: Literal["file_system", "file_descriptor"] = "file_system"
    # Intra-op threads per process (None: torch's default). Tiny CPU models run fastest with 1: thread
    # hand-offs cost more than the matmuls they split.
    torch_threads: int | None = None
    # Steps between tensorboard / wandb / progress-bar points (the window's means); metrics.jsonl has every step.
    log_every: int = 10
    loss_schedule: LossScheduleConfig = field(default_factory=LossScheduleConfig)
    save_every: int = 500
    keep_last: int = 2
    resume: bool = False
    pretrained_checkpoint: str | None = None
    reload_modules: list[str] = field(default_factory=list)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    wandb_project: str | None = None
    # Exponential moving average of the trainable weights (e.g. 0.999), saved as ema.safetensors in every
    # checkpoint and served with `--weights ema`; None: off. Equations in vlablocks/core/framework/ema.py.
    ema_decay: float | None = None
    # Closed-loop evaluation during training: every `eval_every` steps (0: never) the main process runs
    # `eval_episodes` seeded episodes (seeds eval_seed, eval_seed + 1, ...) of `eval_env` (an EVAL_ENVS
    # section, e.g. {name: toy}) with the current weights and logs `eval_success` (runs/<run>/eval/step_N/).
    eval_every: int = 0
    eval_env: dict | None = None
    eval_episodes: int = 10
    eval_seed: int = 10_000
