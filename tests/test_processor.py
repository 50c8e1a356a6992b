"""The processor (vlablocks/processor/): raw samples -> Batch in DataLoader workers, persistence without pickle,
the normalize / unnormalize mirror, one-line errors naming the bad key, serving, and the metadata it owns."""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlablocks.core.batch import Batch
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.processor.config import ProcessorConfig
from vlablocks.core.processor.pipeline import Processor

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
SMALL = {
    "QwenOFT": {"action_model": {"hidden_dim": 64}},
    "QwenLayerwiseFM3D": {
        "action_model": {"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "num_inference_steps": 2},
        "geometric_encoder": {"image_size": 56, "output_dim": 32, "info_sharing_layers": 1},
    },
    "QwenFAST": {"fast": {"vocab_size": 256}},
}
CAMERAS = ["image", "wrist"]
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".npy", ".npz"}


def samples(batch_size: int, seed: int = 0, dataset_name: str = "synthetic", cameras=("image",)) -> list[dict]:
    """Synthetic samples with actions far from [-1, 1], so (un)normalization is visible."""
    out = synthetic_examples(
        PlatformConfig(**PLATFORM), batch_size, seed=seed, dataset_name=dataset_name, camera_keys=list(cameras)
    )
    for sample in out:
        sample["action"] = (sample["action"] * 5.0 + 20.0).astype(np.float32)
    return out


def with_depth(batch: list[dict], seed: int = 0) -> list[dict]:
    """Depth for every camera and intrinsics for the first one only (the others take the default field of view)."""
    rng = np.random.default_rng(seed)
    for sample in batch:
        images = sample["images"]
        sample["depth"] = {
            cam: rng.uniform(0.5, 1.5, image.shape[:2]).astype(np.float32) for cam, image in images.items()
        }
        first = next(iter(images))
        sample["intrinsics"] = {first: np.array([[40.0, 0, 28], [0, 40.0, 28], [0, 0, 1]], np.float32)}
    return batch


def policy(name: str, data: list[dict], norm_stats: dict | None = None, camera_keys=None) -> Policy:
    torch.manual_seed(0)
    experiment = parse_experiment({"platform": PLATFORM, "framework": {"name": name, **SMALL[name]}})
    built = build_policy(experiment, norm_stats or synthetic_norm_stats(data), camera_keys=camera_keys)
    built.processor.fit(data)
    return built.eval()


@pytest.fixture(scope="module")
def oft_data() -> list[dict]:
    return samples(4, cameras=CAMERAS)


@pytest.fixture(scope="module")
def oft(oft_data) -> Policy:
    return policy("QwenOFT", oft_data, camera_keys=CAMERAS)


@pytest.fixture(scope="module")
def spatial_data() -> list[dict]:
    return with_depth(samples(4, seed=1, cameras=CAMERAS))


@pytest.fixture(scope="module")
def spatial(spatial_data) -> Policy:
    return policy("QwenLayerwiseFM3D", spatial_data, camera_keys=CAMERAS)


