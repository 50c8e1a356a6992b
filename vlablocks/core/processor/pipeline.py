"""A framework's processor: raw sample dicts -> typed `Batch` (input steps), model output -> actions (output steps).

    samples (dataset, env or wire: vlablocks/core/dataloader/sample.py)
      -> the declared sample steps (sample_steps.py; default: [resolve_embodiment] -> SelectCameras -> Normalize
         -> [state_tokens] -> [pad_embodiment] -> [fast_answer]) -> VLMTokenize -> [GeometryPreprocess] -> Batch
    vision-language samples (co-training, sample.py `is_vl_sample`): SelectCameras -> VLAnswer -> VLMTokenize,
      `is_robot` False, zero state and action rows (padded), no normalization
    model output {"actions": normalized [B, T, D]} or {"action_tokens": FAST ids per sample, or [B, N]}
      -> [FAST decode] -> [trim each sample to its embodiment's [T, D_e]] -> Unnormalize -> robot units [B, T, D]

The steps every served observation runs are in this file, so one observation's processing reads in one place; the
optional ones are in steps.py. In training the processor is the DataLoader's collate function; in serving the policy
calls it. It is saved next to the weights (`<checkpoint>/processor/`: `processor.json`, `norm_stats.json`,
`hf_processor/`, `fast_tokenizer/`) and rebuilt from there alone (no pickle); build.py builds it from a config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlablocks.core.batch import Batch, VLMInputs
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.dataloader.sample import is_vl_sample
from vlablocks.core.manifest import read_json
from vlablocks.core.processor.config import FORMAT_VERSION, ProcessorConfig
from vlablocks.core.processor.embodiment import EmbodimentPadding, dim_mask_batch, stack_or_list
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer
from vlablocks.core.processor.sample_steps import StepContext, build_sample_steps, default_sample_steps
from vlablocks.core.processor.steps import GeometryPreprocess, VLAnswer, answer_labels, fast_answer_step
from vlablocks.core.vlm import inputs as vlm_inputs

PROCESSOR_DIR = "processor"
CONFIG_FILE = "processor.json"
NORM_STATS_FILE = "norm_stats.json"
HF_PROCESSOR_DIR = "hf_processor"
FAST_DIR = "fast_tokenizer"


class Processor:
    """Input steps (raw samples -> Batch) and output steps (model output -> actions), built from a config."""

    def __init__(
        self, config: ProcessorConfig, hf_processor: Any, norm_stats: dict, fast: FASTTokenizer | None = None
    ) -> None:
        self.config = config
        self.hf_processor = hf_processor
        self.normalizer = Normalizer(norm_stats)
        self.select_cameras = SelectCameras(config.camera_keys)
        self.unnormalize = Unnormalize(self.normalizer)
        self.vl_answer = VLAnswer(config.fast.stop_token if config.fast is not None else "<|im_end|>")
        self.geometry = GeometryPreprocess(**config.geometry) if config.geometry else None
        self.padding = None
        if config.embodiments:
            if config.fast is not None:
                raise ValueError(
                    f"FAST action tokens cannot mix embodiments of different action sizes ({sorted(config.embodiments)}):"
                    " its tokens mix every dimension; use a continuous or binned action head for cross-embodiment data"
                )
            self.padding = EmbodimentPadding(config.embodiments, config.action_dim, config.state_dim, config.embodiment)
        self.tokenize, self.special_token_ids = None, frozenset()
        if config.vision_language:
            self.tokenize = VLMTokenize(hf_processor, config.view_size, config.patch_size, config.prompt_suffix)
            tokenizer = hf_processor.tokenizer  # its added tokens (chat, vision, action queries, FAST) are final here
            self.special_token_ids = frozenset([*tokenizer.get_added_vocab().values(), *tokenizer.all_special_ids])
        self.fast_answer = fast_answer_step(config, fast)  # None without FAST action tokens
        self.normalize = Normalize(self.normalizer, config.embodiment)  # also what `fit` reads chunks with
        context = StepContext(
            config, self.normalizer, self.select_cameras, self.normalize, self.padding, self.fast_answer
        )
        self.sample_steps = build_sample_steps(config.sample_steps or default_sample_steps(config), context)

    # ---- input steps -------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[dict], targets: bool = True) -> Batch:
        """samples: raw dicts -> Batch of CPU tensors (shapes in processor/batch.py).

        targets: process the samples' `action` (normalized targets, FAST answers) or VL `answer` when they have one;
        False for inference, which must never see them (an answer would otherwise enter the prompt).
        """
        if not isinstance(samples, (list, tuple)) or not samples:
            raise ValueError(f"the processor takes a non-empty list of sample dicts, got {type(samples).__name__}")
        if self.fast_answer is not None and not self.fast_answer.fast.fitted:
            raise ValueError("the FAST tokenizer is not fitted: call processor.fit(dataset) or set fast.path")
        prepared, is_robot = [], []
        for index, sample in enumerate(samples):
            if not isinstance(sample, dict):
                raise ValueError(f"sample[{index}]: expected a dict, got {type(sample).__name__}")
            is_robot.append(not is_vl_sample(sample))
            if not is_robot[-1]:
                sample = self.select_cameras(sample, index)
                prepared.append(self.vl_answer(sample, index) if targets else _without(sample, ("answer",)))
                continue
            if not targets:
                sample = _without(sample, ("action", "action_is_pad", "return", "next"))
            for step in self.sample_steps:  # the declared chain (config.sample_steps)
                sample = step(sample, index)
            prepared.append(sample)
        robots = [s for s, robot in zip(prepared, is_robot) if robot]
        with_actions = bool(robots) and all(s.get("action") is not None for s in robots)
        with_returns = all(s.get("return") is not None for s in prepared)
        if with_actions and not all(is_robot):
            prepared = [s if robot else self._vl_targets(s) for s, robot in zip(prepared, is_robot)]
        dim_mask = (
            dim_mask_batch(prepared, self.config.action_dim) if with_actions and self.padding is not None else None
        )
        return Batch(
            vlm=self.tokenize(prepared) if self.tokenize is not None else None,
            state=self._state(prepared, is_robot),
            actions=_stack([s["action"] for s in prepared]) if with_actions else None,
            action_is_pad=_stack([_is_pad(s) for s in prepared]) if with_actions else None,
            geometry=self.geometry(prepared) if self.geometry is not None else None,
            dataset_names=tuple(s["dataset_name"] for s in prepared),
            action_vocab=self.fast_answer.fast.vocab_size if self.fast_answer is not None else None,
            returns=torch.tensor([float(s["return"]) for s in prepared]) if with_returns else None,
            is_robot=torch.tensor(is_robot, dtype=torch.bool),
            action_dim_mask=torch.from_numpy(dim_mask) if dim_mask is not None else None,
        )

    def _vl_targets(self, sample: dict) -> dict:
        """A VL sample's stand-in action rows in a mixed batch: zeros [T, D], every step padded (no action loss)."""
        c = self.config
        return {
            **sample,
            "action": np.zeros((c.action_horizon, c.action_dim), np.float32),
            "action_is_pad": np.ones(c.action_horizon, bool),
        }

    def _state(self, samples: list[dict], is_robot: list[bool]) -> torch.Tensor | None:
        """[B, S] normalized states; zeros at VL samples (they have none), or None when the model reads none."""
        if not self.config.use_state or self.config.state_dim == 0:
            return None
        zeros = np.zeros(self.config.state_dim, np.float32)
        samples = [s if robot else {**s, "state": zeros} for s, robot in zip(samples, is_robot)]
        if any(s.get("state") is None for s in samples):
            missing = next(i for i, s in enumerate(samples) if s.get("state") is None)
            raise ValueError(f"sample[{missing}] has no 'state'; this policy takes a float32 [{self.config.state_dim}]")
        return _stack([s["state"] for s in samples])

    def check_prompt(self, prompt: str, max_tokens: int) -> None:
        """A request's instruction must be non-empty, at most `max_tokens` tokens, and free of the model's
        special tokens (chat, vision, action-query and FAST tokens): ValueError naming which, else None."""
        if not prompt.strip():
            raise ValueError("'prompt' is empty; send the instruction as plain text")
        if self.hf_processor is None:
            return
        tokenizer = self.hf_processor.tokenizer
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            raise ValueError(f"'prompt' is {len(ids)} tokens, over this server's limit of {max_tokens}")
        found = [tokenizer.convert_ids_to_tokens(i) for i in ids if i in self.special_token_ids]
        if found:
            raise ValueError(f"'prompt' holds the model's control token(s) {sorted(set(found))[:5]}; send plain text")

    # ---- output steps ------------------------------------------------------------------------------
    def postprocess(self, output: dict, batch: Batch) -> dict[str, Any]:
        """Model output -> {"actions": robot units [B, T, D], "normalized_actions": [B, T, D]} (numpy float32).

        Cross-embodiment: each sample's chunk is its embodiment's [T, D_e]; a batch mixing sizes gets lists of them.
        """
        reports = None
        if "action_tokens" in output:
            normalized, reports = self.fast_answer.decode(output["action_tokens"])
        else:
            normalized = output["actions"].detach().float().cpu().numpy()
        if self.padding is not None:
            rows = self.padding.trim(normalized.astype(np.float32), batch.dataset_names)
            raw = [self.unnormalize(r[None], [n])[0].astype(np.float32) for r, n in zip(rows, batch.dataset_names)]
            result = {"actions": stack_or_list(raw), "normalized_actions": stack_or_list(rows)}
        else:
            result = {
                "actions": self.unnormalize(normalized, batch.dataset_names).astype(np.float32),
                "normalized_actions": normalized.astype(np.float32),
            }
        if reports is not None:
            result["decode_reports"] = reports  # malformed token sequences, repaired
        return result

    # ---- data-dependent parts ----------------------------------------------------------------------
    def fit(self, dataset) -> None:
        """Fits what depends on the training data (the FAST tokenizer, on normalized chunks), once."""
        if self.fast_answer is None or self.fast_answer.fast.fitted:
            return
        rng = np.random.default_rng(0)
        count = min(len(dataset), self.config.fast.fit_max_chunks)
        indices = rng.choice(len(dataset), size=count, replace=False)
        chunks = [self.normalize(dataset[int(i)], int(i))["action"] for i in indices]
        self.fast_answer.fast.fit(np.stack(chunks).astype(np.float64))

    # ---- metadata and persistence ------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """What the server tells clients (from this config alone)."""
        c = self.config
        return {
            "action_horizon": c.action_horizon,
            "action_dim": c.action_dim,
            "state_dim": c.state_dim,  # the robot's; sent even when this model does not read it
            "camera_keys": list(c.camera_keys),
            "image_size": list(c.image_size) if isinstance(c.image_size, tuple) else c.image_size,
            "embodiment": c.embodiment,
            "n_action_steps": c.n_action_steps or c.action_horizon,  # what a client plays of each chunk
            **({"embodiments": c.embodiments} if c.embodiments else {}),  # cross-embodiment: each robot's sizes
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the processor into `directory` (created; the checkpoint writer makes the whole save atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1))
        self.normalizer.save(directory / NORM_STATS_FILE)
        if self.hf_processor is not None:
            self.hf_processor.save_pretrained(str(directory / HF_PROCESSOR_DIR))
        if self.fast_answer is not None and self.fast_answer.fast.fitted:
            self.fast_answer.fast.save(directory / FAST_DIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Processor:
        """Rebuilds a processor from what `save_pretrained` wrote; one-line errors name a missing piece."""
        from transformers import AutoProcessor

        directory = Path(directory)
        for required in (CONFIG_FILE, NORM_STATS_FILE):
            if not (directory / required).exists():
                raise FileNotFoundError(f"{directory} is not a vlablocks processor: {required} is missing")
        data = read_json(directory / CONFIG_FILE)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_FILE}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
        config = ProcessorConfig.from_dict(data)
        hf_processor = None
        if config.vision_language:
            if not (directory / HF_PROCESSOR_DIR).exists():
                raise FileNotFoundError(f"{directory} is not a vlablocks processor: {HF_PROCESSOR_DIR} is missing")
            hf_processor = AutoProcessor.from_pretrained(str(directory / HF_PROCESSOR_DIR), local_files_only=True)
            hf_processor.tokenizer.padding_side = "left"
        fast = FASTTokenizer.load(directory / FAST_DIR) if (directory / FAST_DIR).is_dir() else None
        return cls(config, hf_processor, read_json(directory / NORM_STATS_FILE), fast)


def _without(sample: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in sample.items() if k not in keys}


def _stack(arrays: list) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(a) for a in arrays]))


def _is_pad(sample: dict) -> np.ndarray:
    pad = sample.get("action_is_pad")
    return np.asarray(pad, bool) if pad is not None else np.zeros(len(sample["action"]), bool)


# ---- the steps every served observation runs ------------------------------------------------------
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
        self.pad_to_multiple_of: int | None = None  # prompt-length buckets for a compiled policy (Policy.compile)
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
        tokens = self.tokenizer(
            texts, padding=True, padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        input_ids = tokens["input_ids"]
        inputs = VLMInputs(
            input_ids=input_ids,
            attention_mask=tokens["attention_mask"],
            pixel_patches=torch.from_numpy(np.concatenate(patches)),
            image_grid_thw=torch.tensor(grids, dtype=torch.long),
            views_per_sample=torch.tensor([len(s["views"]) for s in samples], dtype=torch.long),
        )
        if any("answer" in s for s in samples):
            inputs.labels = answer_labels(self.tokenizer, inputs.input_ids, [s.get("answer", "") for s in samples])
        return inputs


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
