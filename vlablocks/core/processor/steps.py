"""The steps a processor is made of: small transforms on raw sample dicts, then batch-level collation.

Per-sample steps take and return a dict in the sample contract (vlablocks/core/dataloader/sample.py) plus the
working keys they add (`views`, `depths`, `answer`); `DiscretizeState` rewrites the `prompt`. Batch steps
turn the list into tensors.
Normalize and Unnormalize are mirrors of each other and share one `Normalizer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vlablocks.core.batch import GeometryInputs, VLMInputs
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.geometry.preprocess import pixel_batch, point_batch
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer
from vlablocks.core.vlm import inputs as vlm_inputs

IGNORE_INDEX = -100  # labels at positions that carry no loss


class SelectCameras:
    """images {camera: [H, W, 3]} -> views [V] in the policy's camera order (depth and intrinsics follow)."""

    def __init__(self, camera_keys: Sequence[str]) -> None:
        self.camera_keys = list(camera_keys)

    def __call__(self, sample: dict, index: int) -> dict:
        images = sample.get("images")
        if not isinstance(images, dict):
            raise ValueError(
                f"sample[{index}]['images']: expected a map camera_key -> uint8 [H, W, 3], got {type(images).__name__}"
            )
        missing = [key for key in self.camera_keys if key not in images]
        if missing:
            raise ValueError(
                f"sample[{index}]['images'] lacks camera(s) {missing} (has {sorted(map(str, images))}); "
                f"this policy takes cameras {self.camera_keys}"
            )
        out = {**sample, "views": [images[key] for key in self.camera_keys]}
        for source, target in (("depth", "depths"), ("intrinsics", "view_intrinsics")):
            if isinstance(sample.get(source), dict):
                out[target] = [sample[source].get(key) for key in self.camera_keys]
        later = sample.get("next")
        if isinstance(later, dict) and isinstance(later.get("depth"), dict):  # a later frame's depth (training only)
            out["next_depths"] = [later["depth"].get(key) for key in self.camera_keys]
            if isinstance(later.get("intrinsics"), dict):
                out["next_intrinsics"] = [later["intrinsics"].get(key) for key in self.camera_keys]
            out["next_valid"] = bool(later.get("valid", True))
        return out


class Normalize:
    """Raw `state` [S] and `action` [T, D] -> normalized with the stats of the sample's `dataset_name`."""

    def __init__(self, normalizer: Normalizer, default_dataset: str, keys: Sequence[str] = ("state", "action")) -> None:
        self.normalizer = normalizer
        self.default_dataset = default_dataset
        self.keys = tuple(keys)

    def __call__(self, sample: dict, index: int) -> dict:
        name = sample.get("dataset_name") or self.default_dataset
        if name not in self.normalizer.stats:
            given = "its dataset_name" if sample.get("dataset_name") else "no dataset_name, so the default"
            raise ValueError(
                f"sample[{index}] has {given} {name!r}, which has no normalization stats; "
                f"send dataset_name, one of {self.normalizer.dataset_names}"
            )
        out = {**sample, "dataset_name": name}
        for key in self.keys:
            if sample.get(key) is not None:
                out[key] = self.normalizer.normalize(np.asarray(sample[key], np.float32), key, name)
        return out


class Unnormalize:
    """The mirror of `Normalize` for predicted actions: [B, T, D] normalized -> robot units."""

    def __init__(self, normalizer: Normalizer) -> None:
        self.normalizer = normalizer

    def __call__(self, actions: np.ndarray, dataset_names: Sequence[str]) -> np.ndarray:
        return np.stack([self.normalizer.unnormalize(a, "action", n) for a, n in zip(actions, dataset_names)])


BOUNDED_MODES = ("q99", "min_max")  # normalization modes that map the stats' range onto [-1, 1]


