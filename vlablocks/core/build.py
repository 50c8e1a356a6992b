"""Building a registered component from its config section: one level above the registries (timm's
`create_model` over `_registry.py`). The registries stay leaves: a dict of names and a decorator.

    vlm = build(VLMS, {"name": "qwen2_5_vl", "arch": "tiny"})            # options validated into its Config
    head = build(ACTION_MODELS, options, action_horizon=T, action_dim=D, state_dim=S, cond_dim=H)
"""

from __future__ import annotations

from typing import Any

from vlablocks.core.config import to_dataclass
from vlablocks.core.registry import Registry


def build(registry: Registry, options: Any, *args: Any, **kwargs: Any) -> Any:
    """The component named by `options` (a mapping with `name`, or its `Config` instance).

    It receives its typed `Config` dataclass (validated from the mapping, defaults filled in, a misspelled
    key named with the closest valid one) as first argument, then `args` / `kwargs`.
    """
    name = options["name"] if isinstance(options, dict) else options.name
    entry = registry.entry(name)
    config_class = entry.config_class
    if config_class is not None and isinstance(options, dict):
        options = to_dataclass(config_class, options, path=registry.kind)
    return entry.obj(options, *args, **kwargs)
