"""`build_processor`: a framework's processor from an experiment config (its cameras, the platform's sizes, the
framework's processor options, the declared sample steps). Loading one from a checkpoint is
`Processor.from_pretrained` (pipeline.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from vlablocks.core.config import ExperimentConfig
from vlablocks.core.dataloader.sample import camera_name
from vlablocks.core.processor.config import ProcessorConfig
from vlablocks.core.processor.pipeline import Processor
from vlablocks.core.processor.sample_steps import default_sample_steps


def build_processor(
    experiment: ExperimentConfig,
    framework: Any,
    norm_stats: dict,
    camera_keys: Sequence[str] | None = None,
    embodiments: dict | None = None,
) -> Processor:
    """The processor of `framework` for this experiment.

    Cameras: `camera_keys` (the training dataset's), else the config's `dataset.camera_keys` as sample keys
    (`observation.images.top` -> `top`), else ["image"]; dimensions from `platform`; the model-specific
    fields from `framework.processor_options()`; `embodiments` (dataloader/embodiments.py `dataset_embodiments`)
    for a cross-embodiment mixture, whose default embodiment is the platform's name when it is one of them.
    """
    platform = experiment.platform
    if camera_keys is None:
        configured = (experiment.dataset or {}).get("camera_keys") or ["image"]
        camera_keys = [camera_name(key) for key in configured]
    camera_keys = tuple(camera_keys)
    names = sorted(norm_stats)
    config = ProcessorConfig(
        camera_keys=camera_keys,
        action_horizon=platform.action_horizon,
        action_dim=platform.action_dim,
        state_dim=platform.state_dim,
        embodiment=_default_embodiment(names, platform.name, embodiments),
        embodiments=embodiments or None,
        n_action_steps=platform.n_action_steps,
        **framework.processor_options(),
    )
    if config.sample_steps is None:  # declared in processor.json: the chain this checkpoint runs
        config = dataclasses.replace(config, sample_steps=default_sample_steps(config))
    return Processor(config, framework.hf_processor, norm_stats)


def _default_embodiment(stats_names: list[str], platform_name: str, embodiments: dict | None) -> str:
    """Single embodiment: the only stats' name, else the platform's; cross-embodiment: the platform's name when it
    is an embodiment, else the first one."""
    if embodiments:
        return platform_name if platform_name in embodiments else sorted(embodiments)[0]
    return stats_names[0] if len(stats_names) == 1 else platform_name
