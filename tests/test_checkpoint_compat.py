"""Checkpoints written before the one-way-layers change (commit 926403e) load with identical predictions.

tests/fixtures/checkpoints_before_layers/<Framework>/ holds a tiny random-init policy of each framework saved by
`save_pretrained` at 926403e, the two synthetic observations it was asked about, and the actions it predicted
then (`expected_predictions.safetensors`). Loading it with today's code and asking again must give the same actions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from vlablocks.core.policy.policy import Policy

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_before_layers"
FRAMEWORKS = ["QwenOFT", "QwenFlowMatching", "QwenFAST", "QwenPI05", "QwenLayerwiseFM3D"]


def observations(directory: Path) -> tuple[list[dict], np.ndarray]:
    tensors = load_file(str(directory / "expected_predictions.safetensors"))
    prompts = json.loads((directory / "prompts.json").read_text())
    samples = []
    for i, prompt in enumerate(prompts):
        images = {key.split(".", 2)[2]: value for key, value in tensors.items() if key.startswith(f"images.{i}.")}
        samples.append({"images": images, "state": tensors[f"state.{i}"], "prompt": prompt})
    return samples, tensors["actions"]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_old_checkpoint_predicts_the_same_actions(name):
    directory = FIXTURES / name
    samples, expected = observations(directory)
    policy = Policy.from_pretrained(directory)
    assert type(policy.model).__name__ == name
    actions = policy.predict(samples, seed=0)["actions"]
    assert actions.shape == expected.shape
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
