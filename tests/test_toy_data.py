"""make-toy-data writes a genuine LeRobot v3 dataset whose samples replay the recorded expert episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlablocks.cli import main as cli
from vlablocks.config import PlatformConfig, load_config, to_dataclass
from vlablocks.dataloader.sample import validate_sample
from vlablocks.envs.toy import ToyTabletopEnv
from vlablocks.registry import DATASETS

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
    platform = to_dataclass(PlatformConfig, cfg["platform"])
    return DATASETS.build(cfg["dataset"], platform=platform, seed=cfg["seed"]), platform


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
        validate_sample(sample, platform)
    assert len(sample["image"]) == 2 and sample["dataset_name"] == "toy" and sample["embodiment"] == "toy"


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs/datasets").glob("toy*.yaml")))
def test_shipped_toy_configs_build_and_give_the_fields_they_name(toy_root, config):
    prompts = f"dataset.prompt_augmentation.path={REPO / 'configs/prompts/toy.yaml'}"
    dataset, platform = build(toy_root, f"configs/datasets/{config}", *([prompts] if "prompt" in config else []))
    sample = dataset[len(dataset) - 1]
    validate_sample(sample, platform)
    assert len(sample["image"]) == len(dataset.config.camera_keys)
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
        assert sample["lang"] == step["lang"]
        np.testing.assert_array_equal(sample["state"], step["state"])
        for view in range(2):
            np.testing.assert_array_equal(sample["image"][view], step["image"][view])  # lossless PNG
            np.testing.assert_allclose(sample["depth"][view], step["depth"][view], atol=1e-6)
        np.testing.assert_array_equal(sample["intrinsics"], step["intrinsics"])
        valid = min(platform.action_horizon, len(recorded) - t)
        np.testing.assert_array_equal(sample["action"][:valid], actions[t : t + valid])
        assert sample["action_is_pad"].tolist() == [k >= valid for k in range(platform.action_horizon)]
    assert dataset[indices[-1]]["action_is_pad"][1:].all()  # the last frame has one real action


def test_cli_refuses_to_overwrite_without_the_flag(toy_root, capsys):
    assert cli(["make-toy-data", "--out", str(toy_root), "--episodes", "1"]) == 2
    assert "already exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
