"""LoRA on a Qwen-VL model through peft: which Linear layers, injection in place, and merging back.

`target_modules` follows peft's conventions, resolved here to explicit module names so that the scope
(`apply_to`: the LLM, the vision tower or both) is exact and an empty match is an error:
  - "all-linear": every nn.Linear in scope (never the LM head);
  - a list of names: layers whose name is, or ends with, ".<name>" (e.g. ["q_proj", "v_proj"]);
  - any other string: a regular expression matched against the full module name.
"""

from __future__ import annotations

import re

from peft import LoraConfig
from peft.tuners.lora import LoraModel
from torch import nn

from vlablocks.core.partitioned import is_partitioned, whole

# Module-name prefixes of the two halves of transformers' Qwen-VL models (`Qwen*ForConditionalGeneration`).
SCOPES = {"llm": ("model.language_model.",), "vision": ("model.visual.",)}
SCOPES["both"] = SCOPES["llm"] + SCOPES["vision"]


def lora_target_names(model: nn.Module, target_modules: list[str] | str, apply_to: str) -> list[str]:
    """Full names of the nn.Linear layers of `model` that LoRA should wrap."""
    if apply_to not in SCOPES:
        raise ValueError(f"lora.apply_to must be one of {', '.join(SCOPES)}, got {apply_to!r}")
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(SCOPES[apply_to])
    ]
    if target_modules == "all-linear":
        chosen = linears
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        chosen = [name for name in linears if pattern.fullmatch(name)]
    else:
        wanted = list(target_modules)
        chosen = [name for name in linears if any(name == w or name.endswith(f".{w}") for w in wanted)]
    if not chosen:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(
            f"lora.target_modules {target_modules!r} matched no Linear layer in the {apply_to} "
            f"(layer names there: {', '.join(leaves)})"
        )
    return chosen


def inject_lora(model: nn.Module, options) -> LoraModel:
    """Wraps the chosen layers of `model` in place; only LoRA weights stay trainable.

    options: a `LoraOptions`. Returns peft's LoraModel (needed to merge later); `model` itself keeps
    its class and attribute paths, so callers go on using it directly.
    """
    if options.rank <= 0:
        raise ValueError(f"lora.rank must be positive, got {options.rank}")
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=lora_target_names(model, options.target_modules, options.apply_to),
        bias="none",
    )
    lora_model = LoraModel(model, config, "default")
    # peft zeroes B after creating it; under ZeRO-3 it was partitioned by then and the zeroing did nothing
    # (vlablocks/core/partitioned.py): B = 0 is what makes a fresh adapter the identity.
    partitioned_b = [p for name, p in model.named_parameters() if ".lora_B." in name and is_partitioned(p)]
    with whole(*partitioned_b):
        for param in partitioned_b:
            param.zero_()
    return lora_model


def merge_lora(lora_model: LoraModel) -> nn.Module:
    """Folds the LoRA deltas into the base weights and removes the wrappers -> the plain model."""
    return lora_model.merge_and_unload()
