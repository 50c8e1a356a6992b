"""`Policy`: a model with its processor, as openpi has it. The model (a Framework nn.Module) does loss and
sampling on typed batches; the policy owns the rest:

    samples / observations (core/dataloader/sample.py)
      -> processor (normalization, tokenization, images)           policy.processor(samples) -> Batch
      -> model.sample_actions(batch, generator)                    normalized actions or action tokens
      -> processor.postprocess                                     {"actions": robot units [B, T, D], ...}

`predict(samples)` runs that chain, `infer(obs)` serves one observation (what the websocket server and the rollout
engine call), `metadata` is what the server tells clients, `check_request` and `session` make it a `ServedPolicy`
(vlablocks/core/serving/policy.py) the server talks to directly, and `save_pretrained` / `Policy.from_pretrained` are the
checkpoint I/O (checkpoint.py).

    policy = Policy.from_pretrained("runs/demo/checkpoints/step_2500")
    actions = policy.predict([{"images": {"top": img}, "state": state, "prompt": "move to the red block"}])["actions"]
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from vlablocks.core.atomic import atomic_directory
from vlablocks.core.batch import Batch
from vlablocks.core.config import ExperimentConfig
from vlablocks.core.framework.base import Framework, build_framework
from vlablocks.core.manifest import write_manifest
from vlablocks.core.policy.checkpoint import load_checkpoint, write_checkpoint
from vlablocks.core.processor.build import build_processor
from vlablocks.core.processor.pipeline import Processor

COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


class Policy:
    """model: the Framework (nn.Module); processor: its Processor. Calls are not thread-safe (the server runs
    them one at a time)."""

    def __init__(self, model: Framework, processor: Processor) -> None:
        self.model = model
        self.processor = processor
        self.compiled_sample_actions = None  # `model.sample_actions` through torch.compile, after `compile`

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, samples: list[dict], seed: int | None = 0) -> dict[str, np.ndarray]:
        """Raw samples -> {"actions": robot units [B, T, D], "normalized_actions": [B, T, D]} (numpy float32).

        A cross-embodiment policy answers each sample at its robot's own [T, D_e] (a list when the batch mixes sizes).
        """
        model = self.model
        batch = self.processor(samples, targets=False)
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        sample_actions = self.compiled_sample_actions or model.sample_actions
        output = sample_actions(batch.to(self.device), generator)
        model.train(was_training)
        return self.processor.postprocess(output, batch)

    def compile(self, mode: str = "auto", prompt_bucket: int = 32, backend: str = "inductor") -> Policy:
        """Compiled inference: `model.sample_actions` through `torch.compile` (mode "auto": "reduce-overhead", i.e.
        CUDA graphs, on a GPU, "default" elsewhere), with prompts left-padded to a multiple of `prompt_bucket` tokens
        so that one compiled graph serves every prompt length of a bucket (input_ids [B, ceil(L / bucket) * bucket]).
        Each call first runs the host-side part eagerly (`model.prepare_sampling`: the VLM layout, a flow head's noise
        drawn from the seeded generator), then the compiled graph. The first call of each bucket compiles; actions
        match eager within float tolerance (test_compiled_policy.py, test_compiled_frameworks.py).

        backend: torch.compile's backend: "inductor" (generated kernels; what `vlablocks serve --compile` uses), or
        "aot_eager" (dynamo's capture and AOT autograd without code generation: the CPU tests check in seconds that a
        framework's sampling captures, and what it computes), or "eager" (capture only); `mode` applies to inductor."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: choose one of {list(COMPILE_MODES)}")
        if backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile backend {backend!r}: choose one of {list(COMPILE_BACKENDS)}")
        if prompt_bucket < 1:
            raise ValueError(f"prompt_bucket {prompt_bucket}: must be a positive number of tokens")
        if mode == "auto":
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        if self.processor.tokenize is not None:
            self.processor.tokenize.pad_to_multiple_of = prompt_bucket
        model = self.model
        model.prepare_compile()
        options = {"mode": mode} if backend == "inductor" else {"backend": backend}
        compiled = torch.compile(model.sample_actions, dynamic=False, **options)

        def sample_actions(batch: Batch, generator: torch.Generator | None) -> dict:
            return compiled(model.prepare_sampling(batch, generator), None)

        self.compiled_sample_actions = sample_actions
        return self

    def infer(self, obs: dict) -> dict:
        """One validated observation -> {"actions": float32 [T, D]} (the served call)."""
        # Decoded arrays are read-only views on the network buffer; the processor may want to write.
        sample = {**obs, "images": {key: np.array(view) for key, view in obs["images"].items()}}
        actions = np.asarray(self.predict([sample])["actions"], dtype=np.float32)
        return {"actions": actions[0]}

    def check_request(self, request: dict, max_prompt_tokens: int) -> None:
        """The served request's checks the observation contract cannot see: ValueError naming the problem when the
        instruction is empty, over `max_prompt_tokens` or holds control tokens, or `dataset_name` has no stats here."""
        self.processor.check_prompt(request["prompt"], max_prompt_tokens)
        name = request.get("dataset_name")
        known = self.processor.normalizer.dataset_names
        if name is not None and name not in known:
            raise ValueError(
                f"'dataset_name' {name[:80]!r} has no normalization stats in this policy; send one of {known}"
            )

    def session(self) -> Policy:
        """What one served connection talks to: the policy itself (it keeps no per-episode state)."""
        return self

    @property
    def metadata(self) -> dict:
        """What the server tells clients: cameras, T, D, S, image size, embodiment(s), n_action_steps."""
        return self.processor.metadata

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> Policy:
        self.model.to(torch.device(device))
        return self

    def eval(self) -> Policy:
        self.model.eval()
        return self

    # ---- checkpoints ---------------------------------------------------------------------------------
    def write_files(self, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Weights, config and processor into an existing directory (the training checkpoint adds its state)."""
        write_checkpoint(Path(directory), self.model, self.processor, state_dict)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes the checkpoint atomically: a kill mid-save leaves any previous one intact."""
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
            write_manifest(tmp)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, weights: str = "model", device: str | None = None) -> Policy:
        """The policy a checkpoint holds (weights "ema": the moving average), on `device` (None: the CPU)."""
        policy = cls(*load_checkpoint(directory, weights, device=device))  # built on `device`, weights loaded there
        return policy.to(device) if device is not None else policy


def build_policy(
    experiment: ExperimentConfig,
    norm_stats: dict,
    camera_keys: list[str] | None = None,
    embodiments: dict | None = None,
    build_in: AbstractContextManager | None = None,
) -> Policy:
    """The model plus its processor (built from the same config, the normalization stats and, when given, the
    training dataset's camera keys and, for a cross-embodiment mixture, its embodiments' own sizes).

    build_in: the context the model is constructed in: `torch.device(d)` creates its parameters on d (a 3B model
    never passes through host memory on its way to a GPU), `train()` passes `zero_init.build_context` (the device,
    or partitioned while built under ZeRO-3); None: the CPU. The processor is built outside it, on the CPU."""
    with build_in if build_in is not None else nullcontext():
        model = build_framework(experiment)
    return Policy(model, build_processor(experiment, model, norm_stats, camera_keys, embodiments))
