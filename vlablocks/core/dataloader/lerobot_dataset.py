"""`lerobot`: a local LeRobot v3.0 dataset as raw samples (camera keys -> views, action chunks, task -> prompt).

    dataset:
      name: lerobot
      root: data/toy                            # local dataset directory (never the hub)
      camera_keys: [observation.images.top]     # -> sample["images"]["top"], in this order
      depth_keys: [observation.depth.top]       # optional, one per camera -> sample["depth"]["top"] (metres)
      intrinsics_keys: [observation.intrinsics.top]  # optional, [9] or [3, 3] per frame -> sample["intrinsics"]
      state_key: observation.state              # null: no state
      action_key: action                        # chunked to platform.action_horizon via delta_timestamps
      returns: {source: outcome, gamma: 0.9}    # optional: per-frame discounted returns -> sample["return"]
      next_frame_offset: 1                      # optional (needs depth_keys): the depth (+ intrinsics) k frames
                                                # later -> sample["next"] (e.g. for a world-model loss)

Samples key every view by its camera name, the part of its camera key after the last dot (`camera_name`),
which is also the key envs and policy requests use. Keys and dimensions are checked against the dataset's metadata when the dataset is built, i.e. before
any training step: a missing key is an error listing the keys the dataset has.

The chunk follows lerobot's `delta_timestamps` semantics exactly (offsets t / fps for t < T, indices
clamped to the episode, `action_is_pad` where clamped) but is gathered here from the action column alone:
lerobot's own delta query decodes every image of every chunk row (T times the image work for nothing on
datasets with images in parquet). Rows are read through LeRobotDataset.__getitem__ (videos, depth units,
tasks stay lerobot's), with its parquet row transform narrowed to the columns the config uses and
decoding images straight to uint8 numpy (lerobot's goes through float tensors). benchmarks/data_loader.py
measures the difference.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch

from vlablocks.core.config import ConfigError, PlatformConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.prompt_augmentation import PromptAugmentationConfig, PromptAugmenter
from vlablocks.core.dataloader.returns import ReturnsConfig, dataset_returns
from vlablocks.core.dataloader.sample import Sample, camera_name
from vlablocks.core.registry import DATASETS

VISUAL_DTYPES = ("image", "video")


def _is_depth(feature: dict) -> bool:
    info = feature.get("info") or {}
    return bool(info.get("is_depth_map") or info.get("video.is_depth_map"))


def decode_row(batch: dict[str, list]) -> dict[str, list]:
    """`datasets` row transform replacing lerobot's: parquet images become numpy as stored (RGB uint8
    [H, W, 3], depth [H, W]) instead of float tensors we would convert back; numbers become tensors, as
    lerobot's reader expects."""
    for key, values in batch.items():
        first = values[0]
        if isinstance(first, PIL.Image.Image):
            batch[key] = [np.asarray(image) for image in values]
        elif first is not None and not isinstance(first, (dict, str)):
            batch[key] = [torch.tensor(value) for value in values]
    return batch