class DiscretizeState:
    """Normalized `state` [S] -> its bins written after the instruction, as text (pi0.5's discrete state):

        prompt -> f"{prompt}\n{label} {b_1} ... {b_S};"       e.g. "move to the red block\nState: 131 7;"

    The bins cut the normalized range [-1, 1] into `num_bins` equal bins: with the stats' q99 mode that is
    [q01, q99] of each dimension in robot units (min_max: [min, max]), so bins and range both come from the
    normalization stats. bin(x) = clip(floor((x + 1) / 2 * num_bins), 0, num_bins - 1): values outside the
    range land in the end bins. `centres(bins)` maps bins back to normalized values, within half a bin of
    any x in range. Shared by any framework whose processor options set `state_tokens`.
    """

    def __init__(self, normalizer: Normalizer, num_bins: int = 256, label: str = "State:") -> None:
        if num_bins < 2:
            raise ValueError(f"state_tokens.num_bins must be >= 2, got {num_bins}")
        for name, entry in normalizer.stats.items():
            if entry["mode"] not in BOUNDED_MODES:
                raise ValueError(
                    f"state as text needs a bounded normalization: dataset {name!r} has norm_mode {entry['mode']!r}; "
                    f"use one of {list(BOUNDED_MODES)}"
                )
            unnormalized = [i for i, m in enumerate(entry.get("state", {}).get("mask", [])) if not m]
            if unnormalized:
                raise ValueError(
                    f"state as text: dataset {name!r} leaves state dims {unnormalized} unnormalized (mask false), "
                    "so they have no range to bin; normalize every state dimension"
                )
        self.num_bins = num_bins
        self.label = label

    def bins(self, normalized: np.ndarray) -> np.ndarray:
        """normalized: [..., S] in [-1, 1] -> [..., S] int64 bins in 0 .. num_bins - 1."""
        scaled = np.floor((np.asarray(normalized, np.float64) + 1.0) / 2.0 * self.num_bins)
        return np.clip(scaled, 0, self.num_bins - 1).astype(np.int64)

    def centres(self, bins: np.ndarray) -> np.ndarray:
        """bins: [..., S] -> [..., S] float32, the normalized value at each bin's centre."""
        return ((np.asarray(bins, np.float64) + 0.5) / self.num_bins * 2.0 - 1.0).astype(np.float32)

    def text(self, normalized: np.ndarray) -> str:
        """normalized: [S] -> "State: 131 7;"."""
        return f"{self.label} {' '.join(str(b) for b in self.bins(normalized).tolist())};"

    def __call__(self, sample: dict, index: int) -> dict:
        state = sample.get("state")
        if state is None:
            raise ValueError(f"sample[{index}] has no 'state'; this policy reads the state as prompt tokens")
        prompt = sample.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"sample[{index}]['prompt']: expected a non-empty instruction string, got {prompt!r}")
        return {**sample, "prompt": f"{prompt}\n{self.text(np.asarray(state).reshape(-1))}"}


def fast_token(token_prefix: str, fast_id: int) -> str:
    """The VLM token that stands for FAST id `fast_id` (the model adds one per possible id)."""
    return f"{token_prefix}{fast_id}|>"


class FASTAnswer:
    """Normalized `action` [T, D] -> `answer`: its FAST tokens as VLM token strings, then the stop token.

    Its `decode` is the output step: generated FAST ids per sample -> normalized actions [B, T, D].
    """

    def __init__(self, fast: FASTTokenizer, token_prefix: str, stop_token: str) -> None:
        self.fast = fast
        self.token_prefix = token_prefix
        self.stop_token = stop_token

    def token(self, fast_id: int) -> str:
        return fast_token(self.token_prefix, fast_id)

    def __call__(self, sample: dict, index: int) -> dict:
        if sample.get("action") is None:
            return sample
        ids = self.fast.encode(np.asarray(sample["action"], np.float64))
        return {**sample, "answer": "".join(self.token(i) for i in ids) + self.stop_token}

    def decode(self, rows: list[list[int]]) -> tuple[np.ndarray, list[str]]:
        """-> (normalized actions [B, T, D] float32, per-sample repair reports)."""
        decoded = [self.fast.decode(row) for row in rows]
        return np.stack([d.actions for d in decoded]).astype(np.float32), [d.report for d in decoded]


class VLAnswer:
    """A vision-language sample's plain-text `answer` -> the text the VLM learns to emit: the answer, then the
    end-of-turn token (so greedy decoding knows where to stop)."""

    def __init__(self, stop_token: str = "<|im_end|>") -> None:
        self.stop_token = stop_token

    def __call__(self, sample: dict, index: int) -> dict:
        answer = sample.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"sample[{index}]['answer']: expected a non-empty answer string, got {answer!r}")
        return {**sample, "answer": answer + self.stop_token}


