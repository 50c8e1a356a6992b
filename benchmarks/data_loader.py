"""Samples/s of the raw-dict loader vs iterating the same LeRobotDataset directly, side by side in one run.

    python benchmarks/data_loader.py [--root DIR] [--episodes 50] [--num_workers 2] [--samples 1024]

Without --root a toy dataset is written first (its generation time is printed: the issue asks for
50 episodes in under a minute on 2 cores). Three loaders read the same frames in the same seeded
order, through DataLoaders with the same batch size, workers and list collate:
  ours          the registered `lerobot` dataset, --config_yaml (default: the top view only)
  ours (all)    the same, --all_config (default: every image column of the toy data, as lerobot decodes)
  lerobot+chunk LeRobotDataset with delta_timestamps for the same action chunk (same information)
  lerobot frame LeRobotDataset without the chunk (a frame only: less information, a lower bound on work)
Ours decodes only the columns a config uses and gathers the chunk from the action column alone;
"ours (all)" vs "lerobot+chunk" is the like-for-like comparison.
Rounds alternate between loaders and the median round is reported, to damp the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlablocks.config import PlatformConfig, load_config, to_dataclass
from vlablocks.dataloader.loader import EpochSampler, build_dataloader, collate_samples
from vlablocks.registry import DATASETS

REPO = Path(__file__).resolve().parent.parent


def samples_per_second(loader: DataLoader, samples: int) -> float:
    start, seen = time.perf_counter(), 0
    while seen < samples:
        for batch in loader:
            seen += len(batch)
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def lerobot_loader(dataset, batch_size: int, workers: int, seed: int) -> DataLoader:
    """The LeRobotDataset on its own, in the order our sampler uses (it yields (epoch, index) pairs)."""

    class Indices(torch.utils.data.Sampler[int]):
        def __iter__(self):
            return (index for _, index in EpochSampler(len(dataset), seed))

        def __len__(self) -> int:
            return len(dataset)

    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=Indices(),
        num_workers=workers,
        collate_fn=collate_samples,
        drop_last=True,
    )


def build_ours(root: Path, config_yaml: str) -> tuple[Any, PlatformConfig]:
    config = load_config(config_yaml, [f"dataset.root={root}"])
    platform = to_dataclass(PlatformConfig, config["platform"])
    return DATASETS.build(config["dataset"], platform=platform, seed=0), platform


def build_loaders(
    root: Path, config_yaml: str, all_config: str, batch_size: int, num_workers: int
) -> tuple[dict[str, DataLoader], str]:
    """The loaders over the LeRobot dataset at `root` -> ({name: loader}, a one-line description)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ours, platform = build_ours(root, config_yaml)
    loaders = {"ours": build_dataloader(ours, batch_size, seed=0, num_workers=num_workers)}
    if all_config:
        ours_all, _ = build_ours(root, all_config)
        loaders["ours (all)"] = build_dataloader(ours_all, batch_size, seed=0, num_workers=num_workers)
    chunk = {ours.config.action_key: [t / ours.fps for t in range(platform.action_horizon)]}
    loaders |= {
        "lerobot+chunk": lerobot_loader(
            LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=chunk), batch_size, num_workers, seed=0
        ),
        "lerobot frame": lerobot_loader(
            LeRobotDataset(f"local/{root.name}", root=root), batch_size, num_workers, seed=0
        ),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="existing LeRobot dataset (default: write a toy one)")
    parser.add_argument("--config_yaml", default=str(REPO / "configs/datasets/toy.yaml"))
    parser.add_argument("--all_config", default=str(REPO / "configs/datasets/toy_two_views.yaml"), help="'' to skip")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1024, help="samples read per loader per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vlablocks.envs.toy_dataset import write_toy_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "toy"
        if not args.root:
            start = time.perf_counter()
            write_toy_dataset(root, args.episodes, seed=0)
            print(f"make-toy-data: {args.episodes} episodes in {time.perf_counter() - start:.1f} s")
        loaders, description = build_loaders(root, args.config_yaml, args.all_config, args.batch_size, args.num_workers)
        print(f"{description}, {args.samples} samples x {args.rounds} rounds")
        rates = measure_rates(loaders, args.samples, args.rounds)
        median = {name: statistics.median(values) for name, values in rates.items()}
        for name, rate in median.items():
            rounds = ", ".join(f"{r:.0f}" for r in rates[name])
            print(f"{name:14s} {rate:8.1f} samples/s (rounds: {rounds})")
        for name in [n for n in loaders if n.startswith("ours")]:
            for base in ("lerobot+chunk", "lerobot frame"):
                print(f"ratio {name} / {base}: {median[name] / median[base]:.2f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
