"""A LeRobot dataset read the way a checkpoint's processor expects it (its cameras, state, normalization stats)."""

from __future__ import annotations

from vlablocks.core.build import build
from vlablocks.core.registry import DATASETS


def checkpoint_dataset(policy, root: str, dataset_name: str | None = None, **options):
    """`root` (a LeRobot dataset directory) as samples for `policy` (a loaded checkpoint): its camera keys, its
    state key, and `dataset_name` = one of its normalization stats (default: the only one). options: more
    `lerobot` dataset fields (e.g. returns)."""
    cameras = policy.processor.config.camera_keys
    stats = sorted(policy.processor.normalizer.stats)
    dataset_name = dataset_name or (stats[0] if len(stats) == 1 else None)
    if dataset_name not in stats:
        raise ValueError(f"--dataset_name must name one of the checkpoint's normalization stats {stats}")
    section = {
        "name": "lerobot",
        "root": root,
        "dataset_name": dataset_name,
        "camera_keys": [f"observation.images.{camera}" for camera in cameras],
        "state_key": "observation.state" if policy.processor.config.state_dim else None,
        **options,
    }
    return build(DATASETS, section, platform=policy.model.platform)
