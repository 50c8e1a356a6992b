"""`rl.algorithm: ppo` (GAE on a critic, clipped value loss) against hand computations, and LoRA at RL time:
only the adapters and the head train, and the merged export acts as the LoRA policy does."""

from __future__ import annotations

import json
import math

import pytest
import test_rl
import torch
from safetensors.torch import load_file

from vlablocks.cli.commands.export import export_checkpoint
from vlablocks.core.config import parse_experiment
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.actors import GreedyActor
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.policy.policy import Policy
from vlablocks.methods.rl.loop import rl
from vlablocks.methods.rl.ppo import episode_rewards, explained_variance, gae, value_loss, whiten

SHORT_TOY, rl_experiment = test_rl.SHORT_TOY, test_rl.rl_experiment
sft_checkpoint = test_rl.sft_checkpoint  # the tiny binned QwenOFT SFT checkpoint (a module fixture)
# Short episodes the tiny policy sometimes wins (12% of iteration 2's with seed 5), so the returns vary.
EASY_TOY = {"name": "toy", "max_steps": 6, "success_radius": 0.2, "max_move": 0.3}
PPO = {"algorithm": "ppo", "ppo": {"gamma": 0.9, "lam": 0.95}, "env": EASY_TOY}


def test_gae_of_a_three_call_episode_equals_the_hand_computation():
    rewards = episode_rewards(3, True, 5.0)
    assert rewards.tolist() == [0.0, 0.0, 5.0]
    advantages, returns = gae(rewards, torch.tensor([1.0, 2.0, 3.0]), gamma=0.9, lam=0.8)
    # by hand, V(s_3) = 0, gamma * lam = 0.72:
    #   t=2: delta = 5 - 3 = 2                      A = 2
    #   t=1: delta = 0.9 * 3 - 2 = 0.7              A = 0.7 + 0.72 * 2 = 2.14
    #   t=0: delta = 0.9 * 2 - 1 = 0.8              A = 0.8 + 0.72 * 2.14 = 2.3408
    assert torch.allclose(advantages, torch.tensor([2.3408, 2.14, 2.0]))
    assert torch.allclose(returns, torch.tensor([3.3408, 4.14, 5.0]))  # R = A + V
    failed, _ = gae(episode_rewards(3, False, 5.0), torch.tensor([1.0, 2.0, 3.0]), gamma=1.0, lam=1.0)
    assert torch.allclose(failed, torch.tensor([-1.0, -2.0, -3.0]))  # lam = gamma = 1: return 0 minus V(s_t)


def test_whitening_and_explained_variance_by_hand():
    assert torch.allclose(whiten(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))  # var 1 (unbiased)
    assert whiten(torch.tensor([4.0])).tolist() == [0.0]
    # R - V = [0, 0, 1]: var 1/3; R = [1, 2, 4]: var 7/3 -> 1 - 1/7
    assert explained_variance(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])) == pytest.approx(6 / 7)
    assert math.isnan(explained_variance(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 5.0])))


def test_the_clipped_value_loss_equals_the_hand_computation():
    values, old, returns = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0]), torch.tensor([2.0, 1.0])
    loss, clip_fraction = value_loss(values, old, returns, clip=0.2)
    # call 0: (1 - 2)^2 = 1; clipped to 0.5 + 0.2 = 0.7: (0.7 - 2)^2 = 1.69 -> 1.69 (the clipped term)
    # call 1: (2 - 1)^2 = 1; inside [1.8, 2.2]: 1 -> 1.    L = 0.5 * (1.69 + 1) / 2
    assert loss.item() == pytest.approx(0.6725)
    assert clip_fraction == 0.5
    plain, none_clipped = value_loss(values, old, returns, clip=None)
    assert plain.item() == pytest.approx(0.5) and none_clipped == 0.0


def test_ppo_runs_two_iterations_logs_the_critic_and_resumes_exactly(sft_checkpoint, tmp_path):
    full = rl(rl_experiment(tmp_path / "a", sft_checkpoint, **PPO))
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["value_loss"] > 0 and 0 <= row["value_clip_fraction"] <= 1
        assert "explained_variance" in row and math.isfinite(row["value_mean"])
    assert any(r["success_rate"] > 0 for r in rows)  # returns vary: the explained variance is a number
    assert any(math.isfinite(r["explained_variance"]) for r in rows)
    state = full["checkpoint"] / "trainer_state"
    assert (state / "critic.safetensors").is_file() and (state / "critic_optimizer.pt").is_file()
    assert not (tmp_path / "a" / "critic.tmp").exists()  # moved into the checkpoint
    Policy.from_pretrained(full["checkpoint"])  # an ordinary, loadable checkpoint

    rl(rl_experiment(tmp_path / "c", sft_checkpoint, **PPO, iterations=1))
    resumed = rl(_resumed(tmp_path / "c", sft_checkpoint))
    assert resumed["checkpoint"].name == "step_2"
    for name in ("model.safetensors", "trainer_state/critic.safetensors"):
        again, once = load_file(str(resumed["checkpoint"] / name)), load_file(str(full["checkpoint"] / name))
        assert all(torch.allclose(again[k], once[k], atol=1e-6) for k in once), name


