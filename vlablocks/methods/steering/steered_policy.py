"""A policy steered by text latents: the model's residual stream at the instruction's tokens is written with
the latent of a task, or of two tasks interpolated over the episode (vlablocks/methods/steering/text_latent.py).

Wraps a `Policy` (core/policy/policy.py); `vlablocks eval --text-latent F ...` and `vlablocks serve --text-latent F ...` build
it. The schedule counts policy calls since `reset()` (the eval loop calls it at every episode start; a served
robot sends `"episode_start": true` in the first observation of an episode). Served, it is a `ServedPolicy`
(core/serving/policy.py): each connection gets its own `session()` (its own schedule), and `check_request` runs the
wrapped policy's checks plus its own (the request's latent tasks exist) before the model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from vlablocks.core.vlm.steering import Steering, language_layers, steering
from vlablocks.methods.steering.text_latent import TextLatents, interpolation_weight

AUTO = "auto"
FILLERS = (".", " .", "_", " ")  # the pad token would be masked out of attention: a blank must be attended


def blank_prompt(tokenizer, length: int) -> str:
    """A content-free instruction of exactly `length` tokens: a filler character repeated (the first of FILLERS
    that the tokenizer keeps one token per repetition)."""
    for filler in FILLERS:
        if len(tokenizer(filler * length, add_special_tokens=False)["input_ids"]) == length:
            return filler * length
    raise ValueError(f"no filler of {list(FILLERS)} tokenizes to one token per repetition for a {length}-token blank")


@dataclass(frozen=True)
class LatentOptions:
    """task: the latent's task string, or "auto": the observation's own prompt (two tasks: its "subtasks");
    task_2: the second task for interpolation (None: one task; "auto": obs["subtasks"][1]);
    schedule / switch_at: w(k) over policy calls (text_latent.interpolation_weight);
    prompt: "blank" (the instruction replaced by as many filler tokens as the latent has positions) or "given";
    kind: "positions" (one vector per text token) or "mean" (one per layer, at every text token);
    mode / alpha: add or blend (vlm/steering.py); layers: residual-stream indices written (None: all)."""

    task: str = AUTO
    task_2: str | None = None
    schedule: str = "step"
    switch_at: int = 3
    prompt: str = "blank"
    kind: str = "positions"
    mode: str = "add"
    alpha: float = 1.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.prompt not in ("blank", "given"):
            raise ValueError(f"--latent-prompt must be 'blank' or 'given', got {self.prompt!r}")
        if self.kind not in ("positions", "mean") or self.mode not in ("add", "blend"):
            raise ValueError(f"--latent-kind must be positions|mean and --latent-mode add|blend, got {self.kind!r}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"--latent-alpha must be a finite number, got {self.alpha}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"--latent-layers must be residual indices >= 0, got {list(self.layers)}")
        for name, task in (("--latent-task", self.task), ("--latent-task-2", self.task_2)):
            if task is not None and not task.strip():
                raise ValueError(f"{name} is empty: name a task of the latent file, or 'auto'")
        interpolation_weight(0, self.schedule, self.switch_at)  # validates schedule and switch_at


class SteeredPolicy:
    """A Policy + a text-latent steering per call. metadata and the prompt checks: the wrapped policy's."""

    def __init__(self, policy, latents: TextLatents, options: LatentOptions) -> None:
        """ValueError naming the option when one cannot work with this checkpoint and latent file (a task the file
        does not hold, a residual index the VLM does not have), so a server never starts with them."""
        self.policy = policy
        self.framework = policy.model
        self.metadata = policy.metadata
        self.latents = latents
        self.options = options
        indices = len(language_layers(self.framework.vlm)) + 1  # embeddings + each layer's output
        self.layers = options.layers if options.layers is not None else tuple(range(indices))
        if not latents.tasks:
            raise ValueError("the text-latent file holds no tasks; extract it again (vlablocks text-latent extract)")
        if latents.mean[0].shape[0] != indices:
            raise ValueError(
                f"the text latents have {latents.mean[0].shape[0]} residual indices, the checkpoint's VLM {indices}: "
                "extract them from this checkpoint"
            )
        if max(self.layers) >= indices:
            raise ValueError(
                f"--latent-layers must be in 0..{indices - 1} (this VLM's residual indices), got {list(self.layers)}"
            )
        for name, task in (("--latent-task", options.task), ("--latent-task-2", options.task_2)):
            if task not in (None, AUTO):
                try:
                    latents.index(task)
                except KeyError as exc:
                    raise ValueError(f"{name}: {exc.args[0]}") from None
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def session(self) -> SteeredPolicy:
        """A view for one served connection: the same model and latents, its own schedule (calls since its
        episode started), so one client's requests never move another's episode."""
        view = copy.copy(self)
        view.calls = 0
        return view

    def check_request(self, request: dict, max_prompt_tokens: int) -> None:
        """The wrapped policy's checks (a steered server refuses what an unsteered one refuses: long prompts,
        control tokens, unknown datasets), then the request's latent tasks: ValueError naming a missing one."""
        self.policy.check_request(request, max_prompt_tokens)
        first, second = self.tasks(request)
        for task in (first, second):
            if task is not None:
                try:
                    self.latents.index(task)
                except KeyError as exc:
                    raise ValueError(exc.args[0]) from None
        if second is not None and self.options.kind == "positions":
            self.vectors(request)  # tasks of different token counts cannot be interpolated per position

    def tasks(self, obs: dict) -> tuple[str, str | None]:
        """The (first, second or None) task strings for this observation."""
        first, second = self.options.task, self.options.task_2
        subtasks = obs.get("subtasks")
        if second == AUTO or (first == AUTO and second is not None):
            if not subtasks or len(subtasks) != 2:
                raise ValueError(
                    "'auto' latent tasks for interpolation need obs['subtasks'] (the two_stage toy variant)"
                )
        if first == AUTO:
            first = subtasks[0] if second is not None else obs["prompt"]
        if second == AUTO:
            second = subtasks[1]
        return first, second

    def vectors(self, obs: dict) -> torch.Tensor:
        """-> [K indices, P, H] for this call: task A's latent, or the interpolation of A and B."""
        first, second = self.tasks(obs)
        vector = self.latents.vector(first, self.options.kind)
        if second is not None:
            other = self.latents.vector(second, self.options.kind)
            if other.shape != vector.shape:
                raise ValueError(
                    f"tasks {first!r} and {second!r} have {vector.shape[1]} and {other.shape[1]} text tokens: "
                    "interpolate their per-layer means (--latent-kind mean) or tasks of one phrasing"
                )
            weight = interpolation_weight(self.calls, self.options.schedule, self.options.switch_at)
            vector = (1 - weight) * vector + weight * other
        return vector[list(self.layers)]

    def infer(self, obs: dict) -> dict:
        if obs.get("episode_start") is True:
            self.reset()
        vectors = self.vectors(obs)
        if self.options.prompt == "blank":  # as many filler tokens as the first task's instruction has
            length = self.latents.vector(self.tasks(obs)[0], "positions").shape[1]
            obs = {**obs, "prompt": blank_prompt(self.framework.vlm.tokenizer, length)}
        steer = Steering(vectors[None].to(self.framework.device), self.layers, self.options.mode, self.options.alpha)
        try:
            with steering(self.framework.vlm, steer):
                return self.policy.infer(obs)
        finally:
            self.calls += 1
