"""A framework's processor: raw sample dicts -> typed `Batch` (input steps), model output -> actions (output steps).

    samples (dataset, env or wire: vlablocks/core/dataloader/sample.py)
      -> the declared sample steps (sample_steps.py; default: [resolve_embodiment] -> select_cameras -> normalize
         -> [state_tokens] -> [pad_embodiment] -> [fast_answer]) -> VLMTokenize
      -> [GeometryPreprocess] -> Batch
    vision-language samples (co-training: a question and an `answer`, no action, sample.py `is_vl_sample`)
      -> SelectCameras -> VLAnswer (answer + end-of-turn) -> VLMTokenize: answer labels, `is_robot` False,
         zero state and action rows (all padded), no normalization
    model output {"actions": normalized [B, T, D]} or {"action_tokens": FAST ids per sample}
      -> [FAST decode] -> Unnormalize -> {"actions": robot units [B, T, D], "normalized_actions"}
    cross-embodiment mixtures (`embodiments` set; processor/embodiment.py): robot samples resolve their embodiment
      before Normalize and are zero-padded to [T, D] / [S] after it (Batch.action_dim_mask [B, D]); predicted chunks
      are trimmed back to each sample's [T, D_e] before Unnormalize

In training it is the DataLoader's collate function, so all of it runs in the workers; in serving the
policy calls it. It is saved next to the weights (`<checkpoint>/processor/`) and rebuilt from there alone:
`processor.json` (this config), `norm_stats.json`, `hf_processor/` (the VLM's tokenizer + image processor)
and, for tokenized actions, `fast_tokenizer/`. Nothing here uses pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlablocks.core.batch import Batch
from vlablocks.core.config import ExperimentConfig
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.dataloader.sample import is_vl_sample
from vlablocks.core.manifest import read_json
from vlablocks.core.processor.config import FORMAT_VERSION, ProcessorConfig
from vlablocks.core.processor.embodiment import EmbodimentPadding, dim_mask_batch, stack_or_list
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer
from vlablocks.core.processor.sample_steps import StepContext, build_sample_steps, default_sample_steps
from vlablocks.core.processor.steps import (
    FASTAnswer,
    GeometryPreprocess,
    Normalize,
    SelectCameras,
    Unnormalize,
    VLAnswer,
    VLMTokenize,
)

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
        self.fast_answer = None
        if config.fast is not None:
            options = config.fast
            if fast is None and options.path:
                fast = FASTTokenizer.load(options.path)
                _check_fast(fast, config)
            elif fast is None:  # fitted by `fit(dataset)`
                settings = FASTTokenizer.Config(options.scale, options.vocab_size, options.bpe_merges)
                fast = FASTTokenizer(settings, action_horizon=config.action_horizon, action_dim=config.action_dim)
            self.fast_answer = FASTAnswer(fast, config.fast.token_prefix, config.fast.stop_token)
        context = StepContext(config, self.normalizer, self.select_cameras, self.padding, self.fast_answer)
        self.sample_steps = build_sample_steps(config.sample_steps or default_sample_steps(config), context)
        self.normalize = Normalize(self.normalizer, config.embodiment)  # what `fit` reads chunks with

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


def _check_fast(fast: FASTTokenizer, config: ProcessorConfig) -> None:
    saved = (fast.action_horizon, fast.action_dim)
    if saved != (config.action_horizon, config.action_dim):
        raise ValueError(
            f"the FAST tokenizer at {config.fast.path} was fitted for (action_horizon, action_dim) = {saved}, "
            f"but this platform has {(config.action_horizon, config.action_dim)}; refit it"
        )


def build_processor(
    experiment: ExperimentConfig,
    framework: Any,
    norm_stats: dict,
    camera_keys: Sequence[str] | None = None,
    embodiments: dict | None = None,
) -> Processor:
    """The processor of `framework` for this experiment.

    Cameras: `camera_keys` (the training dataset's), else the config's `dataset.camera_keys` as sample keys
    (`observation.images.top` -> `top`), else ["image"]; dimensions from `platform`; the model-specific
    fields from `framework.processor_options()`; `embodiments` (dataloader/embodiments.py `dataset_embodiments`)
    for a cross-embodiment mixture, whose default embodiment is the platform's name when it is one of them.
    """
    from vlablocks.core.dataloader.sample import camera_name

    platform = experiment.platform
    if camera_keys is None:
        configured = (experiment.dataset or {}).get("camera_keys") or ["image"]
        camera_keys = [camera_name(key) for key in configured]
    camera_keys = tuple(camera_keys)
    names = sorted(norm_stats)
    config = ProcessorConfig(
        camera_keys=camera_keys,
        action_horizon=platform.action_horizon,
        action_dim=platform.action_dim,
        state_dim=platform.state_dim,
        embodiment=_default_embodiment(names, platform.name, embodiments),
        embodiments=embodiments or None,
        n_action_steps=platform.n_action_steps,
        **framework.processor_options(),
    )
    if config.sample_steps is None:  # declared in processor.json: the chain this checkpoint runs
        config = dataclasses.replace(config, sample_steps=default_sample_steps(config))
    return Processor(config, framework.hf_processor, norm_stats)


def _default_embodiment(stats_names: list[str], platform_name: str, embodiments: dict | None) -> str:
    """Single embodiment: the only stats' name, else the platform's; cross-embodiment: the platform's name when it
    is an embodiment, else the first one."""
    if embodiments:
        return platform_name if platform_name in embodiments else sorted(embodiments)[0]
    return stats_names[0] if len(stats_names) == 1 else platform_name