def _resumed(run_dir, init_ckpt):
    """The same ppo run with trainer.resume: it continues from its last checkpoint."""
    experiment = rl_experiment(run_dir, init_ckpt, **PPO)
    return parse_experiment({**experiment.to_dict(), "trainer": {"resume": True}})


def test_a_critic_other_than_the_state_mlp_is_refused_before_anything_is_written(sft_checkpoint, tmp_path):
    experiment = rl_experiment(tmp_path / "run", sft_checkpoint, algorithm="ppo", ppo={"critic": {"name": "QwenValue"}})
    with pytest.raises(ValueError, match="rl.ppo.critic.name=StateValueMLP"):
        rl(experiment)
    assert not (tmp_path / "run").exists()


def test_lora_at_rl_trains_only_the_adapters_and_the_head_and_the_merged_export_acts_alike(sft_checkpoint, tmp_path):
    result = rl(rl_experiment(tmp_path / "run", sft_checkpoint, iterations=1, lora={"enabled": True, "rank": 4}))
    before, after = load_file(str(sft_checkpoint / "model.safetensors")), load_file(
        str(result["checkpoint"] / "model.safetensors")
    )
    adapters = [k for k in after if "lora_" in k]
    assert adapters and any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in adapters if "lora_B" in k)
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys()
    vlm_keys = [k for k in before if k.startswith("vlm.")]
    head_keys = [k for k in before if not k.startswith("vlm.")]
    assert vlm_keys and head_keys
    assert all(torch.equal(base[k], before[k]) for k in vlm_keys)  # the VLM's own weights: exactly unchanged
    assert any(not torch.equal(base[k], before[k]) for k in head_keys)  # the head trains

    lora_policy = Policy.from_pretrained(result["checkpoint"]).eval()
    assert lora_policy.model.vlm.lora_enabled  # rebuilt with its adapters from the checkpoint's config
    merged_dir = tmp_path / "merged"
    assert export_checkpoint(str(result["checkpoint"]), str(merged_dir), merge_lora=True)["merged"]
    merged = Policy.from_pretrained(merged_dir).eval()
    assert not merged.model.vlm.lora_enabled
    envs = make_vector_env(SHORT_TOY, 3)
    observations = []
    for policy in (lora_policy, merged):
        episodes = run_episodes(envs, [21, 22, 23], GreedyActor(policy), keep_calls=True)
        observations.append([c.observation for e in episodes for c in e.calls])
    assert len(observations[0]) == len(observations[1])  # the same greedy trajectories
    with torch.no_grad():
        acts = [p.predict(observations[0])["actions"] for p in (lora_policy, merged)]
    assert torch.allclose(torch.as_tensor(acts[0]), torch.as_tensor(acts[1]), atol=1e-5)


def test_lora_on_a_checkpoint_that_has_adapters_is_refused_before_anything_is_written(sft_checkpoint, tmp_path):
    first = rl(rl_experiment(tmp_path / "first", sft_checkpoint, iterations=1, lora={"enabled": True, "rank": 4}))
    experiment = rl_experiment(tmp_path / "again", first["checkpoint"], iterations=1, lora={"enabled": True})
    with pytest.raises(ValueError, match="already has LoRA adapters.*rl.lora.enabled=false"):
        rl(experiment)
    assert not (tmp_path / "again").exists()


def test_ppo_with_lora_on_two_ddp_ranks_updates_the_adapters_and_saves_the_critic(sft_checkpoint, tmp_path):
    options = {**PPO, "iterations": 1, "lora": {"enabled": True, "rank": 4}}
    test_rl.rl_on_two_ranks(rl_experiment(tmp_path / "run", sft_checkpoint, **options), tmp_path / "rl.yaml")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["groups_sampled"] == 4 and row["value_loss"] > 0  # 2 ranks x 2 groups; the critic stepped
    step = tmp_path / "run" / "checkpoints" / "step_1"
    weights = load_file(str(step / "model.safetensors"))
    assert any("lora_B" in k and weights[k].abs().sum() > 0 for k in weights)
    assert (step / "trainer_state" / "critic.safetensors").is_file()
