"""make-metaworld-data: the experts' demonstrations round-trip through LeRobotDataset and the project's loader,
failed demonstrations are dropped and counted, and data seeds stay clear of evaluation's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlablocks.core.build import build as build_component
from vlablocks.core.config import load_config
from vlablocks.core.dataloader.sample import validate_sample
from vlablocks.core.registry import DATASETS, EVAL_ENVS
from vlablocks.tools.metaworld import metaworld_dataset
from vlablocks.tools.metaworld.metaworld_dataset import EpisodeRecord, check_data_seeds, write_metaworld_dataset

pytest.importorskip("metaworld", reason="the sim extra (pip install -e .[sim]) brings metaworld")

REPO = Path(__file__).resolve().parent.parent
SIZE, EPISODES, SEED = 32, 2, 0


@pytest.fixture(scope="module")
def reach_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("metaworld") / "reach"
    write_metaworld_dataset(root, ["reach-v3"], EPISODES, SEED, image_size=SIZE, max_steps=150, progress=False)
    return root


def test_lerobot_reads_the_demonstrations_back_and_they_replay_to_success(reach_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    protocol = json.loads((reach_root / "meta" / "metaworld.json").read_text())
    assert protocol["kept"] == EPISODES and protocol["dropped"] == 0 and protocol["seeds"] == [SEED, SEED + 1]
    dataset = LeRobotDataset("local/reach", root=reach_root)
    assert dataset.meta.info["codebase_version"] == "v3.0" and dataset.meta.total_episodes == EPISODES
    lengths = [r["steps"] for r in protocol["episodes"]]
    assert len(dataset) == sum(lengths) and dataset.fps == 80
    first = dataset[0]
    assert tuple(first["observation.images.corner2"].shape) == (3, SIZE, SIZE)
    assert tuple(first["observation.state"].shape) == (4,) and tuple(first["action"].shape) == (4,)
    assert first["task"] == "Reach a goal position"
    # episode 0's recorded actions, played open-loop from the same seed, reach the goal again
    env = build_component(EVAL_ENVS, {"name": "metaworld", "task": "reach-v3", "image_size": SIZE})
    try:
        obs = env.reset(seed=SEED)
        np.testing.assert_allclose(first["observation.state"].numpy(), obs["state"], atol=1e-6)
        for index in range(lengths[0]):
            frame = dataset[index]
            _, _, done, info = env.step(frame["action"].numpy(), observe=False)
            assert bool(frame["next.done"].item()) == done
        assert info["success"] and bool(dataset[lengths[0] - 1]["next.success"].item())
    finally:
        env.close()


def test_the_projects_loader_gives_contract_samples_from_the_shipped_config(reach_root):
    cfg = load_config(REPO / "configs/datasets/metaworld_mt10.yaml", [f"dataset.root={reach_root}"])
    dataset = build_component(DATASETS, cfg.dataset, platform=cfg.platform, seed=cfg.seed)
    sample = dataset[0]
    platform = cfg.platform
    validate_sample(
        sample,
        camera_keys=["corner2"],
        state_dim=platform.state_dim,
        action_shape=(platform.action_horizon, platform.action_dim),
    )
    assert sample["prompt"] == "Reach a goal position" and sample["embodiment"] == "metaworld"
    assert sample["images"]["corner2"].shape == (SIZE, SIZE, 3)


def test_failed_demonstrations_are_dropped_and_counted(tmp_path, monkeypatch):
    real = metaworld_dataset.record_demo

    def fail_seed_1(env, seed):
        frames, success = real(env, seed)
        return frames, success and seed != 1

    monkeypatch.setattr(metaworld_dataset, "record_demo", fail_seed_1)
    protocol = write_metaworld_dataset(tmp_path / "d", ["reach-v3"], 3, 0, image_size=SIZE, progress=False)
    assert (protocol["kept"], protocol["dropped"]) == (2, 1)
    assert protocol["per_task"]["reach-v3"]["dropped_seeds"] == [1]
    info = json.loads((tmp_path / "d" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2


def test_summary_counts_per_task():
    records = [EpisodeRecord("a", 0, True, 10), EpisodeRecord("a", 1, False, 150), EpisodeRecord("b", 0, True, 30)]
    protocol = metaworld_dataset.summarize(records, ["a", "b"], 0, 2, 32, 150)
    assert protocol["per_task"]["a"] == {"kept": 1, "dropped": 1, "dropped_seeds": [1], "mean_steps": 10.0}
    assert (protocol["kept"], protocol["dropped"]) == (2, 1)


def test_data_seeds_never_reach_evaluations():
    check_data_seeds(0, 1000)  # 0..999: below eval's first seed, 1000
    check_data_seeds(101_000, 50)
    with pytest.raises(
        ValueError, match=r"data seeds 990..1009 overlap the evaluation seeds 1000..100999; use --seed 0"
    ):
        check_data_seeds(990, 20)
    with pytest.raises(ValueError, match="overlap"):
        check_data_seeds(0, 1001)


def test_a_lerobot_act_checkpoint_runs_in_the_same_evaluation(reach_root, tmp_path, capsys):
    """A random-init ACT saved as lerobot_train saves it (policy + processors), evaluated by `eval --policy lerobot:`."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_policy_config, make_pre_post_processors

    from vlablocks.cli.main import main as cli
    from vlablocks.tools.metaworld.lerobot_peer import LeRobotPolicyAdapter

    torch.manual_seed(0)
    meta = LeRobotDatasetMetadata("local/reach", root=reach_root)
    config = make_policy_config(
        "act", device="cpu", pretrained_backbone_weights=None, push_to_hub=False, dim_model=64, n_action_steps=8
    )
    policy = make_policy(config, ds_meta=meta)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=meta.stats)
    checkpoint = tmp_path / "act"
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(checkpoint)
    peer = LeRobotPolicyAdapter(checkpoint)
    assert peer.metadata["camera_keys"] == ["corner2"] and peer.metadata["state_dim"] == 4
    obs = {"images": {"corner2": np.zeros((SIZE, SIZE, 3), np.uint8)}, "state": np.zeros(4), "prompt": "Reach"}
    peer.reset()
    actions = peer.infer(obs)["actions"]
    assert actions.shape == (1, 4) and np.isfinite(actions).all()
    out = tmp_path / "eval"
    command = ["eval", "--env", "metaworld", "--policy", f"lerobot:{checkpoint}", "--tasks", "reach"]
    assert cli([*command, "--episodes-per-task", "1", "--no-control", "--out", str(out), "--image_size=32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["episodes"] == 1 and summary["tasks"]["reach-v3"]["mean_steps"] > 0
    with pytest.raises(FileNotFoundError, match="not a LeRobot policy checkpoint"):
        LeRobotPolicyAdapter(tmp_path)
