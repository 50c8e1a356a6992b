"""Value models end to end: the contract of every model in VALUE_MODELS, mixed-quality toy data with success
flags, returns at load time, `vlablocks value` and the value-guided dataset that reads its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from vlablocks.cli.main import main as cli
from vlablocks.core.build import build
from vlablocks.core.config import ConfigError, PlatformConfig, parse_experiment
from vlablocks.core.dataloader.returns import discounted_returns
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.registry import DATASETS, FRAMEWORKS, MODELS
from vlablocks.core.registry import VALUE_MODELS as VALUE_REGISTRY
from vlablocks.methods.value.metrics import roc_auc
from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_behaviours import assign_behaviours, parse_mix

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
TOY = PlatformConfig(name="toy", action_horizon=4, action_dim=2, state_dim=2)
VALUE_MODELS = VALUE_REGISTRY.names()
BEHAVIOURS = "expert,random,wrong"


def value_model(name: str, inputs: str, loss: str, platform: dict = PLATFORM):
    options = {"name": name, "inputs": inputs, "value_head": {"loss": loss, "hidden_dim": 64}}
    return parse_experiment({"platform": platform, "framework": options})


def examples_with_returns(count: int, seed: int = 0) -> list[dict]:
    examples = synthetic_examples(PlatformConfig(**PLATFORM), count, seed=seed)
    for i, example in enumerate(examples):
        example["return"] = np.float32(i / max(count - 1, 1))
    return examples


def predict_values(policy: Policy, samples: list[dict]) -> np.ndarray:
    """Raw samples (with their `action` chunk for Q) -> the value model's values [B]."""
    return policy.model.predict_value(policy.processor(samples))


@pytest.mark.parametrize("name", VALUE_MODELS)
@pytest.mark.parametrize("inputs", ["state", "state_action"])
@pytest.mark.parametrize("loss", ["mse", "hl_gauss"])
def test_value_model_fits_returns_and_round_trips_a_checkpoint(name, inputs, loss, tmp_path):
    examples = examples_with_returns(8)
    torch.manual_seed(0)
    policy = build_policy(value_model(name, inputs, loss), synthetic_norm_stats(examples))
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = policy.processor(examples)
    for _ in range(120):
        loss_value = model(batch)["loss"]
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
    predicted = predict_values(policy, examples)
    targets = np.array([e["return"] for e in examples])
    assert predicted.shape == (8,) and np.abs(predicted - targets).max() < 0.1, predicted
    policy.save_pretrained(tmp_path / "ckpt")
    assert "name: " + name in (tmp_path / "ckpt" / "config.yaml").read_text()  # framework: {name: ...}
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded.model, VALUE_REGISTRY.get(name))
    np.testing.assert_array_equal(predict_values(loaded, examples), predicted)
    with pytest.raises(ValueError, match="value model, not a policy"):
        loaded.predict(examples)


def test_q_reads_the_action_chunk_and_v_does_not():
    examples = examples_with_returns(2)
    moved = [{**e, "action": (e["action"] + 0.5).astype(np.float32)} for e in examples]
    torch.manual_seed(0)
    q = build_policy(value_model("QwenValue", "state_action", "mse"), synthetic_norm_stats(examples))
    torch.manual_seed(0)
    v = build_policy(value_model("QwenValue", "state", "mse"), synthetic_norm_stats(examples))
    assert not np.allclose(predict_values(q, examples), predict_values(q, moved))
    np.testing.assert_array_equal(predict_values(v, examples), predict_values(v, moved))


def test_q_with_a_bf16_vlm_predicts_outside_autocast():
    """A bf16 VLM feeding the fp32 state projector and action projector (no autocast, as on a GPU)."""
    examples = examples_with_returns(2)
    options = {"name": "QwenValue", "inputs": "state_action", "vlm": {"name": "qwen2_5_vl", "dtype": "bfloat16"}}
    torch.manual_seed(0)
    q = build_policy(parse_experiment({"platform": PLATFORM, "framework": options}), synthetic_norm_stats(examples))
    assert next(q.model.vlm.parameters()).dtype == torch.bfloat16 and q.model.proprio.weight.dtype == torch.float32
    values = predict_values(q, examples)
    assert values.shape == (2,) and np.isfinite(values).all()


