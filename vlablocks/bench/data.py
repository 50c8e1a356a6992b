"""Row 2: samples/s of the raw-dict loader vs `LeRobotDataset` iteration on the same toy dataset (goal >= 0.95).

Reuses `benchmarks/data_loader.py`: a toy LeRobot dataset is written, then three loaders read the same frames
in the same seeded order with the same batch size and workers, rounds alternating between loaders:
the registered `lerobot` dataset (sample dicts), LeRobotDataset with the same action chunk (the baseline:
the same information) and LeRobotDataset frames without the chunk (a lower bound on work, in the notes).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from vlablocks.bench.result import Goal, Row, Side
from vlablocks.bench.settings import BenchSettings, require_checkout


def data_row(settings: BenchSettings) -> Row:
    require_checkout("benchmarks/data_loader.py")
    from benchmarks.data_loader import build_loaders, measure_rates
    from vlablocks.envs.toy_dataset import write_toy_dataset

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local dataset: never ask the hub
    config_yaml = require_checkout("configs/datasets/toy.yaml")
    # Decodes every image column, as LeRobotDataset does: the like-for-like side of the ratio.
    all_columns_yaml = require_checkout("configs/datasets/toy_two_views.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "toy"
        write_toy_dataset(root, settings.data_episodes, seed=0)
        loaders, description = build_loaders(
            root, str(config_yaml), str(all_columns_yaml), settings.data_batch_size, settings.data_workers
        )
        rates = measure_rates(loaders, settings.data_samples, settings.data_rounds)
    frame_only = statistics.median(rates["lerobot frame"])
    return Row(
        key="data",
        title="data: raw-dict loader vs LeRobotDataset iteration",
        unit="samples/s",
        ours=Side("raw-dict loader, same columns decoded", rates["ours (all)"]),
        baseline=Side("LeRobotDataset + chunk", rates["lerobot+chunk"]),
        ratio_name="ours / LeRobotDataset",
        goals=[Goal("ratio", ">=", 0.95)],
        notes=[
            f"Toy dataset of {settings.data_episodes} episodes: {description};"
            f" {settings.data_samples} samples per loader per round, {settings.data_rounds} rounds alternating.",
            f"LeRobotDataset frames without the chunk (less work): {frame_only:.0f} samples/s.",
            f"Raw-dict loader decoding only the top view a config uses: {statistics.median(rates['ours']):.0f} samples/s.",
        ],
    )