class VLMTokenize:
    """Views + prompt (+ a fixed `suffix`, + a per-sample `answer`) -> VLMInputs for the VLM's own processor config.

    The prompt is the Qwen-VL chat layout: one user turn with the views then the instruction, the assistant
    start, then `suffix` (e.g. action-query tokens) and the answer; each view's image token is expanded to
    its merged-patch count, and the text is tokenized with the VLM's tokenizer (left padding). Views are
    resized and cut into patches here but stay uint8 (`pixel_patches`, 8x smaller than the float pixels,
    which matters for the hand-over from the DataLoader workers and the copy to the accelerator): the VLM
    rescales, normalizes and repeats them over the temporal patch itself (`VLMBackbone.pixel_values`),
    with the same arithmetic as transformers' Qwen2-VL image processor. With answers, `labels` hold the
    answer's token ids (the end of each left-padded row) and -100 elsewhere.
    """

    def __init__(self, hf_processor: Any, view_size: tuple[int, int], patch_size: int, suffix: str = "") -> None:
        self.hf_processor = hf_processor
        self.tokenizer = hf_processor.tokenizer
        self.image_token = hf_processor.image_token
        self.merge_size = hf_processor.image_processor.merge_size
        self.view_size = tuple(view_size)
        self.patch_size = patch_size
        self.suffix = suffix

    def prompt(self, num_views: int, instruction: Any, index: int) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"sample[{index}]['prompt']: expected a non-empty instruction string, got {instruction!r}")
        messages = vlm_inputs.user_messages(num_views, instruction)
        return self.hf_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, samples: list[dict]) -> VLMInputs:
        texts, patches, grids = [], [], []
        for index, sample in enumerate(samples):
            views = vlm_inputs.to_pil_views(sample["views"], f"sample[{index}]['images']")
            text = self.prompt(len(views), sample.get("prompt"), index) + self.suffix + sample.get("answer", "")
            parts = text.split(self.image_token)
            if len(parts) != len(views) + 1:
                raise ValueError(
                    f"sample[{index}]: the prompt holds {len(parts) - 1} image tokens for {len(views)} views"
                )
            expanded = parts[0]
            for view, part in zip(vlm_inputs.resize_views(views, self.view_size, self.patch_size), parts[1:]):
                view_patches, grid = patchify(np.asarray(view), self.patch_size, self.merge_size)
                patches.append(view_patches)
                grids.append(grid)
                expanded += self.image_token * (grid[1] * grid[2] // self.merge_size**2) + part
            texts.append(expanded)
        tokens = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        input_ids = tokens["input_ids"]
        inputs = VLMInputs(
            input_ids=input_ids,
            attention_mask=tokens["attention_mask"],
            pixel_patches=torch.from_numpy(np.concatenate(patches)),
            image_grid_thw=torch.tensor(grids, dtype=torch.long),
            views_per_sample=torch.tensor([len(s["views"]) for s in samples], dtype=torch.long),
        )
        if any("answer" in s for s in samples):
            inputs.labels = self.answer_labels(inputs.input_ids, [s.get("answer", "") for s in samples])
        return inputs

    def answer_labels(self, input_ids: torch.Tensor, answers: list[str]) -> torch.Tensor:
        """[B, L] labels: the last len(answer tokens) ids of each row, -100 elsewhere.

        The answer is tokenized on its own, which equals its tokens in the prompt when it starts with a
        special token (FAST answers do: nothing merges across that boundary).
        """
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, answer in enumerate(answers):
            length = len(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else 0
            if length:
                labels[row, -length:] = input_ids[row, -length:]
        return labels


def patchify(image: np.ndarray, patch_size: int, merge_size: int) -> tuple[np.ndarray, list[int]]:
    """image: uint8 [H, W, 3] (H, W multiples of patch x merge) -> (patches uint8 [gh * gw, 3, p, p], [1, gh, gw]).

    Patches are ordered as transformers' Qwen2-VL image processor orders them: merge windows row-major,
    and the merge_size x merge_size patches of each window row-major inside it.
    """
    height, width, channels = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    m, p = merge_size, patch_size
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    blocks = chw.reshape(channels, grid_h // m, m, p, grid_w // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    return np.ascontiguousarray(blocks.reshape(grid_h * grid_w, channels, p, p)), [1, grid_h, grid_w]


class GeometryPreprocess:
    """Views (+ depth and intrinsics per view) -> GeometryInputs at the geometric encoder's size.

    next_frame: also the points of the samples' `next` depth (training samples of a dataset with
    `next_frame_offset`), in the same camera order; samples without one get next_valid False.
    """

    def __init__(self, size: tuple[int, int], use_depth: bool, fov_degrees: float, next_frame: bool = False) -> None:
        self.size = tuple(size)
        self.use_depth = use_depth
        self.fov_degrees = fov_degrees
        self.next_frame = next_frame

    def __call__(self, samples: list[dict]) -> GeometryInputs:
        views = [s["views"] for s in samples]
        pixels, view_mask = pixel_batch(views, self.size)
        points = None
        if self.use_depth:
            depths = [s.get("depths") for s in samples]
            intrinsics = [s.get("view_intrinsics") for s in samples]
            points = point_batch(depths, intrinsics, self.size, pixels.shape[1], self.fov_degrees)
        if not self.next_frame or not any("next_depths" in s for s in samples):
            return GeometryInputs(pixels, view_mask, points)
        next_valid = torch.tensor([bool(s.get("next_valid", False)) for s in samples])
        next_depths = [s.get("next_depths") for s in samples]
        next_intrinsics = [s.get("next_intrinsics") for s in samples]
        next_points = point_batch(next_depths, next_intrinsics, self.size, pixels.shape[1], self.fov_degrees)
        return GeometryInputs(pixels, view_mask, points, next_points, next_valid)
