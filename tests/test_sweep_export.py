"""Ablation sweep over two variants, and LoRA export."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vlablocks.cli.commands.export import export_checkpoint
from vlablocks.core.config import load_config, parse_experiment, to_yaml
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.manifest import write_manifest
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.tools.sweep.report import over_seeds, write_results
from vlablocks.tools.sweep.sweep import SweepEval, evaluate_run, run_with_cpu_time, same_experiment

REPO = Path(__file__).resolve().parents[1]


def sweep_command(base, out) -> list[str]:
    """`vlablocks sweep --base BASE --out OUT --jobs 2`, run as a module in a fresh process."""
    return [sys.executable, "-m", "vlablocks.cli.main", "sweep", "--base", str(base), "--out", str(out), "--jobs", "2"]


def test_two_variant_sweep_trains_evaluates_and_tabulates(tmp_path, toy_dataset):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"_base_: {REPO}/configs/frameworks/qwen_oft.yaml\n"
        f"dataset: {{root: {toy_dataset}}}\n"
        "framework: {action_model: {hidden_dim: 32, num_blocks: 1}}\n"
        "trainer: {max_steps: 3, batch_size: 2, save_every: 2}\n"
    )
    (tmp_path / "film.yaml").write_text("framework: {use_film: true}\n")
    (tmp_path / "no_proprio.yaml").write_text("framework: {use_proprio: false}\n")
    out = tmp_path / "sweep"
    command = sweep_command(base, out)
    command += ["--variants", str(tmp_path / "film.yaml"), str(tmp_path / "no_proprio.yaml")]
    command += ["--eval-env", "toy", "--eval-episodes", "3", "--eval-seed", "7", "--eval-option", "max_steps=4"]
    command += ["--eval-wrong-instruction"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in rows] == ["film", "no_proprio"]
    assert all(r["status"] == "ok" and r["steps"] == "3" and float(r["final_loss"]) > 0 for r in rows)
    assert (out / "results.md").read_text().count("\n") == 4
    assert (out / "comparison.png").stat().st_size > 1000
    for row in rows:
        run_dir = out / row["variant"]
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())
        wrong = json.loads((run_dir / "eval_wrong_instruction" / "summary.json").read_text())
        # The final checkpoint (step 3, not the step-2 one) was evaluated, with the sweep's eval options.
        assert "checkpoints/step_3" in (run_dir / "eval.log").read_text()
        assert [e["seed"] for e in summary["per_episode"]] == [7, 8, 9]
        assert max(e["steps"] for e in summary["per_episode"]) <= 4
        assert summary["wrong_instruction"] is False and wrong["wrong_instruction"] is True
        assert float(row["success_rate"]) == round(summary["success_rate"], 4)
        assert float(row["wrong_instruction_success_rate"]) == round(wrong["success_rate"], 4)
        assert row["eval_episodes"] == "3" and row["success_ci95"] == "{:.2f}-{:.2f}".format(*summary["ci95"])
    printed = subprocess.run(command + ["--print-commands"], capture_output=True, text=True, timeout=300)
    assert printed.stdout.count("accelerate launch --config_file configs/accelerate/zero2.yaml") == 2
    assert printed.stdout.count("vlablocks.cli.main eval --env toy") == 2


def test_seeds_axis_runs_each_variant_per_seed_and_reports_mean_and_spread(tmp_path, toy_dataset):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"_base_: {REPO}/configs/frameworks/qwen_oft.yaml\n"
        f"dataset: {{root: {toy_dataset}}}\n"
        "framework: {action_model: {hidden_dim: 32, num_blocks: 1}}\n"
        "trainer: {max_steps: 2, batch_size: 2, save_every: 2}\n"
    )
    (tmp_path / "oft.yaml").write_text("framework: {use_film: false}\n")
    out, report = tmp_path / "sweep", tmp_path / "report.md"
    command = sweep_command(base, out)
    command += ["--variants", str(tmp_path / "oft.yaml"), "--seeds", "3", "4", "--report", str(report)]
    command += ["--eval-env", "toy", "--eval-episodes", "4", "--eval-option", "max_steps=3", "--eval-wrong-instruction"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["variant"], r["group"], r["seed"]) for r in rows] == [
        ("oft_seed3", "oft", "3"),
        ("oft_seed4", "oft", "4"),
    ]
    for row in rows:  # each run trained with its own seed
        assert re.search(rf"^seed: {row['seed']}$", (out / row["variant"] / "config.yaml").read_text(), re.M)
    (summary,) = list(csv.DictReader(open(out / "over_seeds.csv")))
    success = np.array([float(r["success_rate"]) for r in rows])
    wrong = np.array([float(r["wrong_instruction_success_rate"]) for r in rows])
    assert summary["variant"] == "oft" and summary["seeds"] == "3 4" and summary["failed"] == "0"
    assert float(summary["success_rate_mean"]) == round(success.mean(), 4)
    assert float(summary["success_rate_std"]) == round(success.std(ddof=1), 4)
    assert float(summary["wrong_instruction_success_rate_mean"]) == round(wrong.mean(), 4)
    assert float(summary["success_rate_min"]) == round(success.min(), 4)
    assert all(float(r["train_cpu_minutes"]) > 0 for r in rows)
    assert "Over training seeds" in (out / "results.md").read_text()
    first_line, _, rest = report.read_text().partition("\n\n")
    assert first_line.startswith("Regenerate: `vlablocks sweep --base ") and "--seeds 3 4" in first_line
    assert "4 `toy` episodes (seeds 1000-1003)" in rest and "wrong_instruction_success_rate" in rest
    assert rest.endswith((out / "results.md").read_text())
    assert all(float(r["train_minutes"]) > 0 for r in rows)
    # Run again: finished variants are read back, not retrained (a sweep can be extended or resumed).
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("not rerun") == 2
    assert list(csv.DictReader(open(out / "results.csv"))) == rows


def test_sweep_rejects_an_unknown_eval_env_before_training(tmp_path):
    command = [
        sys.executable,
        "-m",
        "vlablocks.cli.main",
        "sweep",
        "--base",
        f"{REPO}/configs/frameworks/qwen_oft.yaml",
    ]
    command += ["--variants", f"{REPO}/configs/frameworks/qwen_oft.yaml", "--out", str(tmp_path), "--eval-env", "tyo"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown eval_env 'tyo'; did you mean 'toy'?" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing trained


def test_sweep_eval_without_a_checkpoint_fails_the_variant_with_a_reason(tmp_path):
    (tmp_path / "checkpoints").mkdir()  # training "succeeded" but saved nothing
    status = evaluate_run(SweepEval("toy", episodes=2), tmp_path)
    assert status == f"failed: no checkpoint under {tmp_path / 'checkpoints'} to evaluate"
    assert not (tmp_path / "eval").exists()


def test_sweep_eval_of_an_unloadable_checkpoint_fails_the_variant_with_eval_s_error(tmp_path):
    step = tmp_path / "checkpoints" / "step_5"
    step.mkdir(parents=True)
    (step / "config.yaml").write_text("seed: 0\n")
    write_manifest(step)  # verified (a manifest-less one is skipped as damaged), but with no model in it
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text('{"success_rate": 1.0}')  # left by an earlier sweep
    status = evaluate_run(SweepEval("toy", episodes=2), tmp_path)
    assert not (tmp_path / "eval" / "summary.json").exists()
    assert status.startswith("eval failed: ") and "step_5" in status, status
    assert "--ckpt" in (tmp_path / "eval.log").read_text().splitlines()[0]


def test_results_keep_overrides_last_when_the_first_variant_failed(tmp_path):
    failed = {"variant": "a", "status": "failed: boom", "steps": 0, "first_loss": None, "final_loss": None}
    evaluated = {"variant": "b", "status": "ok", "steps": 3, "first_loss": 1.0, "final_loss": 0.5, "success_rate": 0.5}
    write_results([{**failed, "overrides": "x=1"}, {**evaluated, "overrides": "x=1"}], tmp_path)
    header, _, first, second = (tmp_path / "results.md").read_text().splitlines()
    assert header == "| variant | status | steps | first_loss | final_loss | success_rate | overrides |"
    assert first == "| a | failed: boom | 0 |  |  |  | x=1 |" and second == "| b | ok | 3 | 1.0 | 0.5 | 0.5 | x=1 |"
    assert next(csv.reader(open(tmp_path / "results.csv")))[-1] == "overrides"


def test_export_merges_lora_into_a_plain_checkpoint(tmp_path):
    platform = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
    experiment = parse_experiment(
        {
            "platform": platform,
            "framework": {
                "name": "QwenOFT",
                "vlm": {"name": "qwen2_5_vl", "image_size": 56, "lora": {"enabled": True, "rank": 4}},
                "action_model": {"name": "l1_regression", "hidden_dim": 32},
            },
        },
    )
    from vlablocks.core.config import PlatformConfig

    examples = synthetic_examples(PlatformConfig(**platform), 2, image_size=56)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    for name, param in policy.model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    policy.save_pretrained(tmp_path / "lora")
    before = policy.predict(examples)["actions"]
    result = export_checkpoint(str(tmp_path / "lora"), str(tmp_path / "merged"), merge_lora=True)
    assert result["merged"]
    merged = Policy.from_pretrained(tmp_path / "merged")
    assert not merged.model.vlm.lora_enabled
    assert not any("lora" in name for name in merged.model.state_dict())
    np.testing.assert_allclose(merged.predict(examples)["actions"], before, atol=1e-5)


def test_export_vlm_only_gives_a_base_vlm_that_a_value_model_starts_from(tmp_path):
    from vlablocks.core.config import PlatformConfig

    platform = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
    vlm = {"name": "qwen2_5_vl", "image_size": 56}
    oft = {"name": "QwenOFT", "vlm": vlm, "action_model": {"name": "l1_regression", "hidden_dim": 32}}
    examples = synthetic_examples(PlatformConfig(**platform), 2, image_size=56)
    policy = build_policy(parse_experiment({"platform": platform, "framework": oft}), synthetic_norm_stats(examples))
    framework = policy.model
    policy.save_pretrained(tmp_path / "policy")
    export_checkpoint(str(tmp_path / "policy"), str(tmp_path / "vlm"), merge_lora=False, vlm_only=True)
    value = {"name": "QwenValue", "vlm": {**vlm, "base_vlm": str(tmp_path / "vlm")}, "value_head": {"hidden_dim": 16}}
    model = build_policy(
        parse_experiment({"platform": platform, "framework": value}), synthetic_norm_stats(examples)
    ).model
    policy_weights = framework.vlm.state_dict()
    value_weights = model.vlm.state_dict()
    for key, tensor in policy_weights.items():  # every trained weight arrives; the token table grows by <|value|>
        if "embed_tokens" in key or "lm_head" in key:
            rows = tensor.shape[0]
            assert value_weights[key].shape[0] == rows + 1
            torch.testing.assert_close(value_weights[key][:rows], tensor)
        else:
            torch.testing.assert_close(value_weights[key], tensor)
    tokenizer = model.vlm.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|act_0|>") == framework.query_token_ids[0]  # the policy's tokens kept


def test_a_finished_run_saved_before_an_option_existed_still_counts_as_the_same_experiment(tmp_path):
    expected = {**load_config(REPO / "configs/experiments/toy/qwen_oft.yaml").to_dict(), "run_dir": str(tmp_path)}
    saved = tmp_path / "variant.yaml"
    older = {**expected, "trainer": {k: v for k, v in expected["trainer"].items() if k != "ema_decay"}}
    saved.write_text(to_yaml(older))  # written before `trainer.ema_decay` existed: its default applies
    assert same_experiment(saved, expected)
    saved.write_text(to_yaml({**older, "trainer": {**older["trainer"], "ema_decay": 0.99}}))
    assert not same_experiment(saved, expected)  # a different value is another experiment
    saved.write_text(to_yaml({**expected, "trainer": {**expected["trainer"], "removed_option": 1}}))
    assert not same_experiment(saved, expected)  # an option that no longer exists: not comparable
    assert not same_experiment(tmp_path / "missing.yaml", expected)


def test_over_seeds_reports_mean_minimum_and_spread_of_the_seeds_that_finished():
    rows = [
        {"group": "a", "seed": 42, "status": "ok", "success_rate": 0.7, "train_cpu_minutes": 12.0},
        {"group": "a", "seed": 311, "status": "ok", "success_rate": 0.98, "train_cpu_minutes": 13.0},
        {"group": "a", "seed": 523, "status": "ok", "success_rate": 0.94, "train_cpu_minutes": 14.5},
        {"group": "a", "seed": 748, "status": "failed: x"},  # not counted, only as failed
        {"group": "b", "seed": 42, "status": "ok", "success_rate": 1.0},
    ]
    a, b = over_seeds(rows)
    assert (a["variant"], a["seeds"], a["failed"]) == ("a", "42 311 523", 1)
    assert a["success_rate_mean"] == 0.8733 and a["success_rate_min"] == 0.7
    assert a["success_rate_std"] == round(float(np.std([0.7, 0.98, 0.94], ddof=1)), 4) == 0.1514
    assert a["success_rate_range"] == "0.7-0.98"
    assert (a["train_cpu_minutes_min"], a["train_cpu_minutes_range"]) == (12.0, "12-14.5")
    assert (b["success_rate_mean"], b["success_rate_min"], b["success_rate_std"]) == (1.0, 1.0, 0.0)
    assert "train_cpu_minutes_mean" not in b


def test_run_with_cpu_time_counts_the_process_cpu_not_its_sleep(tmp_path):
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\nprint('burnt')"
    result, busy = run_with_cpu_time([sys.executable, "-c", burn], tmp_path / "burn.log")
    assert result.returncode == 0 and (tmp_path / "burn.log").read_text().strip() == "burnt"
    result, idle = run_with_cpu_time([sys.executable, "-c", "import time; time.sleep(0.6)"], tmp_path / "idle.log")
    assert result.returncode == 0
    assert busy >= 0.4 and idle < busy - 0.25  # the sleep's wall time is not CPU time
    failed, _ = run_with_cpu_time([sys.executable, "-c", "raise SystemExit('bad config')"], tmp_path / "fail.log")
    assert failed.returncode == 1 and failed.stderr.strip().splitlines()[-1] == "bad config"
