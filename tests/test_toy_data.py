"""make-toy-data writes a genuine LeRobot v3 dataset whose samples replay the recorded expert episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deployment.client.protocol import ERROR_TYPES, ProtocolError
from vlablocks.cli.main import main as cli
from vlablocks.core.build import build as build_component
from vlablocks.core.config import PlatformConfig, load_config
from vlablocks.core.dataloader.sample import ERROR_CODES, SampleError, validate_sample
from vlablocks.core.registry import DATASETS
from vlablocks.core.serving.server import validate_observation
from vlablocks.tools.toy.toy import ToyTabletopEnv

REPO = Path(__file__).resolve().parent.parent
EPISODES, SEED = 6, 0


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """Tiny toy dataset written once per session through the CLI (shared with tests/test_data_*.py)."""
    root = tmp_path_factory.getbasetemp() / "toy_data"
    if not (root / "meta" / "info.json").is_file():
        assert cli(["make-toy-data", "--out", str(root), "--episodes", str(EPISODES), "--seed", str(SEED)]) == 0
    return root


def build(root: Path, config: str = "configs/datasets/toy_two_views.yaml", *overrides: str):
    cfg = load_config(REPO / config, [f"dataset.root={root}", *overrides])
    return build_component(DATASETS, cfg.dataset, platform=cfg.platform, seed=cfg.seed), cfg.platform


def check(sample: dict, dataset, platform: PlatformConfig) -> None:
    """The training-sample contract with this dataset's cameras and the platform's dims."""
    shape = (platform.action_horizon, platform.action_dim)
    validate_sample(sample, camera_keys=dataset.camera_keys, state_dim=platform.state_dim, action_shape=shape)


def replay(seed: int) -> list[dict]:
    """Independent re-run of one expert episode with both cameras: observation + action per step."""
    env = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["top", "wrist"]))
    obs, steps, done = env.reset(seed=seed), [], False
    while not done:
        action = env.expert_action()
        steps.append({**obs, "action": action})
        obs, _, done, _ = env.step(action)
    return steps


def test_cli_writes_a_lerobot_v3_dataset_that_lerobot_reads(toy_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((toy_root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == EPISODES
    lengths = [len(replay(SEED + e)) for e in range(EPISODES)]
    assert info["total_frames"] == sum(lengths)
    dataset = LeRobotDataset("local/toy_data", root=toy_root)
    assert len(dataset) == sum(lengths)
    assert {"observation.images.top", "observation.images.wrist", "observation.state", "action"} <= set(
        dataset.features
    )
    assert dataset.meta.depth_keys == ["observation.depth.top", "observation.depth.wrist"]


def test_every_sample_keeps_the_contract(toy_root):
    dataset, platform = build(toy_root)
    for i in range(len(dataset)):
        sample = dataset[i]
        check(sample, dataset, platform)
    assert list(sample["images"]) == list(sample["depth"]) == list(sample["intrinsics"]) == ["top", "wrist"]
    assert dataset.camera_keys == ["top", "wrist"] and sample["dataset_name"] == "toy" and sample["embodiment"] == "toy"


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs/datasets").glob("toy*.yaml")))
def test_shipped_toy_configs_build_and_give_the_fields_they_name(toy_root, config):
    prompts = f"dataset.prompt_augmentation.path={REPO / 'configs/experiments/prompts/toy.yaml'}"
    dataset, platform = build(toy_root, f"configs/datasets/{config}", *([prompts] if "prompt" in config else []))
    sample = dataset[len(dataset) - 1]
    check(sample, dataset, platform)
    assert list(sample["images"]) == [key.split(".")[-1] for key in dataset.config.camera_keys]
    assert ("depth" in sample) == bool(dataset.config.depth_keys)
    assert ("intrinsics" in sample) == bool(dataset.config.intrinsics_keys)


@pytest.mark.parametrize("episode", [0, EPISODES - 1])
def test_chunks_line_up_with_the_recorded_episode_and_pad_at_its_end(toy_root, episode):
    dataset, platform = build(toy_root)
    recorded = replay(SEED + episode)
    indices = dataset.episode_indices(episode)
    assert len(indices) == len(recorded)
    actions = np.stack([step["action"] for step in recorded])
    for t, index in enumerate(indices):
        sample, step = dataset[index], recorded[t]
        assert sample["prompt"] == step["prompt"]
        np.testing.assert_array_equal(sample["state"], step["state"])
        for view in ("top", "wrist"):
            np.testing.assert_array_equal(sample["images"][view], step["images"][view])  # lossless PNG
            np.testing.assert_allclose(sample["depth"][view], step["depth"][view], atol=1e-6)
            np.testing.assert_array_equal(sample["intrinsics"][view], step["intrinsics"][view])
        valid = min(platform.action_horizon, len(recorded) - t)
        np.testing.assert_array_equal(sample["action"][:valid], actions[t : t + valid])
        assert sample["action_is_pad"].tolist() == [k >= valid for k in range(platform.action_horizon)]
    assert dataset[indices[-1]]["action_is_pad"][1:].all()  # the last frame has one real action


def test_cli_refuses_to_overwrite_without_the_flag(toy_root, capsys):
    assert cli(["make-toy-data", "--out", str(toy_root), "--episodes", "1"]) == 2
    assert "already exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err


# ---- one vocabulary: a dataset sample minus its action is a server request ----------------------------


def policy_metadata(dataset, platform: PlatformConfig) -> dict:
    return {"camera_keys": dataset.camera_keys, "state_dim": platform.state_dim}


def test_a_dataset_sample_minus_its_action_is_a_valid_server_request(toy_root):
    dataset, platform = build(toy_root)
    sample = dataset[3]
    request = {k: v for k, v in sample.items() if k not in ("action", "action_is_pad")}
    checked = validate_observation(request, policy_metadata(dataset, platform))
    assert list(checked["images"]) == ["top", "wrist"] and checked["prompt"] == sample["prompt"]
    np.testing.assert_array_equal(checked["state"], sample["state"])
    assert validate_observation(request, policy_metadata(dataset, platform))["dataset_name"] == "toy"
    with pytest.raises(ProtocolError, match="unknown request key"):  # a training sample is not a request
        validate_observation(sample, policy_metadata(dataset, platform))
    env_obs = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["top", "wrist"])).reset(seed=0)
    validate_observation(env_obs, policy_metadata(dataset, platform))  # and so is an env observation


@pytest.mark.parametrize(
    "change, code, message",
    [
        (lambda s: s.pop("prompt"), "missing_key", "missing key(s) ['prompt']"),
        (lambda s: s["images"].pop("wrist"), "wrong_views", "'images' has 1 view(s) ['top']; expected 2 view(s)"),
        (
            lambda s: s["images"].update(top=s["images"]["top"].astype(np.float32)),
            "wrong_dtype",
            "images['top'] has dtype float32; expected uint8 (H, W, 3)",
        ),
        (
            lambda s: s["depth"].update(wrist=s["depth"]["wrist"][:5]),
            "wrong_shape",
            "depth['wrist'] has shape (5, 112); expected (112, 112) float32",
        ),
        (
            lambda s: s["intrinsics"].pop("top"),
            "wrong_views",
            "'intrinsics' has 1 view(s) ['wrist']; expected 2 view(s) ['top', 'wrist']",
        ),
        (lambda s: s.update(state=s["state"][:1]), "wrong_shape", "'state' has shape (1,); expected (2,) float32"),
        (lambda s: s.update(prompt=None), "wrong_type", "'prompt' must be a string, got NoneType"),
    ],
)
def test_a_bad_sample_gets_one_line_naming_the_key_on_both_sides(toy_root, change, code, message):
    dataset, platform = build(toy_root)
    sample = dataset[0]
    change(sample)
    with pytest.raises(SampleError) as dataset_side:
        check(sample, dataset, platform)
    request = {k: v for k, v in sample.items() if k not in ("action", "action_is_pad")}
    with pytest.raises(ProtocolError) as server_side:
        validate_observation(request, policy_metadata(dataset, platform))
    for error in (dataset_side.value, server_side.value):
        assert (getattr(error, "code", None) or error.type) == code and message in error.message
        assert "\n" not in str(error) and str(error) == f"{code}: {error.message}"


def test_training_samples_need_their_action_and_tags_requests_do_not():
    images = {"top": np.zeros((4, 6, 3), np.uint8)}
    request = {"images": images, "prompt": "go", "state": np.zeros(2, np.float32), "action": "ignored"}
    validate_sample(request, camera_keys=["top"], state_dim=2)
    with pytest.raises(SampleError, match=r"missing key\(s\) \['action_is_pad', 'dataset_name', 'embodiment'\]"):
        validate_sample(request, camera_keys=["top"], state_dim=2, action_shape=(3, 2))
    sample = {**request, "action": np.zeros((3, 2), np.float64), "action_is_pad": np.zeros(3, bool)}
    sample.update(dataset_name="toy", embodiment="toy")
    with pytest.raises(SampleError, match=r"'action' has dtype float64; expected float32 \(3, 2\)"):
        validate_sample(sample, action_shape=(3, 2))
    assert set(ERROR_CODES) <= set(ERROR_TYPES)  # the server answers these codes as they are
