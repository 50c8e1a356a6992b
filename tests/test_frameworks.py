"""Contract test over every registered policy framework: adding a framework file adds it to this suite.
(Value models, kind "value", have their own contract in tests/test_value_models.py.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vlablocks.core.config import ExperimentConfig, PlatformConfig, parse_experiment
from vlablocks.core.framework.base import policy_names
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.manifest import adopt
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.registry import FRAMEWORKS

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
# Small heads so the suite stays fast; options a framework's head does not have are not passed.
SMALL_HEADS = {
    "flow_matching": {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "num_inference_steps": 4},
    "layerwise_flow_matching": {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "num_inference_steps": 4},
    "l1_regression": {"hidden_dim": 64},
}


def experiment_for(name: str, **options) -> ExperimentConfig:
    """`name` with small heads; `options` replace framework options (e.g. `vlm`, `action_model`, `use_film`)."""
    framework = {"name": name}
    defaults = FRAMEWORKS.get(name).Config()
    head_options = options.pop("action_model", None) or getattr(defaults, "action_model", None)
    if head_options:
        framework["action_model"] = {**head_options, **SMALL_HEADS.get(head_options["name"], {})}
    if hasattr(defaults, "fast"):  # tokenized actions: a small FAST vocabulary
        framework["fast"] = {"vocab_size": 256}
    return parse_experiment({"platform": PLATFORM, "framework": {**framework, **options}})


def scaled_examples(batch_size: int, seed: int = 0) -> list[dict]:
    """Synthetic examples whose actions live far from [-1, 1], so un-normalization is visible."""
    examples = synthetic_examples(PlatformConfig(**PLATFORM), batch_size, seed=seed)
    for e in examples:
        e["action"] = (e["action"] * 5.0 + 20.0).astype(np.float32)
    return examples


def built(name: str, examples: list[dict]) -> Policy:
    """The policy of framework `name` (its model: `.model`), its processor fitted to `examples`."""
    torch.manual_seed(0)
    policy = build_policy(experiment_for(name), norm_stats=synthetic_norm_stats(examples))
    policy.processor.fit(examples)
    return policy


@pytest.mark.parametrize("name", policy_names())
def test_forward_backward_and_predict_shapes(name):
    examples = scaled_examples(2)
    policy = built(name, examples)
    framework = policy.model
    optimizer = torch.optim.SGD(framework.parameters(), lr=1e-2)
    # Two steps: zero-initialised output gates (adaLN-Zero DiTs) pass no gradient upstream at step 0.
    for _ in range(2):
        optimizer.zero_grad()
        loss = framework(policy.processor(examples))["loss"]
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    with_grad = [n for n, p in framework.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(n.startswith("vlm.") for n in with_grad), "no gradient reached the VLM"
    out = policy.predict(examples)
    assert out["actions"].shape == (2, 4, 3) and out["normalized_actions"].shape == (2, 4, 3)
    assert out["actions"].dtype == np.float32 and np.isfinite(out["actions"]).all()


# QwenOFT's optional fp32 layers next to its default (L1 head, proprio projector): the binned head reading the
# state, the DDIM head, FiLM of the vision tokens (alone: without the projector).
BF16_CASES = {name: (name, {}) for name in policy_names()} | {
    "QwenOFT-binned": ("QwenOFT", {"action_model": {"name": "binned", "use_state": True}}),
    "QwenOFT-diffusion": ("QwenOFT", {"action_model": {"name": "diffusion"}}),
    "QwenOFT-film": ("QwenOFT", {"use_film": True, "use_proprio": False}),
}


@pytest.mark.parametrize(("name", "options"), list(BF16_CASES.values()), ids=list(BF16_CASES))
def test_predict_with_a_bf16_vlm_and_fp32_heads(name, options):
    """A bf16 VLM feeding the fp32 heads and projectors outside autocast: how `vlablocks bench --device cuda`
    (and a GPU server) calls Policy.predict. Each fp32 layer must read its input in its own dtype."""
    examples = scaled_examples(2)
    vlm = {**FRAMEWORKS.get(name).Config().vlm, "dtype": "bfloat16"}
    torch.manual_seed(0)
    policy = build_policy(experiment_for(name, vlm=vlm, **options), synthetic_norm_stats(examples))
    policy.processor.fit(examples)
    assert next(policy.model.vlm.parameters()).dtype == torch.bfloat16
    head = getattr(policy.model, "action_model", None)  # QwenFAST decodes tokens: no head
    assert head is None or next(head.parameters()).dtype == torch.float32
    out = policy.predict(examples)
    assert out["actions"].shape == (2, 4, 3) and np.isfinite(out["actions"]).all()


@pytest.mark.parametrize("name", policy_names())
def test_predictions_are_unnormalized_with_the_dataset_stats(name):
    examples = scaled_examples(2)
    out = built(name, examples).predict(examples)
    stats = synthetic_norm_stats(examples)["synthetic"]["action"]
    low, high = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    # q99 mode maps [q01, q99] <-> [-1, 1]; the inverse written out independently of the normalizer.
    expected = (out["normalized_actions"] + 1.0) / 2.0 * (high - low) + low
    np.testing.assert_allclose(out["actions"], expected, rtol=1e-5, atol=1e-4)
    assert np.abs(out["actions"]).mean() > 5.0  # robot units, not the normalized range


@pytest.mark.parametrize("name", policy_names())
def test_save_load_gives_identical_predictions(name, tmp_path):
    examples = scaled_examples(2)
    policy = built(name, examples)
    before = policy.predict(examples, seed=3)
    policy.save_pretrained(tmp_path / "ckpt")
    assert {"model.safetensors", "config.yaml", "processor"} <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert type(loaded.model) is type(policy.model)
    assert loaded.processor.config == policy.processor.config
    after = loaded.predict(examples, seed=3)
    np.testing.assert_array_equal(before["actions"], after["actions"])


@pytest.mark.parametrize("name", [n for n in policy_names() if not hasattr(FRAMEWORKS.get(n).Config(), "fast")])
def test_a_checkpoint_written_before_processors_still_loads(name, tmp_path):
    """The old layout: norm_stats.json beside the weights, no processor/ and no manifest (adopted explicitly). (Frameworks with FAST
    tokens postdate it: their fitted FAST tokenizer lives only in processor/.)"""
    examples = scaled_examples(2)
    policy = built(name, examples)
    before = policy.predict(examples, seed=3)
    policy.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "processor" / "norm_stats.json").rename(tmp_path / "ckpt" / "norm_stats.json")
    shutil.rmtree(tmp_path / "ckpt" / "processor")
    (tmp_path / "ckpt" / "manifest.json").unlink()
    adopt(tmp_path / "ckpt")  # its owner vouches for it once: `python -m vlablocks.core.manifest --adopt DIR`
    after = Policy.from_pretrained(tmp_path / "ckpt").predict(examples, seed=3)
    np.testing.assert_array_equal(before["actions"], after["actions"])


@pytest.mark.parametrize("name", policy_names())
def test_overfits_eight_samples(name):
    examples = scaled_examples(8, seed=1)
    policy = built(name, examples)
    framework = policy.model
    optimizer = torch.optim.AdamW([p for p in framework.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    batch = policy.processor(examples)
    for _ in range(150):
        loss = framework(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < first / 10, f"{name}: loss {first:.4f} -> {last:.4f} did not fall 10x"
