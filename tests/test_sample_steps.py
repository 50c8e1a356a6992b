"""The processor's per-sample chain is a declared, ordered list of registered steps (core/processor/sample_steps.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vlablocks.core.processor.config import StateTokenOptions
from vlablocks.core.processor.pipeline import Processor
from vlablocks.core.processor.sample_steps import default_sample_steps
from vlablocks.core.registry import PROCESSOR_STEPS


@PROCESSOR_STEPS.register("test_shout")
class Shout:
    """A test step: the prompt in capitals, plus a trace of the state it saw (normalized or raw)."""

    @classmethod
    def from_context(cls, context):
        return cls()

    def __call__(self, sample: dict, index: int) -> dict:
        return {**sample, "prompt": sample["prompt"].upper(), "seen_state": np.array(sample["state"])}


@pytest.fixture(scope="module")
def oft():
    from test_processor import policy, samples

    data = samples(4)
    return policy("QwenOFT", data), data


def test_the_checkpoint_declares_its_chain_and_runs_it_as_saved(oft, tmp_path):
    policy, data = oft
    assert policy.processor.config.sample_steps == ("select_cameras", "normalize")
    policy.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor.json").read_text())
    assert saved["sample_steps"] == ["select_cameras", "normalize"]
    reloaded = Processor.from_pretrained(tmp_path)
    assert reloaded.config.sample_steps == ("select_cameras", "normalize")
    np.testing.assert_array_equal(reloaded(data).state.numpy(), policy.processor(data).state.numpy())


def test_a_registered_step_runs_where_the_list_puts_it(oft):
    policy, data = oft
    base = policy.processor
    make = lambda steps: Processor(  # noqa: E731
        dataclasses.replace(base.config, sample_steps=steps), base.hf_processor, base.normalizer.stats
    )
    before = make(("select_cameras", "test_shout", "normalize"))
    after = make(("select_cameras", "normalize", "test_shout"))
    sample = data[0]
    raw = np.asarray(sample["state"], np.float32)

    def run(processor, sample):
        for step in processor.sample_steps:
            sample = step(sample, 0)
        return sample

    shouted_first, shouted_last = run(before, sample), run(after, sample)
    assert shouted_first["prompt"] == shouted_last["prompt"] == sample["prompt"].upper()
    np.testing.assert_array_equal(shouted_first["seen_state"], raw)  # before normalize: robot units
    assert not np.allclose(shouted_last["seen_state"], raw)  # after normalize: normalized units
    # the whole processor runs the chain: the prompt reaches the tokenizer in capitals
    ids = after([sample], targets=False).vlm.input_ids[0].tolist()
    text = base.hf_processor.tokenizer.decode(ids)
    assert sample["prompt"].upper() in text and sample["prompt"] not in text


def test_an_unknown_step_or_a_missing_option_is_a_one_line_error(oft):
    policy, _ = oft
    base = policy.processor
    with pytest.raises(ValueError, match="processor.sample_steps: unknown processor_step 'normalise'; did you mean"):
        Processor(
            dataclasses.replace(base.config, sample_steps=("normalise",)), base.hf_processor, base.normalizer.stats
        )
    with pytest.raises(ValueError, match="step 'fast_answer' needs the processor option 'fast'"):
        Processor(
            dataclasses.replace(base.config, sample_steps=("normalize", "fast_answer")),
            base.hf_processor,
            base.normalizer.stats,
        )


def test_the_default_chain_keeps_the_configured_steps_in_order(oft):
    config = oft[0].processor.config
    assert default_sample_steps(dataclasses.replace(config, state_tokens=StateTokenOptions())) == (
        "select_cameras",
        "normalize",
        "state_tokens",
    )
    with_embodiments = dataclasses.replace(config, embodiments={"a": {}}, state_tokens=StateTokenOptions())
    assert default_sample_steps(with_embodiments) == (
        "resolve_embodiment",
        "select_cameras",
        "normalize",
        "state_tokens",
        "pad_embodiment",
    )
