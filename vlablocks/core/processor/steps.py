"""The processor's optional steps, for the frameworks and data that ask for them: pi0.5's state tokens, FAST answers,
co-training's VL answers, the geometric encoder's inputs. (The steps every served observation runs, SelectCameras,
Normalize, VLMTokenize and Unnormalize, sit with the `Processor` in pipeline.py.)

Per-sample steps take and return a dict in the sample contract (vlablocks/core/dataloader/sample.py) plus the
working keys they add (`answer`); `DiscretizeState` rewrites the `prompt`. `GeometryPreprocess` is a batch step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlablocks.core.batch import GeometryInputs
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.geometry.preprocess import pixel_batch, point_batch
from vlablocks.core.processor.config import ProcessorConfig
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer

IGNORE_INDEX = -100  # labels at positions that carry no loss
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

    def decode(self, rows: list[list[int]] | torch.Tensor) -> tuple[np.ndarray, list[str]]:
        """rows: FAST ids per sample, or [B, N] long -> (normalized actions [B, T, D] float32, per-sample repair
        reports)."""
        rows = rows.tolist() if torch.is_tensor(rows) else rows
        decoded = [self.fast.decode(row) for row in rows]
        return np.stack([d.actions for d in decoded]).astype(np.float32), [d.report for d in decoded]


def fast_answer_step(config: ProcessorConfig, fast: FASTTokenizer | None = None) -> FASTAnswer | None:
    """The FASTAnswer step of a config with FAST action tokens (else None): over `fast` when given (a loaded
    checkpoint's), else the tokenizer at `fast.path`, else a new one that `Processor.fit(dataset)` fits."""
    options = config.fast
    if options is None:
        return None
    if fast is None and options.path:
        fast = FASTTokenizer.load(options.path)
        _check_fast(fast, config)
    elif fast is None:
        settings = FASTTokenizer.Config(options.scale, options.vocab_size, options.bpe_merges)
        fast = FASTTokenizer(settings, action_horizon=config.action_horizon, action_dim=config.action_dim)
    return FASTAnswer(fast, options.token_prefix, options.stop_token)


def _check_fast(fast: FASTTokenizer, config: ProcessorConfig) -> None:
    saved = (fast.action_horizon, fast.action_dim)
    if saved != (config.action_horizon, config.action_dim):
        raise ValueError(
            f"the FAST tokenizer at {config.fast.path} was fitted for (action_horizon, action_dim) = {saved}, "
            f"but this platform has {(config.action_horizon, config.action_dim)}; refit it"
        )


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


def answer_labels(tokenizer: Any, input_ids: torch.Tensor, answers: list[str]) -> torch.Tensor:
    """[B, L] labels for answers (FAST, VL): the last len(answer tokens) ids of each row, -100 elsewhere.

    The answer is tokenized on its own, which equals its tokens in the prompt when it starts with a
    special token (FAST answers do: nothing merges across that boundary).
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, answer in enumerate(answers):
        length = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else 0
        if length:
            labels[row, -length:] = input_ids[row, -length:]
    return labels


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
