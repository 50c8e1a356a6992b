"""`vlablocks rl` on its real path: a tiny binned QwenOFT checkpoint, batched toy rollouts, GRPO updates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.actors import SamplingActor
from vlablocks.core.evaluation.rollout import Episode, run_episodes
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.train import train
from vlablocks.methods.rl.config import RLConfig
from vlablocks.methods.rl.grpo import fill_with_informative_groups
from vlablocks.methods.rl.loop import (
    _degenerate_groups,
    _relative_change,
    _rollout_round,
    _trainable_snapshot,
    ended_on_the_named_block,
    rl,
)
from vlablocks.methods.rl.probe import exploration_stats

PLATFORM = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}  # the toy env's
BINNED = {
    "name": "QwenOFT",
    "vlm": {"name": "qwen2_5_vl", "image_size": 56},
    "action_model": {"name": "binned", "num_bins": 16, "hidden_dim": 32, "num_blocks": 1},
}
SHORT_TOY = {"name": "toy", "max_steps": 6}  # the toy task with short episodes
ONE_STEP_TOY = {"name": "toy", "max_steps": 1}  # every start is > 2 success radii from the target: nobody succeeds


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft") / "run"
    platform = PlatformConfig(**PLATFORM)
    data = synthetic_examples(platform, 8, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"])
    trainer = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "save_every": 100}
    experiment = parse_experiment(
        {"run_dir": str(run_dir), "seed": 3, "platform": PLATFORM, "framework": BINNED, "trainer": trainer}
    )
    return train(experiment, dataset=data)["checkpoint"]


def rl_experiment(run_dir, init_ckpt, **options):
    options = {
        "init_ckpt": str(init_ckpt),
        "iterations": 2,
        "groups_per_iteration": 2,
        "group_size": 4,
        "minibatch_size": 8,
        "learning_rate": 1e-3,
        "env": SHORT_TOY,
        "entropy_coef": 0.01,  # the update moves the weights even when no group is informative
        "dynamic_sampling": False,
        "eval_every": 0,
        "save_every": 1,
        "keep_last": 5,
        **options,
    }
    return parse_experiment({"run_dir": str(run_dir), "seed": 5, "rl": options})


def test_logprobs_stored_at_rollout_equal_those_recomputed_in_a_mixed_batch(sft_checkpoint):
    policy = Policy.from_pretrained(sft_checkpoint).eval()
    framework = policy.model
    envs = make_vector_env(SHORT_TOY, 6)
    episodes = run_episodes(envs, [11, 12, 13, 14, 15, 16], SamplingActor(policy, 1.6, torch.Generator()))
    calls = [call for episode in episodes for call in episode.calls][::-1]  # other batch-mates, other padding
    batch = policy.processor([c.observation for c in calls], targets=False)
    choices = torch.stack([c.record["choices"] for c in calls])
    with torch.no_grad():
        recomputed = framework.choice_log_probs(batch, choices, 1.6)["log_probs"]
    stored = torch.stack([c.record["log_probs"] for c in calls])
    assert choices.shape == (len(calls), PLATFORM["action_horizon"] * PLATFORM["action_dim"])
    assert (recomputed - stored).abs().max() < 1e-5  # ratio 1 at the first update
    assert all(1 <= e.steps <= 6 for e in episodes)


def test_rl_is_reproducible_resumes_exactly_and_logs_every_iteration(sft_checkpoint, tmp_path):
    first = rl(rl_experiment(tmp_path / "a", sft_checkpoint))
    second = rl(rl_experiment(tmp_path / "b", sft_checkpoint))
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("success_rate", "mean_reward", "groups_kept", "clip_fraction", "approx_kl", "entropy", "rollout_s"):
        assert key in rows[0]
    assert rows[0]["update_vlm"] > 0 and rows[0]["update_head"] > 0  # both parts train and the move is measured
    assert (tmp_path / "a" / "success_curve.png").stat().st_size > 0
    weights = [load_file(str(r["checkpoint"] / "model.safetensors")) for r in (first, second)]
    initial = load_file(str(sft_checkpoint / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # same seed, same run
    assert any(not torch.equal(weights[0][k], initial[k]) for k in initial)  # and it did update
    assert [r["success_rate"] for r in first["history"]] == [r["success_rate"] for r in second["history"]]

    # Stop after iteration 1, resume: iteration 2 continues exactly.
    rl(rl_experiment(tmp_path / "c", sft_checkpoint, iterations=1))
    resumed = rl(
        parse_experiment({**rl_experiment(tmp_path / "c", sft_checkpoint).to_dict(), "trainer": {"resume": True}})
    )
    again = load_file(str(resumed["checkpoint"] / "model.safetensors"))
    assert resumed["checkpoint"].name == "step_2"
    assert all(torch.allclose(again[k], weights[0][k], atol=1e-6) for k in again)


def test_a_cosine_schedule_sets_each_iterations_rate(sft_checkpoint, tmp_path):
    rl(rl_experiment(tmp_path / "cos", sft_checkpoint, iterations=3, lr_schedule="cosine", min_lr_ratio=0.1))
    rows = [json.loads(line) for line in (tmp_path / "cos" / "metrics.jsonl").read_text().splitlines()]
    # by hand: 1e-3 * (0.1 + 0.9 * (1 + cos(pi * k / 3)) / 2) for k = 0, 1, 2
    assert [round(r["lr"], 9) for r in rows] == [1e-3, 7.75e-4, 3.25e-4]


def test_dynamic_sampling_drops_groups_whose_rewards_are_all_equal(sft_checkpoint, tmp_path):
    experiment = rl_experiment(
        tmp_path / "run", sft_checkpoint, iterations=1, env=ONE_STEP_TOY, dynamic_sampling=True, max_sampling_rounds=2
    )
    row = rl(experiment)["history"][0]
    assert row["success_rate"] == 0.0
    assert row["groups_kept"] == 0 and row["groups_sampled"] == 4  # two rounds of 2 groups tried, none kept
    assert row["policy_calls"] == 0


def test_fill_with_informative_groups_refills_and_truncates():
    rounds = [
        (["a", "b", "c"], torch.tensor([[0.0, 5.0], [0.0, 0.0], [5.0, 5.0]])),  # only "a" is informative
        (["d", "e", "f"], torch.tensor([[5.0, 0.0], [0.0, 0.0], [0.0, 5.0]])),  # "d" and "f"
    ]
    kept, sampled = fill_with_informative_groups(lambda r: rounds[r], groups=2, max_rounds=5, dynamic_sampling=True)
    assert [item for item, _ in kept] == ["a", "d"] and sampled == 6  # stopped after the round that filled it
    assert torch.allclose(kept[1][1], torch.tensor([0.7071, -0.7071]), atol=1e-4)
    kept, sampled = fill_with_informative_groups(lambda r: rounds[r], groups=3, max_rounds=5, dynamic_sampling=False)
    assert [item for item, _ in kept] == ["a", "b", "c"] and sampled == 3  # off: one round, all kept


def test_degenerate_groups_count_all_failed_and_all_succeeded_groups_of_every_round():
    def episodes(*successes):
        return [Episode(index=0, seed=0, instruction="", given="", success=bool(s)) for s in successes]

    rounds = [
        episodes(0, 0, 1, 0, 1, 1),
        episodes(0, 0, 0, 0, 1, 1),
    ]  # groups of 2: (0 0) (1 0) (1 1) / (0 0) (0 0) (1 1)
    assert _degenerate_groups(rounds, 2) == (3, 2)
    assert _degenerate_groups(rounds, 3) == (1, 0)  # (0 0 1) (0 1 1) / (0 0 0) (0 1 1)


def test_relative_change_splits_the_vlm_from_the_rest():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vlm = torch.nn.Linear(2, 2, bias=False)
            self.head = torch.nn.Linear(2, 1, bias=False)

    model = Tiny()
    with torch.no_grad():
        model.vlm.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # norm 5
        model.head.weight.fill_(1.0)  # norm sqrt(2)
    model.head.requires_grad_(False)  # a frozen part is not measured
    before = _trainable_snapshot(model)
    with torch.no_grad():
        model.vlm.weight[0, 0] += 0.5
        model.head.weight += 1.0
    moved = _relative_change(model, before)
    assert moved["vlm"] == pytest.approx(0.1)  # 0.5 / 5
    assert math.isnan(moved["head"])


def test_a_wrong_instruction_episode_succeeds_only_by_ending_on_the_block_it_was_told():
    def told(reached, success=False, given="move to the blue block"):
        info = {"reached": reached, "success": success}
        return Episode(index=0, seed=1, instruction="move to the red block", given=given, success=success, info=info)

    assert ended_on_the_named_block(told("blue"))
    assert not ended_on_the_named_block(told("red", success=True))  # the env's own target stops it: a failure
    assert not ended_on_the_named_block(told(None))  # passed over blue, or never got there
    assert not ended_on_the_named_block(told("red", given="move to the red block"))  # not a wrong instruction
    with pytest.raises(ValueError, match="contrast_instructions"):
        ended_on_the_named_block(Episode(index=0, seed=1, instruction="a", given="b", info={"success": False}))


def test_contrast_groups_hold_one_scene_told_its_own_block_and_another(sft_checkpoint):
    policy = Policy.from_pretrained(sft_checkpoint)
    cfg = RLConfig(groups_per_iteration=2, group_size=4, env=SHORT_TOY, contrast_instructions=True)
    envs = make_vector_env(SHORT_TOY, 4)
    try:
        groups, rewards = _rollout_round(policy, envs, cfg, (5, 1, 0), torch.device("cpu"), [], 0)
    finally:
        envs.close()
    assert rewards.shape == (2, 4) and len(groups) == 2
    for members, row in zip(groups, rewards):
        assert len({e.seed for e in members}) == 1  # one scene and start per group
        assert [e.given == e.instruction for e in members] == [True, True, False, False]
        assert all(e.calls for e in members)  # every episode is trained on
        contrast = [ended_on_the_named_block(e) for e in members[2:]]
        assert row[2:].tolist() == [5.0 * c for c in contrast]


def test_the_exploration_probe_tells_sampling_from_greedy_decoding(sft_checkpoint):
    policy = Policy.from_pretrained(sft_checkpoint)
    envs = make_vector_env(SHORT_TOY, 4)
    try:
        cold = exploration_stats(policy, envs, [11, 12], 2, temperature=1e-3, vocabulary=16)
        hot = exploration_stats(policy, envs, [11, 12], 2, temperature=50.0, vocabulary=16)
    finally:
        envs.close()
    assert cold["differs_from_greedy"] == 0.0 and cold["entropy_fraction"] < 0.05  # the argmax, every time
    assert hot["differs_from_greedy"] > 0.5 and hot["entropy_fraction"] > 0.99  # nearly uniform over 16 bins
    for stats in (cold, hot):
        assert stats["log_prob_mismatch"] < 1e-4 and stats["policy_calls"] > 0
        assert stats["groups_all_failed"] + stats["groups_all_succeeded"] <= 2


def test_val_only_reports_greedy_success_and_the_language_control(sft_checkpoint, tmp_path):
    result = rl(rl_experiment(tmp_path / "run", sft_checkpoint, val_only=True, eval_episodes=4))
    summary = json.loads((tmp_path / "run" / "val_only.json").read_text())
    assert summary == result["eval"] and summary["episodes"] == 4
    assert 0.0 <= summary["success_rate"] <= 1.0 and "wrong_instruction_success_rate" in summary


def test_a_deterministic_head_is_refused_with_the_fix(tmp_path):
    from test_training import FRAMEWORK

    data = synthetic_examples(
        PlatformConfig(**PLATFORM), 4, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"]
    )
    trainer = {"max_steps": 1, "batch_size": 2, "save_every": 100}
    sft = {"run_dir": str(tmp_path / "sft"), "platform": PLATFORM, "framework": FRAMEWORK, "trainer": trainer}
    checkpoint = train(parse_experiment(sft), dataset=data)["checkpoint"]
    with pytest.raises(ValueError, match="action_model.name: binned"):
        rl(rl_experiment(tmp_path / "run", checkpoint, iterations=1))


def test_worker_envs_match_in_process_envs():
    seeds, actions = [3, 4], {0: np.array([0.05, 0.0]), 1: np.array([0.0, -0.05])}
    local, workers = make_vector_env(SHORT_TOY, 2), make_vector_env(SHORT_TOY, 2, workers=True)
    try:
        for a, b in zip(local.reset(seeds), workers.reset(seeds)):
            assert np.array_equal(a["images"]["top"], b["images"]["top"]) and a["prompt"] == b["prompt"]
        stepped_local, stepped_workers = local.step(actions), workers.step(actions)
        for i in actions:
            assert np.allclose(stepped_local[i][0]["state"], stepped_workers[i][0]["state"])
            assert stepped_local[i][3]["success"] == stepped_workers[i][3]["success"]
        assert local.wrong_instruction(1) == workers.wrong_instruction(1)
    finally:
        workers.close()


def rl_on_two_ranks(experiment, config_path) -> None:
    """Writes `experiment` to `config_path` and runs `vlablocks rl` on 2 DDP CPU ranks under accelerate launch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vlablocks.core.config import to_yaml

    root = Path(__file__).resolve().parents[1]
    config_path.write_text(to_yaml(experiment.to_dict()))
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(root / "configs/accelerate/ddp.yaml"),
    ]
    launch += ["--num_processes", "2", "--main_process_port", "0", str(root / "vlablocks/methods/rl/loop.py")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        launch + ["--config-yaml", str(config_path)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_ddp_ranks_each_roll_out_their_share_and_update_one_model(sft_checkpoint, tmp_path):
    rl_on_two_ranks(rl_experiment(tmp_path / "run", sft_checkpoint, iterations=1), tmp_path / "rl.yaml")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["groups_sampled"] == 4 and row["groups_kept"] == 4  # 2 ranks x 2 groups, summed over ranks
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step_1" / "model.safetensors"))
    initial = load_file(str(sft_checkpoint / "model.safetensors"))
    assert any(not torch.equal(weights[k], initial[k]) for k in initial)


def test_rl_fine_tunes_qwen_fast_through_its_sampled_tokens(tmp_path):
    fast = {"name": "QwenFAST", "vlm": {"name": "qwen2_5_vl", "image_size": 56}, "fast": {"bpe_merges": False}}
    data = synthetic_examples(
        PlatformConfig(**PLATFORM), 8, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"]
    )
    trainer = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "save_every": 100}
    sft = {"run_dir": str(tmp_path / "sft"), "seed": 3, "platform": PLATFORM, "framework": fast, "trainer": trainer}
    checkpoint = train(parse_experiment(sft), dataset=data)["checkpoint"]
    result = rl(rl_experiment(tmp_path / "run", checkpoint, iterations=1))
    row = result["history"][0]
    assert row["groups_kept"] == 2 and row["policy_calls"] > 0 and row["entropy"] > 0
    before = load_file(str(checkpoint / "model.safetensors"))
    after = load_file(str(result["checkpoint"] / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_missing_starting_policy_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="pass --init-ckpt DIR"):
        rl(parse_experiment({"run_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()