def test_training_without_returns_names_the_option():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 2)
    policy = build_policy(value_model("QwenValue", "state", "hl_gauss"), synthetic_norm_stats(examples))
    with pytest.raises(ValueError, match="set dataset.returns"):
        policy.model(policy.processor(examples))


def test_behaviour_mix_is_split_exactly_and_bad_mixes_are_refused():
    names, shares = parse_mix("expert,noisy,random,wrong", "0.3,0.2,0.25,0.25")
    assignment = assign_behaviours(1000, shares, seed=0)
    assert np.bincount(assignment).tolist() == [300, 200, 250, 250]
    assert assignment[:20].tolist() != sorted(assignment[:20].tolist())  # shuffled, not in blocks
    with pytest.raises(ValueError, match="unknown behaviour"):
        parse_mix("expert,lazy", None)
    with pytest.raises(ValueError, match="needs 2 non-negative shares"):
        parse_mix("expert,random", "1")


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "toy_mixed"
    args = ["make-toy-data", "--out", str(root), "--episodes", "6", "--seed", "5", "--image_size", "56"]
    assert cli([*args, "--policy", BEHAVIOURS, "--mix", "1,1,1"]) == 0
    return root


def mixed_dataset(root: Path, gamma: float = 0.9):
    return build(DATASETS, mixed_section(root, gamma), platform=TOY)


def test_mixed_data_records_each_behaviour_with_its_outcome_and_returns_at_load_time(mixed_root):
    dataset = mixed_dataset(mixed_root)
    table = dataset.lerobot.hf_dataset.with_format("numpy")[:]
    episodes = table["episode_index"].reshape(-1)
    behaviour = table["behaviour_policy"].reshape(-1)
    assert json.loads((mixed_root / "meta" / "behaviour_policies.json").read_text()) == BEHAVIOURS.split(",")
    env = ToyTabletopEnv()
    for episode in np.unique(episodes):
        rows = episodes == episode
        success = bool(table["next.success"].reshape(-1)[rows].any())
        name = BEHAVIOURS.split(",")[behaviour[rows][0]]
        length = int(rows.sum())
        # replay: the outcome and the length follow from the env; the expert always succeeds
        assert table["next.done"].reshape(-1)[rows].tolist() == [False] * (length - 1) + [True]
        assert success or length == env.config.max_steps
        if name == "expert":
            assert success
        expected = (0.9 ** np.arange(length - 1, -1, -1)) if success else np.zeros(length)
        np.testing.assert_allclose(dataset.returns[rows], expected, rtol=1e-6)
        assert float(dataset[int(np.flatnonzero(rows)[0])]["return"]) == pytest.approx(expected[0])
    assert sorted(set(behaviour.tolist())) == [0, 1, 2]


