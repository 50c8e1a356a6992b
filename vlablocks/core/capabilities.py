"""What a model can do beyond the Framework contract, declared as Protocols, and the one check commands run.

A capability is a `typing.Protocol`: a model has it when it has the Protocol's members (structural typing, no base
class to inherit). A command that needs one calls `require(model, Capability, command="vlablocks rl")` when it
builds or loads its model; a model without it is refused in one line that names the capability and the registered
models (FRAMEWORKS and VALUE_MODELS) that have it. Code that merely branches on a capability uses
`isinstance(model, Capability)`.

    StochasticPolicy          sample_with_log_probs, choice_log_probs   vlablocks rl, SamplingActor
    FlowInvertible            flow_conditioning                         vlablocks invert
    VisionLanguageCoTraining  cotraining_forward                        vlablocks train on data with VL samples
    Steerable                 vlm (a VLMBackbone: `steering`)           --text-latent, vlablocks text-latent
    ValuePredictor            predict_value                             vlablocks value (and refused as a policy)

A registered class has a capability when each member is defined or annotated on it or a base class: a model
whose member is an attribute set in `__init__` (`self.vlm = ...`) declares it with a class annotation
(`vlm: VLMBackbone`). Environments declare what some commands need the same way (`ScriptedExpert`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vlablocks.core.registry import MODELS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from vlablocks.core.action_model.base import Conditioning
    from vlablocks.core.batch import Batch
    from vlablocks.core.vlm.base import VLMBackbone


_MISSING = object()


class CapabilityMeta(type(Protocol)):
    """The metaclass of capabilities: `isinstance` also finds a member that is a registered submodule.

    Since Python 3.12 `isinstance(x, RuntimeCheckableProtocol)` looks members up statically, which misses what
    `nn.Module` keeps in `_modules` (`self.vlm = build(VLMS, ...)`); those count as present here.
    """

    def __instancecheck__(cls, instance: Any) -> bool:
        if super().__instancecheck__(instance):
            return True
        submodules = getattr(instance, "__dict__", {}).get("_modules") or {}
        return all(
            submodules.get(name) is not None or inspect.getattr_static(instance, name, _MISSING) is not _MISSING
            for name in members(cls)
        )


@runtime_checkable
class StochasticPolicy(Protocol, metaclass=CapabilityMeta):
    """stochastic sampling with exact log-probabilities, what RL needs"""

    def sample_with_log_probs(
        self, batch: Batch, temperature: float, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """-> {"actions" or "action_tokens", "choices": [B, N], "log_probs": [B, N], "mask": [B, N] bool}."""
        ...

    def choice_log_probs(self, batch: Batch, choices: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        """choices [B, N] -> {"log_probs": [B, N], "entropy": [B, N]}, differentiable."""
        ...


@runtime_checkable
class FlowInvertible(Protocol, metaclass=CapabilityMeta):
    """a flow-matching head conditioned once per batch, what flow inversion needs"""

    def flow_conditioning(self, batch: Batch) -> tuple[Conditioning, torch.Tensor | None]:
        """-> (the head's conditioning, the state it reads or None): what every integration step reuses."""
        ...


@runtime_checkable
class VisionLanguageCoTraining(Protocol, metaclass=CapabilityMeta):
    """co-training on vision-language samples, VQA rows in the training batches"""

    def cotraining_forward(self, batch: Batch) -> dict:
        """A batch mixing robot and VL rows -> {"loss", "log": {"action_loss", "answer_loss"}}."""
        ...


@runtime_checkable
class Steerable(Protocol, metaclass=CapabilityMeta):
    """steering hooks: a VLM backbone whose residual stream text-latent steering reads and writes"""

    vlm: VLMBackbone  # `vlm.steering` edits the instruction's residual stream; capture_residuals reads it


@runtime_checkable
class ValuePredictor(Protocol, metaclass=CapabilityMeta):
    """value prediction: values of states, not actions"""

    def predict_value(self, batch: Batch) -> np.ndarray:
        """A processed batch -> values [B] float32."""
        ...


@runtime_checkable
class ScriptedExpert(Protocol, metaclass=CapabilityMeta):
    """An environment with a scripted expert (`vlablocks eval --policy expert`)."""

    def expert_action(self) -> np.ndarray:
        """The expert's next action for the current state."""
        ...


class MissingCapability(ValueError):
    """A model lacks a capability a command needs. `str()` is one line (the CLI prints it as the error)."""


def members(capability: type) -> list[str]:
    """The names a Protocol declares (methods and attributes), sorted."""
    return sorted(capability.__protocol_attrs__)


def provides(cls: type, capability: type) -> bool:
    """Whether class `cls` has every member of `capability`: defined or annotated on it or a base class."""
    declared = set()
    for klass in cls.__mro__:
        declared |= set(vars(klass)) | set(inspect.get_annotations(klass))
    return all(name in declared for name in members(capability))


def models_with(capability: type) -> list[str]:
    """The registered models (FRAMEWORKS and VALUE_MODELS) whose class has `capability`, sorted."""
    return [e.name for e in MODELS.entries() if inspect.isclass(e.obj) and provides(e.obj, capability)]


def describe(capability: type) -> str:
    """The first line of the Protocol's docstring: what the capability is for."""
    return (inspect.getdoc(capability) or capability.__name__).strip().splitlines()[0]


def require(model: Any, capability: type, command: str, hint: str = "") -> None:
    """MissingCapability (one line) unless `model` has `capability`: names the command, the model, the capability
    and the registered models that have it; `hint` (e.g. "or drop the VL dataset") ends the line."""
    if isinstance(model, capability):
        return
    having = ", ".join(models_with(capability)) or "none registered"
    raise MissingCapability(
        f"{command}: {type(model).__name__} lacks the capability {capability.__name__} ({describe(capability)}; "
        f"members: {', '.join(members(capability))}); models that have it: {having}" + (f"; {hint}" if hint else "")
    )
