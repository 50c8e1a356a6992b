"""Parameter counts of a config's model without its weights: built on the `meta` device, frozen as in training.

`meta_framework(experiment)` builds the framework exactly as training does (same registry, same classes) but
with every tensor on the `meta` device: shapes only, no memory, a 3B model in seconds on a laptop.
`count_parameters(model)` groups the parameters by module (the VLM split into its vision tower, language
model and LM head, the rest by top-level module), each tied parameter counted once.

A config that points `framework.vlm.base_vlm` at local pretrained weights is planned from its published
architecture, `framework.vlm.arch` (e.g. `3b`): a random-init model of that arch has the same shapes, so the
weights need not be on this machine. When the directory is here, its config.json must agree with the arch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlablocks.core.config import ExperimentConfig

# config.json fields checked against the published arch when base_vlm is on this machine.
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class ModuleCount:
    name: str  # e.g. vlm.visual, vlm.language_model, vlm.lm_head, action_model, proprio
    trainable: int
    frozen: int


@dataclass(frozen=True)
class ParameterCounts:
    modules: tuple[ModuleCount, ...]
    largest_layer: int  # the most parameters one module holds directly (DeepSpeed's "largest layer")

    @property
    def trainable(self) -> int:
        return sum(m.trainable for m in self.modules)

    @property
    def frozen(self) -> int:
        return sum(m.frozen for m in self.modules)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def planning_experiment(experiment: ExperimentConfig) -> ExperimentConfig:
    """The experiment with `framework.vlm.base_vlm` replaced by its published `arch` (same shapes, random init)."""
    framework = dict(experiment.framework or {})
    vlm = dict(framework.get("vlm") or {})
    base = vlm.get("base_vlm")
    if not base:
        return experiment
    arch = vlm.get("arch", "tiny")
    if arch == "tiny":
        raise ValueError(
            f"framework.vlm.base_vlm={base} is planned from its published size, but framework.vlm.arch is tiny; "
            "add --framework.vlm.arch=3b (or 7b, ...: the size of those weights)"
        )
    _check_local_config(Path(base), vlm.get("name", "qwen2_5_vl"), arch)
    vlm["base_vlm"] = None
    framework["vlm"] = vlm
    return dataclasses.replace(experiment, framework=framework)


def _check_local_config(directory: Path, vlm_name: str, arch: str) -> None:
    config_file = directory / "config.json"
    if not config_file.is_file():
        return  # weights not downloaded yet: the published arch is all there is to plan from
    from vlablocks.core.registry import VLMS

    published = VLMS.get(vlm_name).ARCHS.get(arch, {}).get("text_config", {})
    local = json.loads(config_file.read_text())
    local = local.get("text_config", local)  # older Qwen2.5-VL configs keep the text fields at the top level
    wrong = [
        f"{key} {local[key]} vs {published[key]}"
        for key in _ARCH_FIELDS
        if key in published and key in local and local[key] != published[key]
    ]
    if wrong:
        raise ValueError(
            f"{config_file} does not match framework.vlm.arch={arch} ({'; '.join(wrong)}); "
            "set framework.vlm.arch to the size of those weights"
        )


def meta_framework(experiment: ExperimentConfig) -> nn.Module:
    """The config's framework with every parameter on the `meta` device, `trainer.freeze_modules` applied."""
    from vlablocks.core.framework.base import build_framework
    from vlablocks.core.training.optim import freeze_modules

    with torch.device("meta"):
        framework = build_framework(planning_experiment(experiment))
    freeze_modules(framework, experiment.trainer.freeze_modules)
    return framework


def module_key(name: str) -> str:
    """vlm.model.visual.blocks.0.attn.qkv.weight -> vlm.visual; action_model.blocks.0.w -> action_model."""
    parts = name.split(".")
    if parts[0] == "vlm":
        inner = [p for p in parts[1:-1] if p != "model"] or parts[1:2]
        return f"vlm.{inner[0]}"
    return parts[0]


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Trainable and frozen parameters per module (tied parameters once), and the largest single module."""
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for name, param in model.named_parameters():  # yields each Parameter object once
        key = module_key(name)
        trainable.setdefault(key, 0)
        frozen.setdefault(key, 0)
        (trainable if param.requires_grad else frozen)[key] += param.numel()
    modules = tuple(ModuleCount(k, trainable[k], frozen[k]) for k in trainable)
    seen: set[int] = set()
    largest = 0
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        largest = max(largest, sum(p.numel() for p in own))
    return ParameterCounts(modules, largest)
