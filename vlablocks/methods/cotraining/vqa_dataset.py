"""`vqa`: vision-language samples (images, a question, its answer) read from plain JSONL + PNG files.

Layout of a dataset directory (written by `write_vqa_dataset`, e.g. through `vlablocks make-toy-vqa`):

    ROOT/meta.json        {"format": "vlablocks-vqa", "version": 1, "camera_keys": ["top"], "dataset_name": "toy_vqa"}
    ROOT/samples.jsonl    one sample per line:
                          {"images": {"top": "images/000000_top.png"}, "question": "how many blocks are there?",
                           "answer": "3", ...}   (other keys, e.g. "scene", are kept as metadata and ignored)
    ROOT/images/*.png     RGB images, paths relative to ROOT (several samples may share one image)

    dataset:
      name: vqa
      root: data/toy_vqa
      camera_keys: null    # default: meta.json's; the mixture's robot datasets must name the same cameras

Samples are `VLSample`s (vlablocks/core/dataloader/sample.py): no action, no state, hence no normalization stats.
Nothing is unpickled: JSON and PNG only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlablocks.core.config import ConfigError, PlatformConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.sample import VLSample, camera_name, validate_vl_sample
from vlablocks.core.registry import DATASETS

FORMAT = "vlablocks-vqa"
VERSION = 1
META_FILE = "meta.json"
SAMPLES_FILE = "samples.jsonl"
IMAGES_DIR = "images"


def normalize_answer(text: str) -> str:
    """The form answers are compared in: lower case, single spaces, no surrounding spaces or final full stop."""
    return " ".join(text.strip().lower().rstrip(".").split())


def write_vqa_dataset(
    root: str | Path,
    scenes: Sequence[dict[str, np.ndarray]],
    records: Sequence[dict],
    dataset_name: str,
    overwrite: bool = False,
) -> Path:
    """Writes the layout above. scenes: per scene {camera: uint8 [H, W, 3]}; records: {"scene": index into scenes,
    "question": str, "answer": str, ...extra metadata}. -> ROOT."""
    from PIL import Image

    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass --overwrite or choose another --out")
    if not scenes:
        raise ValueError("write_vqa_dataset: no scenes to write")
    cameras = list(scenes[0])
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for index, views in enumerate(scenes):
        if list(views) != cameras:
            raise ValueError(f"scene {index} has cameras {list(views)}; every scene needs {cameras}")
        names = {}
        for camera, image in views.items():
            name = f"{IMAGES_DIR}/{index:06d}_{camera}.png"
            Image.fromarray(np.asarray(image, np.uint8)).save(root / name)
            names[camera] = name
        paths.append(names)
    with (root / SAMPLES_FILE).open("w", encoding="utf-8") as out:
        for record in records:
            line = {"images": paths[record["scene"]], **record}
            out.write(json.dumps(line) + "\n")
    meta = {"format": FORMAT, "version": VERSION, "camera_keys": cameras, "dataset_name": dataset_name}
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
    return root


@DATASETS.register("vqa")
class VQADataset(RawDataset):
    """Image-question-answer samples from a JSONL + PNG directory (layout in the module docstring)."""

    sample_kind = "vl"

    @dataclass(frozen=True)
    class Config:
        name: str = "vqa"
        root: str = ""
        dataset_name: str | None = None  # default: meta.json's
        camera_keys: list[str] | None = None  # default: meta.json's; `observation.images.top` is read as `top`

    def __init__(self, config: Config, *, platform: PlatformConfig, seed: int = 0) -> None:
        super().__init__(platform, seed)
        self.root = Path(config.root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise ConfigError(
                f"dataset.root {str(self.root)!r} has no {META_FILE}; write one with `vlablocks make-toy-vqa --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ConfigError(
                f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}; expected {FORMAT!r} "
                f"version {VERSION}"
            )
        available = list(meta["camera_keys"])
        wanted = [camera_name(k) for k in (config.camera_keys or available)]
        unknown = [k for k in wanted if k not in available]
        if unknown:
            raise ConfigError(f"dataset.camera_keys {unknown} are not in {meta_path}'s cameras {available}")
        self.camera_keys = wanted
        self.name = config.dataset_name or meta["dataset_name"]
        self.embodiment = "vl"
        self.records = [json.loads(line) for line in (self.root / SAMPLES_FILE).read_text().splitlines() if line]
        if not self.records:
            raise ConfigError(f"{self.root / SAMPLES_FILE} holds no samples")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, key: tuple[int, ...]) -> VLSample:
        from PIL import Image

        record = self.records[index]
        images = {}
        for camera in self.camera_keys:
            with Image.open(self.root / record["images"][camera]) as image:
                images[camera] = np.asarray(image.convert("RGB"), dtype=np.uint8)
        sample: VLSample = {
            "images": images,
            "prompt": record["question"],
            "answer": record["answer"],
            "dataset_name": self.name,
        }
        validate_vl_sample(sample, camera_keys=self.camera_keys)
        return sample

    def answers(self) -> list[str]:
        """Every sample's answer, without reading images."""
        return [r["answer"] for r in self.records]

    def low_dim_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """No actions or states: nothing for normalization stats (`compute_norm_stats` skips VL datasets)."""
        return iter(())
