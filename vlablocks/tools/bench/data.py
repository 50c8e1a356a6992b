"""Row 2: samples/s of the raw-dict loader vs `LeRobotDataset` iteration on the same toy dataset (goal >= 0.95).

A toy LeRobot dataset is written, then four loaders read the same frames in the same seeded order
(`build_dataloader`: the one sampler, the same batch size, workers and list collate), rounds alternating
between loaders, the median round reported:
  ours          the registered `lerobot` dataset, configs/datasets/toy.yaml (the top view only)
  ours (all)    the same with every image column of the toy data decoded, as lerobot does
  lerobot+chunk LeRobotDataset with delta_timestamps for the same action chunk (the baseline: same information)
  lerobot frame LeRobotDataset without the chunk (a frame only: a lower bound on work, in the notes)
"ours (all)" vs "lerobot+chunk" is the like-for-like ratio.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, load_config
from vlablocks.core.dataloader.loader import build_dataloader
from vlablocks.core.registry import DATASETS
from vlablocks.tools.bench.result import Goal, Row, Side
from vlablocks.tools.bench.settings import BenchSettings, require_checkout

SEED = 0


def samples_per_second(loader: DataLoader, samples: int) -> float:
    """Reads at least `samples` samples through a fresh iterator of the (endless) loader, workers started included."""
    start, seen = time.perf_counter(), 0
    for batch in islice(loader, -(-samples // loader.batch_size)):
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def build_ours(root: Path, config_yaml: str) -> tuple[Any, PlatformConfig]:
    config = load_config(config_yaml, [f"dataset.root={root}"])
    return build(DATASETS, config.dataset, platform=config.platform, seed=SEED), config.platform


def build_loaders(
    root: Path, config_yaml: str, all_config: str, batch_size: int, num_workers: int
) -> tuple[dict[str, DataLoader], str]:
    """The loaders over the LeRobot dataset at `root` -> ({name: loader}, a one-line description)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ours, platform = build_ours(root, config_yaml)
    ours_all, _ = build_ours(root, all_config)
    chunk = {ours.config.action_key: [t / ours.fps for t in range(platform.action_horizon)]}
    datasets = {
        "ours": ours,
        "ours (all)": ours_all,
        "lerobot+chunk": LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=chunk),
        "lerobot frame": LeRobotDataset(f"local/{root.name}", root=root),
    }
    loaders = {
        name: build_dataloader(dataset, batch_size, seed=SEED, num_workers=num_workers)
        for name, dataset in datasets.items()
    }
    description = (
        f"{len(ours)} frames, cameras {ours.config.camera_keys}, depth {ours.config.depth_keys}, "
        f"chunk {platform.action_horizon}, batch {batch_size}, workers {num_workers}"
    )
    return loaders, description


def measure_rates(loaders: dict[str, DataLoader], samples: int, rounds: int) -> dict[str, list[float]]:
    """Samples/s of each loader per round; rounds alternate between loaders -> {name: [rate per round]}."""
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, loader in loaders.items():
            rates[name].append(samples_per_second(loader, samples))
    return rates


def data_row(settings: BenchSettings) -> Row:
    from vlablocks.tools.toy.toy_dataset import write_toy_dataset

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
