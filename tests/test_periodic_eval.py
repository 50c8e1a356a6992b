"""`trainer.eval_every`: closed-loop success of the current weights, logged by step during training."""

from __future__ import annotations

import json

import pytest
from test_training import FRAMEWORK

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.training.train import train

TOY = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}


def toy_experiment(run_dir, **trainer):
    trainer = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "save_every": 100, **trainer}
    return parse_experiment(
        {"run_dir": str(run_dir), "seed": 3, "platform": TOY, "framework": FRAMEWORK, "trainer": trainer}
    )


def test_eval_every_logs_the_success_of_seeded_episodes(tmp_path):
    data = synthetic_examples(PlatformConfig(**TOY), 8, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"])
    options = {"eval_every": 2, "eval_env": {"name": "toy", "max_steps": 3}, "eval_episodes": 2, "eval_seed": 5}
    train(toy_experiment(tmp_path / "run", **options), dataset=data)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_success" in r] == [2, 4]
    assert all(0.0 <= r["eval_success"] <= 1.0 for r in records if "eval_success" in r)
    for step in (2, 4):
        summary = json.loads((tmp_path / "run" / "eval" / f"step_{step}" / "summary.json").read_text())
        assert [e["seed"] for e in summary["per_episode"]] == [5, 6] and summary["episodes"] == 2
        assert summary["success_rate"] == next(r["eval_success"] for r in records if r["step"] == step)


def test_eval_every_without_an_env_names_the_fix(tmp_path):
    data = synthetic_examples(PlatformConfig(**TOY), 4, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"])
    with pytest.raises(ValueError, match="trainer.eval_every is set but trainer.eval_env is not"):
        train(toy_experiment(tmp_path / "run", eval_every=2), dataset=data)
