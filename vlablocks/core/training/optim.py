"""Freezing by regex, per-pattern learning rates, and the learning-rate schedule.

Patterns are Python regular expressions matched with `re.search` against full parameter names
(`vlm.model.visual.blocks.0.attn.qkv.weight`), so `visual` matches anywhere and `^vlm\\.` anchors at the
start. Use `^...$` for a full match.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import nn

from vlablocks.core.partitioned import full_numel


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key}: invalid regular expression {pattern!r}: {exc}") from exc


def freeze_modules(model: nn.Module, patterns: list[str]) -> dict[str, int]:
    """Sets requires_grad=False on parameters whose name matches any pattern.

    A pattern that matches no parameter is an error (a typo would otherwise train everything).
    Returns {pattern: number of parameters it froze}.
    """
    counts: dict[str, int] = {}
    named = list(model.named_parameters())
    for pattern in patterns:
        regex = _compile(pattern, "trainer.freeze_modules")
        hits = [p for name, p in named if regex.search(name)]
        if not hits:
            sample = ", ".join(name for name, _ in named[:3])
            raise ValueError(
                f"trainer.freeze_modules pattern {pattern!r} matches no parameter (names look like: {sample}, ...)"
            )
        for param in hits:
            param.requires_grad_(False)
        counts[pattern] = len(hits)
    return counts


def parameter_summary(model: nn.Module) -> str:
    """Trainable vs frozen parameter counts per top-level module, as a small table."""
    trainable: dict[str, int] = defaultdict(int)
    frozen: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        top = name.split(".", 1)[0]
        (trainable if param.requires_grad else frozen)[top] += full_numel(param)  # whole, also under ZeRO-3
    rows = [f"{'module':<24}{'trainable':>14}{'frozen':>14}"]
    for top in sorted(set(trainable) | set(frozen)):
        rows.append(f"{top:<24}{trainable[top]:>14,}{frozen[top]:>14,}")
    rows.append(f"{'total':<24}{sum(trainable.values()):>14,}{sum(frozen.values()):>14,}")
    return "\n".join(rows)


def parameter_groups(model: nn.Module, learning_rate: float | dict[str, float], weight_decay: float) -> list[dict]:
    """Optimizer parameter groups from `trainer.learning_rate`.

    A number gives one group. A mapping `{base: x, <pattern>: y, ...}` gives one group per pattern
    (parameters whose name matches it) plus `base` for the rest. Frozen parameters are left out; a
    parameter matched by two patterns, or a pattern matching no trainable parameter, is an error.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: trainer.freeze_modules froze everything")
    if not isinstance(learning_rate, dict):
        return [
            {
                "params": [p for _, p in trainable],
                "lr": float(learning_rate),
                "weight_decay": weight_decay,
                "name": "base",
            }
        ]
    if "base" not in learning_rate:
        raise ValueError("trainer.learning_rate mapping needs a 'base' entry for parameters no pattern matches")
    patterns = {k: _compile(k, "trainer.learning_rate") for k in learning_rate if k != "base"}
    assigned: dict[str, list[nn.Parameter]] = {k: [] for k in learning_rate}
    for name, param in trainable:
        matches = [k for k, regex in patterns.items() if regex.search(name)]
        if len(matches) > 1:
            raise ValueError(
                f"parameter {name} matches several trainer.learning_rate patterns: {matches}; make them disjoint"
            )
        assigned[matches[0] if matches else "base"].append(param)
    for key in patterns:
        if not assigned[key]:
            raise ValueError(f"trainer.learning_rate pattern {key!r} matches no trainable parameter")
    return [
        {"params": params, "lr": float(learning_rate[key]), "weight_decay": weight_decay, "name": key}
        for key, params in assigned.items()
        if params
    ]


def lr_lambda(step: int, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of each group's base LR at `step`: linear warmup, then cosine decay or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fused_adamw(model: nn.Module, deepspeed: bool) -> bool:
    """torch's fused AdamW (one kernel over every tensor instead of a few per tensor) when every trainable parameter
    is on a GPU and DeepSpeed does not own the step: same update rule, fewer launches (issue 38). CPU runs keep the
    default implementation, so their figures stay comparable."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return not deepspeed and bool(trainable) and all(p.device.type == "cuda" for p in trainable)


def build_optimizer(
    model: nn.Module, trainer, fused: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameter_groups` (fused: torch's fused kernel, `fused_adamw`) and its LR schedule."""
    groups = parameter_groups(model, trainer.learning_rate, trainer.weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=tuple(trainer.betas), fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_lambda(
            step, trainer.warmup_steps, trainer.max_steps, trainer.lr_schedule, trainer.min_lr_ratio
        ),
    )
    return optimizer, scheduler