def test_value_command_writes_aligned_values_that_value_guided_bc_samples_by_advantage(mixed_root, tmp_path):
    examples = synthetic_examples(TOY, 4, dataset_name="toy", camera_keys=["top"])
    experiment = parse_experiment(
        {"platform": vars(TOY), "framework": {"name": "QwenValue", "value_head": {"hidden_dim": 32}}}
    )
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples), camera_keys=["top"])
    policy.save_pretrained(tmp_path / "v")
    out = tmp_path / "values"
    assert cli(["value", "--ckpt", str(tmp_path / "v"), "--data", str(mixed_root), "--out", str(out)]) == 0
    values = load_file(str(out / "values.safetensors"))
    summary = json.loads((out / "summary.json").read_text())
    dataset = mixed_dataset(mixed_root)
    np.testing.assert_array_equal(values["index"], dataset.frame_indices())
    np.testing.assert_allclose(values["return"], dataset.returns)
    np.testing.assert_allclose(values["value"][:3], predict_values(policy, [dataset[i] for i in range(3)]), atol=1e-5)
    first = np.r_[True, values["episode_index"][1:] != values["episode_index"][:-1]]
    assert summary["first_frame_auc"] == pytest.approx(roc_auc(values["value"][first], values["return"][first] > 0))
    assert (out / "calibration.png").stat().st_size > 1000 and summary["episodes"] == 6

    section = {"name": "value_guided", "dataset": mixed_section(mixed_root), "values": str(out / "values.safetensors")}
    guided = build(DATASETS, section, platform=TOY, seed=3)
    advantages = dataset.returns - values["value"]
    np.testing.assert_allclose(guided.advantages, advantages, rtol=1e-6)
    keep = advantages > 0
    np.testing.assert_allclose(guided.probabilities, keep / keep.sum())
    picks = np.array([guided.pick((0, i)) for i in range(4000)])
    assert keep[picks].all()  # filtered BC never draws a frame at or below the threshold
    frequencies = np.bincount(picks, minlength=len(keep))[keep] / len(picks)
    assert np.abs(frequencies - 1 / keep.sum()).max() < 0.02
    weighted = build(DATASETS, {**section, "mode": "weight", "beta": 0.5}, platform=TOY, seed=3)
    expected = np.minimum(np.exp(advantages / 0.5), 20.0)
    np.testing.assert_allclose(weighted.probabilities, expected / expected.sum(), rtol=1e-5)
    sample = guided[(0, 7)]
    assert sample["prompt"] and sample["action"].shape == (4, 2)
    with pytest.raises(ConfigError, match="same dataset.returns.gamma"):
        build(DATASETS, {**section, "dataset": mixed_section(mixed_root, gamma=0.5)}, platform=TOY)


def mixed_section(root: Path, gamma: float = 0.9) -> dict:
    return {
        "name": "lerobot",
        "root": str(root),
        "dataset_name": "toy",
        "camera_keys": ["observation.images.top"],
        "returns": {"source": "outcome", "key": "next.success", "gamma": gamma},
    }


def test_returns_on_a_dataset_without_outcomes_name_the_fix(toy_dataset):
    section = {**mixed_section(toy_dataset), "returns": {"source": "reward", "key": "next.reward_missing"}}
    with pytest.raises(ConfigError, match="has no column 'next.reward_missing'"):
        build(DATASETS, section, platform=TOY)


def test_discounted_returns_of_the_recorded_rewards_equal_the_outcome_returns(mixed_root):
    dataset = mixed_dataset(mixed_root, gamma=0.8)
    table = dataset.lerobot.hf_dataset.with_format("numpy")[:]
    from_rewards = discounted_returns(table["next.reward"].reshape(-1), table["episode_index"].reshape(-1), 0.8)
    np.testing.assert_allclose(dataset.returns, from_rewards, rtol=1e-6)


def test_serving_or_evaluating_a_value_model_is_refused_in_one_line(tmp_path):
    examples = examples_with_returns(2)
    policy = build_policy(value_model("QwenValue", "state", "mse"), synthetic_norm_stats(examples))
    policy.save_pretrained(tmp_path / "v")
    with pytest.raises(ValueError, match="predicts no actions"):
        from vlablocks.core.serving.policy import load_policy

        load_policy(tmp_path / "v")
    assert (
        cli(["eval", "--env", "toy", "--ckpt", str(tmp_path / "v"), "--episodes", "1", "--out", str(tmp_path / "e")])
        == 2
    )
    assert not (tmp_path / "e").exists()


def test_value_models_have_their_own_registry_and_configs_name_them_under_framework(tmp_path):
    assert VALUE_MODELS == ["QwenValue", "StateValueMLP"]
    assert not set(VALUE_MODELS) & set(FRAMEWORKS.names())  # no policy registry entry predicts no actions
    assert set(VALUE_MODELS) <= set(MODELS.names()) and set(FRAMEWORKS.names()) <= set(MODELS.names())
    # the `framework:` section of configs and checkpoints names a value model as before
    experiment = value_model("StateValueMLP", "state", "mse")
    assert experiment.framework["name"] == "StateValueMLP" and experiment.framework["hidden_dim"] == 256
    with pytest.raises(ConfigError, match="unknown model 'QwenValu'; did you mean 'QwenValue'"):
        parse_experiment({"platform": PLATFORM, "framework": {"name": "QwenValu"}})
    assert cli(["list", "value_models"]) == 0
