"""LoRA at RL time (`rl.lora.enabled`): adapters added to the policy's VLM before the optimizer is built.

peft wraps the chosen Linear layers (vlablocks/core/vlm/lora.py; every Linear of the LLM by default, as veRL's
`target_modules: all-linear`) and freezes the rest of the VLM; B starts at zero, so the first rollout is the SFT
policy's. Modules outside the VLM (the action head) stay trainable, as in a LoRA SFT run. The framework's config
records the adapters (`framework.vlm.lora`), so RL checkpoints are rebuilt with them (loadable, servable, evaluable)
and `vlablocks export --merge-lora` folds them into the weights.
"""

from __future__ import annotations

import dataclasses

from vlablocks.core.capabilities import Steerable
from vlablocks.core.framework.base import Framework
from vlablocks.core.vlm.base import LoraOptions


def add_rl_lora(framework: Framework, options: LoraOptions, source: str) -> int:
    """Adds the adapters to `framework.vlm` in place and records them in its config -> trainable parameter count.

    Refused (one line, with the fix) when the framework has no VLM or its checkpoint `source` already has adapters."""
    if not isinstance(framework, Steerable):  # the capability of having a VLM backbone
        raise ValueError(f"rl.lora: {type(framework).__name__} has no VLM backbone to adapt; set rl.lora.enabled=false")
    if framework.vlm.lora_enabled:
        raise ValueError(
            f"rl.lora: {source} already has LoRA adapters, which RL trains as they are; set rl.lora.enabled=false "
            "(or start from `vlablocks export --merge-lora` of it)"
        )
    plain = LoraOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(LoraOptions)})
    framework.vlm.enable_lora(plain)
    framework.config = dataclasses.replace(
        framework.config, vlm={**framework.config.vlm, "lora": dataclasses.asdict(plain)}
    )
    return sum(p.numel() for p in framework.parameters() if p.requires_grad)
