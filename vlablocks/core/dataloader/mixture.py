"""`mixture`: several datasets sampled with weights, each keeping its own name (and so its own stats).

    dataset:
      name: mixture
      datasets:
        - {name: lerobot, root: data/a, camera_keys: [...], dataset_name: a}
        - {name: lerobot, root: data/b, camera_keys: [...], dataset_name: b}
      weights: [3, 1]          # relative; null: proportional to the datasets' sizes
      samples_per_epoch: null  # null: the total size of the components

Item i of an epoch is a draw keyed on (seed, epoch, i): a component with probability proportional to
its weight, then a uniform frame of it. Any sampler, any number of workers and any process sharding
therefore see the intended frequencies, reproducibly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlablocks.core.build import build
from vlablocks.core.config import ConfigError, PlatformConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.sample import Sample
from vlablocks.core.registry import DATASETS

# Separates the component draws from other users of the same (seed, epoch, index) key.
_STREAM = 0x5BD1E995


@DATASETS.register("mixture")
class MixtureDataset(RawDataset):
    """Weighted mixture of datasets; every sample keeps its component's dataset_name."""

    @dataclass(frozen=True)
    class Config:
        name: str = "mixture"
        datasets: list[dict] = field(default_factory=list)  # each a dataset section with its own `name`
        weights: list[float] | None = None
        samples_per_epoch: int | None = None
        norm_stats: str | None = None  # a precomputed norm_stats.json for training (default: the run's own)

    def __init__(self, config: Config, *, platform: PlatformConfig, seed: int = 0) -> None:
        super().__init__(platform, seed)
        if not config.datasets:
            raise ConfigError("dataset.datasets is empty; list the datasets to mix, each with its own `name`")
        self.components: list[RawDataset] = []
        for i, options in enumerate(config.datasets):
            try:
                self.components.append(build(DATASETS, dict(options), platform=platform, seed=seed))
            except ConfigError as exc:
                raise ConfigError(f"dataset.datasets[{i}]: {exc}") from exc
        names = [leaf.name for leaf in self.leaves()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"dataset.datasets: names {duplicates} repeat; set a distinct dataset_name for each")
        cameras = [c.camera_keys for c in self.components]
        if any(keys != cameras[0] for keys in cameras):
            raise ConfigError(
                f"dataset.datasets: the camera keys differ between datasets ({cameras}); a batch needs the same "
                "views from every dataset, so pick camera_keys with the same names (the part after the last '.')"
            )
        self.camera_keys = cameras[0]
        sizes = np.array([len(c) for c in self.components], dtype=np.float64)
        weights = np.asarray(config.weights if config.weights is not None else sizes, dtype=np.float64)
        if weights.shape != sizes.shape:
            raise ConfigError(f"dataset.weights: expected {len(sizes)} weights (one per dataset), got {len(weights)}")
        if np.any(weights < 0) or weights.sum() <= 0 or np.any((weights > 0) & (sizes == 0)):
            raise ConfigError(
                f"dataset.weights must be >= 0, not all 0, and 0 for empty datasets; got {weights.tolist()}"
            )
        self.probabilities = weights / weights.sum()
        self.samples_per_epoch = config.samples_per_epoch or int(sizes.sum())

    def __len__(self) -> int:
        return self.samples_per_epoch

    def leaves(self) -> list[RawDataset]:
        return [leaf for component in self.components for leaf in component.leaves()]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for component in self.components:
            component.set_epoch(epoch)

    def pick(self, key: tuple[int, ...]) -> tuple[int, int]:
        """(component, index within it) drawn for a sample key: no data is read."""
        rng = np.random.default_rng([self.seed, *key, _STREAM])
        component = int(rng.choice(len(self.components), p=self.probabilities))
        return component, int(rng.integers(len(self.components[component])))

    def load(self, index: int, key: tuple[int, ...]) -> Sample:
        component, sub_index = self.pick(key)
        return self.components[component].load(sub_index, (*key, component))

    def prompt(self, index: int, key: tuple[int, ...]) -> str:
        component, sub_index = self.pick(key)
        return self.components[component].prompt(sub_index, (*key, component))
