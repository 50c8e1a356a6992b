"""The models the benchmark rows compare: experiment dicts on the LIBERO platform, built on a device.

Every framework is a registered one built through `build_policy`, from a random-init Qwen2.5-VL of
the requested arch (`tiny` on CPU, `3b` on a GPU), exactly as a tiny test config or a real config is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import torch

from vlablocks.core.config import ExperimentConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.tools.bench.settings import BenchSettings, bench_platform

SEED = 0


def vlm_options(settings: BenchSettings, image_size: int | None = None) -> dict:
    """bf16 on CUDA, fp32 on CPU, whatever devices the host has (dtype "auto" would follow the host)."""
    dtype = "bfloat16" if settings.device == "cuda" else "float32"
    size = image_size or settings.image_size
    return {"name": "qwen2_5_vl", "arch": settings.arch, "image_size": size, "dtype": dtype}


def bench_experiment(
    framework: dict, settings: BenchSettings, image_size: int | None = None, **sections
) -> ExperimentConfig:
    """A validated experiment: LIBERO platform, `framework` with the benchmark's VLM (views of `image_size`
    pixels, default the settings'), extra sections."""
    data = {
        "seed": SEED,
        "platform": asdict(bench_platform()),
        "framework": {**framework, "vlm": vlm_options(settings, image_size)},
        **sections,
    }
    return parse_experiment(data)


def bench_examples(settings: BenchSettings, count: int, seed: int) -> list[dict]:
    """Synthetic raw samples (1 view of the benchmark's image size, LIBERO chunk and state)."""
    return synthetic_examples(bench_platform(), count, num_views=1, image_size=settings.image_size, seed=seed)


def build_on_device(experiment: ExperimentConfig, norm_stats: dict, device: str) -> Policy:
    """The policy (model and processor) built directly on `device` (random init on a GPU takes seconds, not minutes on CPU)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        return build_policy(experiment, norm_stats)


def stats_examples(settings: BenchSettings) -> tuple[list[dict], dict]:
    """64 synthetic samples and their norm stats: what the models normalize with and FAST is fitted on."""
    examples = bench_examples(settings, 64, seed=1)
    return examples, synthetic_norm_stats(examples)


def free_memory(device: str) -> None:
    """Returns a finished side's memory before the next side builds its model (two 3B models at once may not fit)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts forward calls of `module` inside the block: [n] (for generate, one call per emitted token). Counted on
    entry (a pre-hook): the recompute of a non-reentrant activation checkpoint stops as soon as it has what backward
    needs, so a module may be entered without returning."""
    calls = [0]
    handle = module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()
