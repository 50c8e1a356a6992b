"""The per-sample chain of a robot sample, declared as an ordered list of registered steps.

`ProcessorConfig.sample_steps` names the steps in order; each name is a class registered in `PROCESSOR_STEPS`
whose `from_context(context)` builds it from the processor's parts, and whose instances map
`(sample: dict, index: int) -> dict` in the sample contract. The default chain for a config is

    resolve_embodiment -> select_cameras -> normalize -> state_tokens -> pad_embodiment -> fast_answer

keeping only the steps whose options are set (embodiments, state_tokens, fast). A new step is a registered class
and one more name in the list; checkpoints save the list in `processor.json` and run it as saved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.processor.config import ProcessorConfig
from vlablocks.core.processor.embodiment import EmbodimentPadding
from vlablocks.core.processor.steps import DiscretizeState, FASTAnswer
from vlablocks.core.registry import PROCESSOR_STEPS, RegistryError

SampleStep = Callable[[dict, int], dict]


@dataclass(frozen=True)
class StepContext:
    """What a step may be built from: the config and the processor's shared parts (None when not configured);
    `select_cameras` and `normalize` are the processor's own (pipeline.py), shared with what it runs outside the chain.
    """

    config: ProcessorConfig
    normalizer: Normalizer
    select_cameras: SampleStep
    normalize: SampleStep
    padding: EmbodimentPadding | None
    fast_answer: FASTAnswer | None


def _needs(part: Any, step: str, option: str) -> Any:
    if part is None:
        raise ValueError(f"processor step {step!r} needs the processor option {option!r}, which is not set")
    return part


@PROCESSOR_STEPS.register("resolve_embodiment")
class ResolveEmbodiment:
    """Cross-embodiment: the sample's embodiment and dataset_name, its sizes checked (EmbodimentPadding.resolve)."""

    def __init__(self, padding: EmbodimentPadding) -> None:
        self.padding = padding

    @classmethod
    def from_context(cls, context: StepContext) -> ResolveEmbodiment:
        return cls(_needs(context.padding, "resolve_embodiment", "embodiments"))

    def __call__(self, sample: dict, index: int) -> dict:
        return self.padding.resolve(sample, index)


@PROCESSOR_STEPS.register("select_cameras")
class SelectCamerasStep:
    """images {camera: [H, W, 3]} -> views in the policy's camera order (pipeline.SelectCameras)."""

    @classmethod
    def from_context(cls, context: StepContext) -> SampleStep:
        return context.select_cameras


@PROCESSOR_STEPS.register("normalize")
class NormalizeStep:
    """Raw state [S] and action [T, D] -> normalized with the sample's dataset stats (pipeline.Normalize)."""

    @classmethod
    def from_context(cls, context: StepContext) -> SampleStep:
        return context.normalize


@PROCESSOR_STEPS.register("state_tokens")
class StateTokensStep:
    """The normalized state written into the prompt as bins, pi0.5 (steps.DiscretizeState)."""

    @classmethod
    def from_context(cls, context: StepContext) -> DiscretizeState:
        options = _needs(context.config.state_tokens, "state_tokens", "state_tokens")
        return DiscretizeState(context.normalizer, options.num_bins, options.label)


@PROCESSOR_STEPS.register("pad_embodiment")
class PadEmbodiment:
    """Cross-embodiment: normalized action [T, D_e] and state [S_e] zero-padded to the platform's [T, D] / [S]."""

    def __init__(self, padding: EmbodimentPadding) -> None:
        self.padding = padding

    @classmethod
    def from_context(cls, context: StepContext) -> PadEmbodiment:
        return cls(_needs(context.padding, "pad_embodiment", "embodiments"))

    def __call__(self, sample: dict, index: int) -> dict:
        return self.padding.pad(sample, index)


@PROCESSOR_STEPS.register("fast_answer")
class FASTAnswerStep:
    """Normalized action [T, D] -> its FAST tokens as the answer text (steps.FASTAnswer)."""

    @classmethod
    def from_context(cls, context: StepContext) -> FASTAnswer:
        return _needs(context.fast_answer, "fast_answer", "fast")


DEFAULT_ORDER = ("resolve_embodiment", "select_cameras", "normalize", "state_tokens", "pad_embodiment", "fast_answer")


def default_sample_steps(config: ProcessorConfig) -> tuple[str, ...]:
    """The default chain: DEFAULT_ORDER without the steps whose option is not set."""
    skipped = set()
    if not config.embodiments:
        skipped |= {"resolve_embodiment", "pad_embodiment"}
    if config.state_tokens is None:
        skipped.add("state_tokens")
    if config.fast is None:
        skipped.add("fast_answer")
    return tuple(name for name in DEFAULT_ORDER if name not in skipped)


def build_sample_steps(names: Sequence[str], context: StepContext) -> list[SampleStep]:
    """The declared steps, built in order; a one-line error names an unknown step or a missing option."""
    steps = []
    for name in names:
        try:
            step_class = PROCESSOR_STEPS.get(name)
        except RegistryError as exc:
            raise ValueError(f"processor.sample_steps: {exc}") from exc
        steps.append(step_class.from_context(context))
    return steps