def assert_same(a, b, where: str = "batch") -> None:
    """Recursive equality of batches: torch.equal on every tensor (dtype and shape included), == elsewhere."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    else:
        assert a == b, where


def tensors_of(value) -> list[str]:
    return [f.name for f in dataclasses.fields(value) if torch.is_tensor(getattr(value, f.name))]


def set_tensors(batch: Batch) -> set[str]:
    names = {f.name for f in dataclasses.fields(batch) if torch.is_tensor(getattr(batch, f.name))}
    for part in ("vlm", "geometry"):
        if getattr(batch, part) is not None:
            names |= {f"{part}.{n}" for n in tensors_of(getattr(batch, part))}
    return names


# ---- (1) the processor is the DataLoader's collate function ------------------------------------------


@pytest.mark.parametrize("which", ["oft", "spatial"])
def test_collate_in_worker_processes_equals_in_process(which, request):
    processor = request.getfixturevalue(which).processor
    data = request.getfixturevalue(f"{which}_data")
    loader = DataLoader(data, batch_size=2, shuffle=False, num_workers=2, collate_fn=processor)
    batches = list(loader)
    assert len(batches) == 2 and all(isinstance(b, Batch) for b in batches)
    for index, batch in enumerate(batches):
        expected = processor(data[2 * index : 2 * index + 2])
        assert_same(batch, expected)
    expected_tensors = {"state", "actions", "action_is_pad", "vlm.input_ids", "vlm.pixel_patches"}
    if which == "spatial":
        expected_tensors |= {"geometry.pixels", "geometry.view_mask", "geometry.points"}
    assert expected_tensors <= set_tensors(batches[0])
    # What a spawned worker receives: the pickled processor (no model, no GPU state) collates identically.
    assert_same(pickle.loads(pickle.dumps(processor))(data[:2]), processor(data[:2]))


# ---- (2) save_pretrained -> from_pretrained ---------------------------------------------------------


@pytest.mark.parametrize("name", ["QwenOFT", "QwenLayerwiseFM3D", "QwenFAST"])
def test_save_and_load_round_trip_without_pickle(name, tmp_path):
    data = with_depth(samples(3, seed=2, cameras=CAMERAS))
    processor = policy(name, data, camera_keys=CAMERAS).processor
    processor.save_pretrained(tmp_path / "processor")
    files = [p for p in (tmp_path / "processor").rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path / "processor").as_posix() for p in files}
    assert {"processor.json", "norm_stats.json"} <= names and any(n.startswith("hf_processor/") for n in names)
    assert ("fast_tokenizer/fast_tokenizer.json" in names) is (name == "QwenFAST")
    assert not [n for n in names if any(n.endswith(s) for s in PICKLE_SUFFIXES)], names
    assert {p.suffix for p in files} <= {".json", ".txt", ".jinja"}, names
    for path in files:  # no pickle stream hiding under another name either (pickle protocol 2+ starts 0x80)
        assert not path.read_bytes().startswith(b"\x80"), path

    loaded = Processor.from_pretrained(tmp_path / "processor")
    assert isinstance(loaded.config, ProcessorConfig) and loaded.config == processor.config
    assert loaded.metadata == processor.metadata
    for batch in (data, [{k: v for k, v in s.items() if k not in ("action", "action_is_pad")} for s in data]):
        assert_same(loaded(batch), processor(batch))
    if name == "QwenFAST":
        assert processor(data).vlm.labels is not None  # the answers were tokenized by the loaded FAST tokenizer


def test_from_pretrained_names_what_is_missing(oft, tmp_path):
    oft.processor.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "norm_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"is not a vlablocks processor: norm_stats.json is missing"):
        Processor.from_pretrained(tmp_path / "p")


def test_fast_path_fitted_for_another_chunk_shape_is_refused(tmp_path):
    data = samples(3)
    fitted = policy("QwenFAST", data).processor
    fitted.fast_answer.fast.save(tmp_path / "fast")
    other = {**PLATFORM, "action_horizon": 6}
    framework = {"name": "QwenFAST", "fast": {"vocab_size": 256, "path": str(tmp_path / "fast")}}
    experiment = parse_experiment({"platform": other, "framework": framework})
    with pytest.raises(ValueError, match=r"fitted for \(action_horizon, action_dim\) = \(4, 3\).*\(6, 3\); refit it"):
        build_policy(experiment, synthetic_norm_stats(data))
    same = parse_experiment({"platform": PLATFORM, "framework": framework})
    loaded = build_policy(same, synthetic_norm_stats(data)).processor
    assert loaded.fast_answer.fast.fitted  # no fit needed: the path's tokenizer is used
    assert_same(loaded(data), fitted(data))


# ---- (3) normalize / unnormalize are mirrors ------------------------------------------------------


def test_postprocess_of_the_normalized_targets_returns_the_raw_actions():
    first, second = samples(4, seed=3, dataset_name="first"), samples(4, seed=4, dataset_name="second")
    for sample in second:
        sample["action"] = (sample["action"] * 3.0 - 50.0).astype(np.float32)
    stats = {**synthetic_norm_stats(first), **synthetic_norm_stats(second)}
    processor = policy("QwenOFT", first + second, norm_stats=stats).processor
    mixed = [first[0], second[1], first[2], second[3]]  # per-sample stats within one batch
    batch = processor(mixed)
    assert batch.dataset_names == ("first", "second", "first", "second")
    raw = np.stack([s["action"] for s in mixed]).astype(np.float64)
    low = np.stack([np.asarray(stats[s["dataset_name"]]["action"]["q01"]) for s in mixed])[:, None]
    high = np.stack([np.asarray(stats[s["dataset_name"]]["action"]["q99"]) for s in mixed])[:, None]
    # q99 mode maps [q01, q99] <-> [-1, 1] (clipped on the way in); written out independently of the normalizer.
    expected = np.clip(2.0 * (raw - low) / (high - low) - 1.0, -1.0, 1.0)
    np.testing.assert_allclose(batch.actions.numpy(), expected, rtol=1e-5, atol=1e-5)
    state_stats = [stats[s["dataset_name"]]["state"] for s in mixed]
    raw_state = np.stack([s["state"] for s in mixed]).astype(np.float64)
    state_low, state_high = (np.stack([np.asarray(s[k]) for s in state_stats]) for k in ("q01", "q99"))
    expected_state = np.clip(2.0 * (raw_state - state_low) / (state_high - state_low) - 1.0, -1.0, 1.0)
    np.testing.assert_allclose(batch.state.numpy(), expected_state, rtol=1e-5, atol=1e-5)

    out = processor.postprocess({"actions": batch.actions}, batch)
    assert out["actions"].dtype == np.float32 and out["normalized_actions"].dtype == np.float32
    np.testing.assert_array_equal(out["normalized_actions"], batch.actions.numpy())
    inside = (raw >= low) & (raw <= high)
    assert inside.mean() > 0.75  # only the extremes past q01 / q99 (16 steps per dimension) are clipped
    np.testing.assert_allclose(out["actions"][inside], raw[inside], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["actions"], np.clip(raw, low, high), rtol=1e-5, atol=1e-4)
    assert np.abs(out["actions"]).mean() > 5.0  # robot units, not the normalized range


# ---- (4) bad samples fail with one line naming the key ---------------------------------------------


def drop(sample: dict, *keys: str) -> dict:
    return {k: v for k, v in sample.items() if k not in keys}


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda s: {**s, "images": {"image": s["images"]["image"]}},
            r"sample\[1\]\['images'\] lacks camera\(s\) \['wrist'\]",
        ),
        (lambda s: drop(s, "images"), r"sample\[1\]\['images'\]: expected a map camera_key"),
        (lambda s: {**s, "prompt": ""}, r"sample\[1\]\['prompt'\]: expected a non-empty instruction string, got ''"),
        (lambda s: drop(s, "prompt"), r"sample\[1\]\['prompt'\]: expected a non-empty instruction string, got None"),
        (lambda s: drop(s, "state"), r"sample\[1\] has no 'state'; this policy takes a float32 \[2\]"),
        (lambda s: {**s, "images": {**s["images"], "wrist": "x.png"}}, r"sample\[1\]\['images'\]\[1\]: expected a PIL"),
    ],
    ids=["missing_camera", "no_images", "empty_prompt", "no_prompt", "no_state", "bad_view"],
)
def test_bad_samples_fail_with_one_line_naming_the_key(bad, message, oft, oft_data):
    with pytest.raises(ValueError, match=f"^{message}") as info:
        oft.processor([oft_data[0], bad(oft_data[1])])
    assert "\n" not in str(info.value)


def test_bad_batches_are_refused(oft, oft_data):
    for bad in ([], (), oft_data[0], None):
        with pytest.raises(ValueError, match="the processor takes a non-empty list of sample dicts"):
            oft.processor(bad)
    with pytest.raises(ValueError, match=r"^sample\[1\]: expected a dict, got str$"):
        oft.processor([oft_data[0], "sample"])


# ---- (5) serving: a dataset sample minus its action ------------------------------------------------


def test_the_served_policy_infers_from_a_dataset_sample_without_action():
    data = samples(2, seed=5)  # one camera "image", like the toy dataset
    served = policy("QwenOFT", data)
    assert served.processor.config.camera_keys == ("image",)
    obs = drop(data[0], "action", "action_is_pad")
    out = served.infer(obs)
    assert set(out) == {"actions"}
    assert out["actions"].dtype == np.float32 and out["actions"].shape == (4, 3)
    assert np.isfinite(out["actions"]).all()
    np.testing.assert_array_equal(out["actions"], served.predict([obs])["actions"][0])
    batch = served.processor([obs])
    assert batch.actions is None and batch.action_is_pad is None and batch.state.shape == (1, 2)
    # Without a dataset_name the processor uses its embodiment's stats (the only dataset here).
    assert served.processor([drop(obs, "dataset_name")]).dataset_names == ("synthetic",)
    with pytest.raises(ValueError, match=r"sample\[0\]\['images'\] lacks camera\(s\) \['image'\]"):
        served.infer({**obs, "images": {"front": obs["images"]["image"]}})


# ---- (6) the metadata comes from the processor config ---------------------------------------------


def test_metadata_comes_from_the_processor_config(spatial, tmp_path):
    config = spatial.processor.config
    assert config.camera_keys == tuple(CAMERAS)
    assert (config.action_horizon, config.action_dim, config.state_dim) == (4, 3, 2)
    assert config.embodiment == "synthetic"
    model = spatial.model
    assert config.geometry == model.geometric_encoder.preprocess_options()
    assert config.view_size == tuple(model.vlm.view_size) and config.patch_size == model.vlm.patch_size
    expected = {
        "action_horizon": 4,
        "action_dim": 3,
        "state_dim": 2,
        "camera_keys": CAMERAS,
        "image_size": config.image_size,
        "embodiment": "synthetic",
        "n_action_steps": 4,  # platform.n_action_steps null: the whole chunk
    }
    assert spatial.processor.metadata == expected
    assert spatial.metadata == expected
    # The metadata follows the config alone: a changed config changes it, the model is not consulted.
    changed = dataclasses.replace(config, camera_keys=("top",), state_dim=5, use_state=False)
    other = Processor(changed, spatial.processor.hf_processor, spatial.processor.normalizer.to_dict())
    assert other.metadata == {**expected, "camera_keys": ["top"], "state_dim": 5}  # the robot's, read or not
    replanning = Processor(
        dataclasses.replace(config, n_action_steps=1),
        spatial.processor.hf_processor,
        spatial.processor.normalizer.to_dict(),
    )
    assert replanning.metadata == {**expected, "n_action_steps": 1}
    with pytest.raises(ValueError, match=r"platform.n_action_steps=5 must lie in \[1, action_horizon=4\]"):
        dataclasses.replace(config, n_action_steps=5)
    spatial.processor.save_pretrained(tmp_path / "processor")
    assert Processor.from_pretrained(tmp_path / "processor").metadata == expected


def test_inference_never_sees_the_targets():
    """Policy.predict processes with targets=False: a FAST answer built from the sample's action would otherwise
    sit in the prompt, and generation would start after it."""
    data = samples(2, seed=3)
    fast = policy("QwenFAST", data)
    with_targets = fast.processor(data)
    without = fast.processor(data, targets=False)
    assert with_targets.vlm.labels is not None and with_targets.actions is not None
    assert without.vlm.labels is None and without.actions is None and without.action_is_pad is None
    assert without.vlm.input_ids.shape[1] < with_targets.vlm.input_ids.shape[1]
    stripped = [{k: v for k, v in s.items() if k not in ("action", "action_is_pad")} for s in data]
    np.testing.assert_array_equal(fast.predict(data)["actions"], fast.predict(stripped)["actions"])


def test_a_multi_dataset_policy_names_the_missing_dataset_name(oft_data):
    first = [{**s, "dataset_name": "first"} for s in oft_data]
    second = [{**s, "dataset_name": "second"} for s in oft_data]
    stats = {**synthetic_norm_stats(first), **synthetic_norm_stats(second)}
    mixed = policy("QwenOFT", first + second, norm_stats=stats, camera_keys=CAMERAS)
    request = {k: v for k, v in oft_data[0].items() if k not in ("action", "action_is_pad", "dataset_name")}
    with pytest.raises(ValueError, match=r"no dataset_name, so the default 'test'.*one of \['first', 'second'\]"):
        mixed.predict([request])
    assert mixed.predict([{**request, "dataset_name": "second"}])["actions"].shape == (1, 4, 3)


def test_check_prompt_uses_the_models_tokenizer(oft):
    """Serving refuses instructions the model would misread: empty, over the token limit, or holding any of its
    special tokens (chat template, vision, and the action queries it added)."""
    processor = oft.processor
    processor.check_prompt("pick up the red block", max_tokens=64)
    for prompt, fragment in [
        ("  ", "empty"),
        ("pick up the red block " * 20, "over this server's limit of 64"),
        ("go <|im_start|> now", "<|im_start|>"),
        ("go <|act_0|>", "<|act_0|>"),
        ("look <|image_pad|>", "<|image_pad|>"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            processor.check_prompt(prompt, max_tokens=64)


def test_the_platforms_n_action_steps_is_served_saved_and_played(oft_data, tmp_path):
    from vlablocks.core.evaluation.rollout import played_per_chunk

    experiment = parse_experiment(
        {"platform": {**PLATFORM, "n_action_steps": 2}, "framework": {"name": "QwenOFT", **SMALL["QwenOFT"]}}
    )
    replanning = build_policy(experiment, synthetic_norm_stats(oft_data), camera_keys=CAMERAS)
    assert replanning.processor.metadata["n_action_steps"] == 2
    assert replanning.metadata["n_action_steps"] == 2
    replanning.processor.save_pretrained(tmp_path / "processor")
    loaded = Processor.from_pretrained(tmp_path / "processor").metadata
    assert played_per_chunk(loaded) == 2
    assert played_per_chunk({"action_horizon": 4}) == 4  # a server that does not send it: the whole chunk
