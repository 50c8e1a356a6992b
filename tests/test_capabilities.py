"""Capabilities declared as Protocols (vlablocks/core/capabilities.py): the registered models that have each one, the
one-line error a command gives for a model without it, and no `hasattr` dispatch left in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vlablocks.core.capabilities import (
    FlowInvertible,
    MissingCapability,
    ScriptedExpert,
    Steerable,
    StochasticPolicy,
    ValuePredictor,
    VisionLanguageCoTraining,
    models_with,
    provides,
    require,
)
from vlablocks.core.dataloader.base import RawDataset

ROOT = Path(__file__).resolve().parents[1]

# capability -> the registered models (FRAMEWORKS and VALUE_MODELS) that have it
EXPECTED = {
    StochasticPolicy: ["QwenFAST", "QwenOFT"],
    FlowInvertible: ["QwenFlowMatching", "QwenLayerwiseFM3D", "QwenPI05"],
    VisionLanguageCoTraining: ["QwenOFT"],
    Steerable: ["QwenFAST", "QwenFlowMatching", "QwenLayerwiseFM3D", "QwenOFT", "QwenPI05", "QwenValue"],
    ValuePredictor: ["QwenValue", "StateValueMLP"],
}


class Bare(torch.nn.Module):
    """A model with none of the capabilities."""


@pytest.mark.parametrize("capability", list(EXPECTED), ids=lambda c: c.__name__)
def test_the_registered_models_with_each_capability(capability):
    assert models_with(capability) == EXPECTED[capability]


@pytest.mark.parametrize("capability", list(EXPECTED), ids=lambda c: c.__name__)
def test_a_model_without_the_capability_is_refused_in_one_line_naming_who_has_it(capability):
    with pytest.raises(MissingCapability) as info:
        require(Bare(), capability, command="vlablocks x")
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI prints it as its one-line error
    assert "\n" not in message
    assert message.startswith(f"vlablocks x: Bare lacks the capability {capability.__name__} (")
    assert message.endswith(f"models that have it: {', '.join(EXPECTED[capability])}")


def test_a_model_with_the_members_passes_and_a_class_declares_them():
    class Sampler(Bare):
        def sample_with_log_probs(self, batch, temperature, generator):
            return {}

        def choice_log_probs(self, batch, choices, temperature):
            return {}

    class WithVLM(Bare):
        vlm: torch.nn.Module  # declared: the class has the capability before any instance sets it

    class SetsVLM(WithVLM):
        def __init__(self) -> None:
            super().__init__()
            self.vlm = torch.nn.Linear(2, 2)  # kept by nn.Module in _modules, not in the instance __dict__

    require(Sampler(), StochasticPolicy, command="vlablocks rl")  # no error
    assert provides(Sampler, StochasticPolicy) and not provides(Bare, StochasticPolicy)
    assert provides(WithVLM, Steerable) and not isinstance(WithVLM(), Steerable)  # the instance sets no vlm
    assert isinstance(SetsVLM(), Steerable) and not isinstance(SetsVLM(), ValuePredictor)


def test_commands_refuse_a_model_without_the_capability():
    from vlablocks.core.evaluation.actors import SamplingActor
    from vlablocks.core.framework.cotraining import check_cotraining
    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.steering.flow_inversion import flow_head

    with pytest.raises(MissingCapability, match=r"^sampling rollouts: Bare lacks the capability StochasticPolicy"):
        SamplingActor(Policy(Bare(), processor=None), temperature=1.0)
    with pytest.raises(
        MissingCapability, match=r"^vlablocks invert: Bare lacks .* QwenFlowMatching, QwenLayerwiseFM3D"
    ):
        flow_head(Bare())

    class VLLeaf:
        sample_kind = "vl"

    class Mixed(RawDataset):
        def leaves(self):
            return [VLLeaf()]

    mixed = Mixed.__new__(Mixed)
    with pytest.raises(MissingCapability, match=r"VisionLanguageCoTraining .* have it: QwenOFT; or drop them$"):
        check_cotraining(Bare(), mixed)


def test_text_latent_steering_refuses_a_served_model_without_a_vlm():
    import argparse

    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.steering.latent_arguments import steered

    args = argparse.Namespace(text_latent="latents.safetensors")
    with pytest.raises(MissingCapability, match=r"^--text-latent: Bare lacks the capability Steerable"):
        steered(Policy(Bare(), processor=None), args)
    with pytest.raises(ValueError, match="steers an in-process checkpoint"):
        steered(object(), args)  # a remote client or a baseline: not a vlablocks Policy


def test_the_toy_env_has_a_scripted_expert():
    from vlablocks.tools.toy.toy import ToyTabletopEnv

    assert isinstance(ToyTabletopEnv(), ScriptedExpert)
    assert not isinstance(object(), ScriptedExpert)


def hasattr_calls(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_no_hasattr_dispatch_in_the_package(tmp_path):
    planted = tmp_path / "pkg"
    planted.mkdir()
    (planted / "m.py").write_text("def f(x):\n    return hasattr(x, 'y')\n")
    assert hasattr_calls(planted) == ["pkg/m.py:2"]  # the scan finds one
    assert hasattr_calls(ROOT / "vlablocks") == []