def to_uint8_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image column (uint8 [H, W, 3] from parquet, uint8 [3, H, W] tensor from video) -> [H, W, 3] uint8."""
    if isinstance(image, np.ndarray):
        return image
    return np.ascontiguousarray(image.numpy().transpose(1, 2, 0))


def to_depth(depth: np.ndarray | torch.Tensor) -> np.ndarray:
    """A depth column ([H, W] array from parquet, [1, H, W] tensor from video), in metres -> [H, W] float32."""
    depth = np.asarray(depth, dtype=np.float32)
    return depth.reshape(depth.shape[-2:])


@DATASETS.register("lerobot")
class LeRobotRawDataset(RawDataset):
    """A local LeRobot v3.0 dataset: camera keys -> image views, action chunks with padding, task -> prompt."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        name: str = "lerobot"
        root: str  # local dataset directory, relative to the working directory or absolute
        repo_id: str | None = None  # only a label here (default local/<root name>); nothing is downloaded
        dataset_name: str | None = None  # keys the norm stats; default: the root's directory name
        embodiment: str | None = None  # default: the platform name
        # This robot's own sizes when smaller than the platform's (cross-embodiment mixtures; the processor pads
        # them to the platform's). null: the platform's action_dim / state_dim.
        action_dim: int | None = None
        state_dim: int | None = None
        camera_keys: list[str] = field(default_factory=list)
        depth_keys: list[str] = field(default_factory=list)
        intrinsics_keys: list[str] = field(default_factory=list)
        state_key: str | None = "observation.state"
        action_key: str = "action"
        episodes: list[int] | None = None  # a subset of episode indices; null: all
        norm_stats: str | None = None  # a precomputed norm_stats.json for training (default: the run's own)
        norm_mode: Literal["q99", "mean_std", "min_max", "identity"] = "q99"
        action_norm_mask: list[bool] | None = None  # False leaves a dimension (e.g. a gripper) unnormalized
        state_norm_mask: list[bool] | None = None
        prompt_augmentation: PromptAugmentationConfig = field(default_factory=PromptAugmentationConfig)
        returns: ReturnsConfig = field(default_factory=ReturnsConfig)  # returns.py; source none: no returns
        video_backend: str | None = None  # lerobot's default decoder when null
        tolerance_s: float = 1e-4
        # k > 0: every sample also carries the depth (+ intrinsics) of frame t + k as sample["next"] =
        # {"depth": {camera: [H, W]}, "intrinsics": {camera: [3, 3]}, "valid": bool}; past the episode end the
        # episode's last frame is given and `valid` is False. Model-agnostic: a framework that needs it says so.
        next_frame_offset: int = 0

    def __init__(self, config: Config, *, platform: PlatformConfig, seed: int = 0) -> None:
        super().__init__(platform, seed)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
        from lerobot.datasets.feature_utils import check_delta_timestamps, get_delta_indices
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self.config = config
        root = Path(config.root).expanduser()
        if not (root / "meta" / "info.json").is_file():
            raise ConfigError(
                f"dataset.root {str(root)!r} is not a LeRobot dataset (no meta/info.json); "
                f"point it at a local LeRobot v3.0 dataset, e.g. one written by `vlablocks make-toy-data --out DIR`"
            )
        repo_id = config.repo_id or f"local/{root.resolve().name}"
        self.name = config.dataset_name or root.resolve().name
        self.embodiment = config.embodiment or platform.name
        self.action_dim = config.action_dim if config.action_dim is not None else platform.action_dim
        self.state_dim = config.state_dim if config.state_dim is not None else platform.state_dim
        self.camera_keys = [camera_name(key) for key in config.camera_keys]  # the keys of sample["images"]
        self.norm_mode = config.norm_mode
        meta = LeRobotDatasetMetadata(repo_id, root=root)
        self._check_keys(meta.features)
        if config.next_frame_offset < 0 or (config.next_frame_offset and not config.depth_keys):
            raise ConfigError(
                f"dataset.next_frame_offset must be >= 0 and needs dataset.depth_keys, got {config.next_frame_offset} "
                f"with depth_keys {config.depth_keys}"
            )
        missing = sorted(set(config.episodes or []) - set(range(meta.total_episodes)))
        if missing:
            raise ConfigError(
                f"dataset.episodes: {missing} not in {self.name!r}, which has episodes 0..{meta.total_episodes - 1}"
            )
        self.fps = meta.fps
        self.delta_timestamps = {config.action_key: [t / meta.fps for t in range(platform.action_horizon)]}
        check_delta_timestamps(self.delta_timestamps, meta.fps, config.tolerance_s)
        self.delta_indices = np.asarray(get_delta_indices(self.delta_timestamps, meta.fps)[config.action_key])
        self.lerobot = LeRobotDataset(
            repo_id,
            root=root,
            episodes=config.episodes,
            tolerance_s=config.tolerance_s,
            video_backend=config.video_backend,
            return_uint8=True,
            depth_output_unit="m",
        )
        self.augmenter = PromptAugmenter.from_config(config.prompt_augmentation, seed)
        episodes = self.lerobot.meta.episodes
        self._episode_bounds = dict(
            zip(episodes["episode_index"], zip(episodes["dataset_from_index"], episodes["dataset_to_index"]))
        )
        self._actions = self.lerobot.hf_dataset.with_format("numpy", columns=[config.action_key])
        self.returns = self._returns() if config.returns.source != "none" else None  # [N] float32, row order
        self._decode_only_used_columns()

    def _returns(self) -> np.ndarray:
        """Per-frame discounted returns of the loaded rows, from the reward or success column (returns.py)."""
        key = self.config.returns.key
        table = self.lerobot.hf_dataset
        if key not in table.column_names:
            numeric = sorted(k for k in table.column_names if k not in ("task", "task_index"))
            raise ConfigError(
                f"dataset.returns.key: dataset {self.name!r} has no column {key!r}; available: {numeric} "
                "(record outcomes with `vlablocks make-toy-data --policy ...`, or set returns.source: none)"
            )
        rows = table.with_format("numpy", columns=[key, "episode_index"])[:]
        return dataset_returns(self.config.returns, rows[key], rows["episode_index"])

    def _decode_only_used_columns(self) -> None:
        """Decodes only the columns a sample uses (unused cameras never are), straight to numpy."""
        c = self.config
        used = {"index", "episode_index", "frame_index", "timestamp", "task_index", c.state_key}
        used |= {*c.camera_keys, *c.depth_keys, *c.intrinsics_keys}
        table = self.lerobot.hf_dataset
        table.set_transform(decode_row, columns=[k for k in table.column_names if k in used])

    # -- checks before any data is read ---------------------------------------------------------

    def _check_keys(self, features: dict[str, dict]) -> None:
        c = self.config
        cameras = sorted(k for k, f in features.items() if f["dtype"] in VISUAL_DTYPES and not _is_depth(f))
        depths = sorted(k for k, f in features.items() if f["dtype"] in VISUAL_DTYPES and _is_depth(f))
        numeric = sorted(k for k, f in features.items() if f["dtype"] not in (*VISUAL_DTYPES, "string"))
        where = f"dataset {self.name!r} ({c.root})"
        if not c.camera_keys:
            raise ConfigError(f"dataset.camera_keys is empty; {where} has camera keys {cameras}")
        for option, keys, available in (
            ("camera_keys", c.camera_keys, cameras),
            ("depth_keys", c.depth_keys, depths),
            ("intrinsics_keys", c.intrinsics_keys, numeric),
        ):
            for key in keys:
                if key not in available:
                    raise ConfigError(
                        f"dataset.{option}: {where} has no {option[:-5]} key {key!r}; available: {available}"
                    )
            if keys and len(keys) != len(c.camera_keys):
                raise ConfigError(
                    f"dataset.{option}: expected one per camera key ({len(c.camera_keys)}), got {len(keys)}"
                )
        names = [camera_name(key) for key in c.camera_keys]
        if len(set(names)) < len(names):
            raise ConfigError(
                f"dataset.camera_keys: {c.camera_keys} give the camera names {names}, which repeat; samples key views "
                "by the part after the last '.', so it must differ between cameras"
            )
        for key in c.intrinsics_keys:
            if int(np.prod(features[key]["shape"])) != 9:
                raise ConfigError(
                    f"dataset.intrinsics_keys: {key!r} must hold 3 x 3 values, has shape {features[key]['shape']}"
                )
        dims = {"action_key": (c.action_key, self.action_dim, "action_dim")}
        if c.state_key is not None:
            dims["state_key"] = (c.state_key, self.state_dim, "state_dim")
        for option, (key, expected, platform_field) in dims.items():
            if key not in numeric:
                raise ConfigError(f"dataset.{option}: {where} has no key {key!r}; available: {numeric}")
            got = tuple(features[key]["shape"])
            if got != (expected,) and getattr(c, platform_field) is not None:
                raise ConfigError(
                    f"dataset.{option}: {key!r} of {where} has shape {list(got)}, but dataset.{platform_field} is "
                    f"{expected} (expected [{expected}], got {list(got)}); fix dataset.{platform_field}"
                )
            if got != (expected,):
                raise ConfigError(
                    f"dataset.{option}: {key!r} of {where} has shape {list(got)}, platform {self.platform.name!r} "
                    f"has {platform_field} {expected} (expected [{expected}], got {list(got)}); fix platform.{platform_field}"
                    " (or, for a smaller robot in a cross-embodiment mixture, set this dataset's "
                    f"{platform_field})"
                )
        for option, mask, dim in (
            ("action_norm_mask", c.action_norm_mask, self.action_dim),
            ("state_norm_mask", c.state_norm_mask, self.state_dim),
        ):
            if mask is not None and len(mask) != dim:
                raise ConfigError(f"dataset.{option}: expected {dim} entries (one per dimension), got {len(mask)}")

    # -- samples --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.lerobot)

    def load(self, index: int, key: tuple[int, ...]) -> Sample:
        c = self.config
        item = self.lerobot[index]
        action, action_is_pad = self.action_chunk(int(item["index"]), int(item["episode_index"]))
        prompt = item["task"] if self.augmenter is None else self.augmenter(item["task"], key)
        sample: Sample = {
            "images": {name: to_uint8_hwc(item[k]) for name, k in zip(self.camera_keys, c.camera_keys)},
            "prompt": prompt,
            "action": action,
            "action_is_pad": action_is_pad,
            "dataset_name": self.name,
            "embodiment": self.embodiment,
        }
        if c.state_key is not None:
            sample["state"] = item[c.state_key].numpy().astype(np.float32, copy=False)
        if self.returns is not None:
            sample["return"] = self.returns[index]
        if c.depth_keys:
            sample["depth"] = {name: to_depth(item[k]) for name, k in zip(self.camera_keys, c.depth_keys)}
        if c.intrinsics_keys:
            sample["intrinsics"] = self._intrinsics(item)
        if c.next_frame_offset:
            sample["next"] = self.next_frame(int(item["index"]), int(item["episode_index"]))
        return sample

    def prompt(self, index: int, key: tuple[int, ...]) -> str:
        """Row `index`'s task, augmented by `key` as `load` augments it, from the task column alone (no frames)."""
        task = self._row_tasks[index]
        return task if self.augmenter is None else self.augmenter.draw(task, key)[0]

    @cached_property
    def _row_tasks(self) -> list[str]:
        """Each row's task text (the task column through the tasks table), read once."""
        tasks = list(self.lerobot.meta.tasks.index)
        column = self.lerobot.hf_dataset.with_format("numpy", columns=["task_index"])["task_index"]
        return [tasks[int(i)] for i in np.asarray(column)]

    def _intrinsics(self, item: dict) -> dict[str, np.ndarray]:
        keys = self.config.intrinsics_keys
        return {name: item[k].numpy().reshape(3, 3).astype(np.float32) for name, k in zip(self.camera_keys, keys)}

    def next_frame(self, frame: int, episode: int) -> dict:
        """Absolute frame index -> the depth (+ intrinsics) of frame + next_frame_offset, clamped to the episode's
        last frame: {"depth": {camera: [H, W] float32}, "intrinsics": {camera: [3, 3]} (if configured), "valid"}."""
        start, stop = self._episode_bounds[episode]
        wanted = frame + self.config.next_frame_offset
        row = min(wanted, stop - 1)
        mapping = self.lerobot.absolute_to_relative_idx
        item = self.lerobot[mapping[row] if mapping is not None else row]
        out = {
            "depth": {name: to_depth(item[k]) for name, k in zip(self.camera_keys, self.config.depth_keys)},
            "valid": bool(wanted < stop),
        }
        if self.config.intrinsics_keys:
            out["intrinsics"] = self._intrinsics(item)
        return out

    def action_chunk(self, frame: int, episode: int) -> tuple[np.ndarray, np.ndarray]:
        """Absolute frame index -> (actions [T, D] float32, is_pad [T] bool), as lerobot's delta query."""
        start, stop = self._episode_bounds[episode]
        wanted = frame + self.delta_indices
        rows = np.clip(wanted, start, stop - 1).tolist()
        mapping = self.lerobot.absolute_to_relative_idx
        if mapping is not None:
            rows = [mapping[r] for r in rows]
        actions = np.asarray(self._actions[rows][self.config.action_key], dtype=np.float32)
        return actions, (wanted < start) | (wanted >= stop)

    def frame_indices(self) -> np.ndarray:
        """[N] the dataset's absolute `index` of every loaded row, in row order (what per-frame files key on)."""
        return np.asarray(self.lerobot.hf_dataset.with_format("numpy", columns=["index"])[:]["index"]).reshape(-1)

    def episode_indices(self, episode: int) -> range:
        """Sample indices of one recorded episode (in frame order)."""
        start, stop = self._episode_bounds[episode]
        mapping = self.lerobot.absolute_to_relative_idx
        if mapping is None:
            return range(start, stop)
        if start not in mapping:
            raise KeyError(f"episode {episode} is not among the selected episodes {self.config.episodes}")
        return range(mapping[start], mapping[start] + stop - start)

    # -- stats ----------------------------------------------------------------------------------

    def norm_masks(self) -> dict[str, list[bool]]:
        masks = {"action": self.config.action_norm_mask, "state": self.config.state_norm_mask}
        return {k: list(v) for k, v in masks.items() if v is not None}

    def low_dim_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        columns = {"action": self.config.action_key}
        if self.config.state_key is not None:
            columns["state"] = self.config.state_key
        table = self.lerobot.hf_dataset.with_format("numpy", columns=list(columns.values()))
        for start in range(0, len(table), batch_size):
            rows = table[start : start + batch_size]
            yield {name: np.asarray(rows[key], dtype=np.float64) for name, key in columns.items()}
