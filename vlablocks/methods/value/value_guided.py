"""`value_guided`: behaviour cloning from mixed-quality data, sampling frames by their advantage under a value model.

    dataset:
      name: value_guided
      dataset: {name: lerobot, root: data/mixed, ..., returns: {source: outcome, gamma: 0.9}}
      values: runs/value/v/values.safetensors   # `vlablocks value --ckpt V --data ...` on this dataset
      mode: filter                               # or weight

With the frame's Monte-Carlo return G_i (the wrapped dataset's `returns`) and the value model's V_i:

    A_i = G_i - V_i
    filter  (filtered BC; CRR's indicator):  w_i = 1[A_i > tau],  tau = quantile_q(A) if `quantile` else min_advantage
    weight  (AWR, Peng et al. 2019):         w_i = min(exp(A_i / beta), max_weight)
    P(frame i) = w_i / sum_j w_j

Item k of epoch e is one draw from P keyed on (seed, e, k), like `mixture`: any sampler, worker count or
process sharding sees these frequencies, reproducibly. The policy's loss is untouched, so this works for
every framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors import safe_open

from vlablocks.core.build import build
from vlablocks.core.config import ConfigError, PlatformConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.sample import Sample
from vlablocks.core.registry import DATASETS

_STREAM = 0xA0A7A6E  # separates these draws from other users of the same (seed, epoch, index) key


@dataclass(frozen=True)
class AdvantageConfig:
    mode: Literal["filter", "weight"] = "filter"
    quantile: float | None = None  # filter: keep A above this quantile of A (null: above min_advantage)
    min_advantage: float = 0.0
    beta: float = 0.1  # weight: temperature of exp(A / beta)
    max_weight: float = 20.0


def advantage_weights(advantages: np.ndarray, config: AdvantageConfig) -> np.ndarray:
    """advantages: [N] -> sampling weights [N] >= 0 (formulas in the module docstring); all-zero is an error."""
    advantages = np.asarray(advantages, dtype=np.float64)
    if config.mode == "filter":
        if config.quantile is not None and not 0.0 <= config.quantile < 1.0:
            raise ConfigError(f"dataset.quantile must be in [0, 1), got {config.quantile}")
        tau = np.quantile(advantages, config.quantile) if config.quantile is not None else config.min_advantage
        weights = (advantages > tau).astype(np.float64)
    elif config.mode == "weight":
        if config.beta <= 0 or config.max_weight <= 0:
            raise ConfigError(
                f"dataset.beta and dataset.max_weight must be > 0, got {config.beta}, {config.max_weight}"
            )
        weights = np.minimum(np.exp(np.minimum(advantages / config.beta, 700.0)), config.max_weight)
    else:
        raise ConfigError(f"dataset.mode must be 'filter' or 'weight', got {config.mode!r}")
    if weights.sum() <= 0:
        raise ConfigError("dataset: no frame has a positive weight; lower dataset.quantile or dataset.min_advantage")
    return weights


@DATASETS.register("value_guided")
class ValueGuidedDataset(RawDataset):
    """A dataset with returns, resampled by the advantage of each frame under a value model's values."""

    @dataclass(frozen=True)
    class Config:
        name: str = "value_guided"
        dataset: dict = field(default_factory=dict)  # the wrapped dataset's section, with `returns` enabled
        values: str = ""  # values.safetensors written by `vlablocks value` for that dataset
        mode: Literal["filter", "weight"] = "filter"
        quantile: float | None = None
        min_advantage: float = 0.0
        beta: float = 0.1
        max_weight: float = 20.0
        samples_per_epoch: int | None = None  # null: the wrapped dataset's size
        norm_stats: str | None = None

    def __init__(self, config: Config, *, platform: PlatformConfig, seed: int = 0) -> None:
        super().__init__(platform, seed)
        try:
            self.base = build(DATASETS, dict(config.dataset), platform=platform, seed=seed)
        except ConfigError as exc:
            raise ConfigError(f"dataset.dataset: {exc}") from exc
        if getattr(self.base, "returns", None) is None:
            raise ConfigError(
                "dataset.dataset has no returns: set dataset.dataset.returns (e.g. {source: outcome, gamma: 0.9})"
            )
        self.camera_keys = self.base.camera_keys
        values = read_values(config.values, self.base.frame_indices(), self.base.config.returns.gamma)
        self.advantages = self.base.returns.astype(np.float64) - values
        options = {k: getattr(config, k) for k in ("mode", "quantile", "min_advantage", "beta", "max_weight")}
        self.weights = advantage_weights(self.advantages, AdvantageConfig(**options))
        self.probabilities = self.weights / self.weights.sum()
        self.cdf = np.cumsum(self.probabilities)
        self.samples_per_epoch = config.samples_per_epoch or len(self.base)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def leaves(self) -> list[RawDataset]:
        return self.base.leaves()

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def pick(self, key: tuple[int, ...]) -> int:
        """The wrapped dataset's frame drawn for a sample key (no data is read)."""
        u = np.random.default_rng([self.seed, *key, _STREAM]).random()
        return int(min(np.searchsorted(self.cdf, u * self.cdf[-1], side="right"), len(self.cdf) - 1))

    def load(self, index: int, key: tuple[int, ...]) -> Sample:
        return self.base.load(self.pick(key), key)


def read_values(path: str, frame_indices: np.ndarray, gamma: float) -> np.ndarray:
    """values.safetensors -> [N] values aligned to `frame_indices` (the dataset's `index` column, row order)."""
    if not path or not Path(path).is_file():
        raise ConfigError(f"dataset.values: {path!r} is not a file; write it with `vlablocks value --ckpt V --data D`")
    with safe_open(path, "np") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if "index" not in tensors or "value" not in tensors:
        raise ConfigError(f"dataset.values: {path} lacks 'index'/'value'; rewrite it with `vlablocks value`")
    if "gamma" in metadata and abs(float(metadata["gamma"]) - gamma) > 1e-9:
        raise ConfigError(
            f"dataset.values: {path} was computed with returns gamma {metadata['gamma']}, the dataset uses {gamma}; "
            "use the same dataset.returns.gamma as the value model"
        )
    lookup = dict(zip(tensors["index"].tolist(), tensors["value"].tolist()))
    missing = [int(i) for i in frame_indices if int(i) not in lookup]
    if missing:
        raise ConfigError(
            f"dataset.values: {path} has no value for {len(missing)} frame(s) of the dataset (first {missing[:3]}); "
            "it was written for another dataset: rerun `vlablocks value` on this one"
        )
    return np.array([lookup[int(i)] for i in frame_indices], dtype=np.float64)
