"""Where `vlablocks train` constructs the framework: on the accelerator's device, or under DeepSpeed ZeRO-3
partitioned while it is built, so that no rank ever holds the whole model in host memory.

Under ZeRO-3 the framework is built inside `deepspeed.zero.Init`, configured from the accelerate DeepSpeed plugin
(after `configure_deepspeed` has filled the batch sizes; any "auto" left is dropped, and DeepSpeed's defaults apply
while the model is built). Each module's parameters are cut into per-rank slices as soon as its `__init__` returns.
Values are drawn on every rank and rank 0's are kept (DeepSpeed broadcasts them), so every rank agrees. The
transformers VLM inside is built the same way: transformers sees ZeRO-3 through accelerate's `HfDeepSpeedConfig`,
nests its own `zero.Init` in this one and initialises its weights module by module, gathered, on rank 0. Edits made
after a submodule's `__init__` go through `vlablocks.core.partitioned.whole` (that module's docstring lists why).

Host memory: each parameter is allocated whole, broadcast, sliced, and the whole copy freed. glibc's malloc keeps
freed blocks of up to 32 MiB in its heap once its adaptive threshold has grown, so without a fixed mmap threshold
the slices are placed between the freed blocks and the resident set grows past the model's size even though only
a slice per parameter is alive (measured: 393 MiB resident for a 296 MiB model on each of 2 ranks). Tensors of 1 MiB
and more are therefore allocated with mmap, returned to the system when freed, while the model is built.
`tests/test_zero3_init.py` measures the peak per rank; docs/distributed.md, "Built where it runs", has the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from vlablocks.core.partitioned import host_memory_returned


def build_context(accelerator) -> AbstractContextManager:
    """The context `train()` builds the framework in: `torch.device(accelerator.device)` (parameters created on
    the device, never in host memory first), or under ZeRO-3 `zero3_init(plugin)` (partitioned as built)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        return zero3_init(plugin)
    return torch.device(accelerator.device)


def construction_config(config: dict) -> dict:
    """A copy of a DeepSpeed config without "auto" values (zero.Init parses the whole config; accelerate fills
    some "auto" keys only in `prepare`)."""
    if isinstance(config, dict):
        return {key: construction_config(value) for key, value in config.items() if value != "auto"}
    return config


@contextmanager
def zero3_init(plugin) -> Iterator[None]:
    """Modules built in this block are partitioned over the ranks as they are built (module docstring). plugin:
    accelerate's DeepSpeedPlugin (ZeRO stage 3). Every rank must build the same modules in the same order."""
    import deepspeed

    plugin.set_deepspeed_weakref()  # transformers' view of the config (is_deepspeed_zero3_enabled), as filled now
    with host_memory_returned(), deepspeed.zero.Init(config_dict_or_path=construction_config(plugin.deepspeed_config)):
        yield
