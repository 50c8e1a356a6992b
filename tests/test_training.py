"""Training loop on CPU with a real tiny QwenOFT: accumulation, resume identity, atomic checkpoints, NaN stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlablocks.core.config import ExperimentConfig, PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.checkpoint import checkpoint_dirs, latest_checkpoint
from vlablocks.core.training.train import train

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
FRAMEWORK = {
    "name": "QwenOFT",
    "vlm": {"name": "qwen2_5_vl", "image_size": 56},
    "action_model": {"name": "l1_regression", "hidden_dim": 32, "num_blocks": 1},
}


def experiment(run_dir: Path, **trainer) -> ExperimentConfig:
    trainer = {
        "max_steps": 4,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "save_every": 100,
        "max_grad_norm": None,
        **trainer,
    }
    return parse_experiment(
        {"run_dir": str(run_dir), "seed": 3, "platform": PLATFORM, "framework": FRAMEWORK, "trainer": trainer},
    )


def examples(n: int = 16) -> list[dict]:
    return synthetic_examples(PlatformConfig(**PLATFORM), n, image_size=56, seed=7)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return Policy.from_pretrained(latest_checkpoint(run_dir)).model.state_dict()


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    data = examples()
    train(experiment(tmp_path / "big", max_steps=1, batch_size=8), dataset=data)
    train(experiment(tmp_path / "acc", max_steps=1, batch_size=2, gradient_accumulation_steps=4), dataset=data)
    train(experiment(tmp_path / "one", max_steps=1, batch_size=2), dataset=data)
    big, acc, one = weights(tmp_path / "big"), weights(tmp_path / "acc"), weights(tmp_path / "one")

    # AdamW's first step is ~lr * sign(grad): fp32 summation-order noise can move a near-zero-gradient
    # weight by a hair, so compare against the size of a genuinely different update (batch 2 alone).
    def distance(a: dict, b: dict) -> float:
        return sum(((a[k] - b[k]).double() ** 2).sum().item() for k in a) ** 0.5

    accumulation_error, different_batch = distance(big, acc), distance(big, one)
    assert accumulation_error < different_batch / 100, (accumulation_error, different_batch)


def test_checkpoint_is_servable_and_keeps_last_k(tmp_path):
    result = train(experiment(tmp_path, max_steps=6, save_every=2, keep_last=2), dataset=examples())
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_4", "step_6"]
    assert result["checkpoint"] == tmp_path / "checkpoints" / "step_6"
    files = {p.name for p in result["checkpoint"].iterdir()}
    assert {"model.safetensors", "config.yaml", "processor", "trainer_state"} <= files
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert len(result["losses"]) == 6 and all(np.isfinite(result["losses"]))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = examples()
    train(experiment(tmp_path, max_steps=2, save_every=2), dataset=data)
    poisoned = [{**e, "state": np.full_like(e["state"], np.nan)} for e in data]
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3.*step_2"):
        train(experiment(tmp_path, max_steps=4, save_every=1, resume=True), dataset=poisoned)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_2"]
    Policy.from_pretrained(tmp_path / "checkpoints" / "step_2")


# ---- subprocess runs: SIGKILL mid-run and mid-save ---------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_training as t
    from vlablocks.core.training import checkpoint
    from vlablocks.core.training.train import train

    run_dir, max_steps, save_every, resume, kill_on_save = sys.argv[1:6]
    if kill_on_save != "0":  # fault injection: die while the given checkpoint is half written
        real_save_file = checkpoint.save_file
        def dying_save_file(tensors, path):
            if f"step_{{kill_on_save}}" in path or ".step_" + kill_on_save + ".tmp" in path:
                os.kill(os.getpid(), signal.SIGKILL)
            real_save_file(tensors, path)
        checkpoint.save_file = dying_save_file
    exp = t.experiment(run_dir, max_steps=int(max_steps), save_every=int(save_every), resume=resume == "1")
    result = train(exp, dataset=t.examples())
    print(json.dumps(result["losses"]))
    """)


def run_worker(tmp_path: Path, *args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    command = [sys.executable, str(script), *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
    reference = train(experiment(tmp_path / "ref", max_steps=6, save_every=3), dataset=examples())["losses"]
    run_dir = tmp_path / "killed"
    process = run_worker(tmp_path, str(run_dir), "6", "3", "0", "0", wait=False)
    deadline = time.time() + 300
    while latest_checkpoint(run_dir) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step_3"
    resumed = run_worker(tmp_path, str(run_dir), "6", "3", "1", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    losses = json.loads(resumed.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-6)


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    run_dir = tmp_path / "run"
    result = run_worker(tmp_path, str(run_dir), "4", "2", "0", "4")
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_2"]
    assert any(p.name.startswith(".step_4.tmp-") for p in (run_dir / "checkpoints").iterdir())
    Policy.from_pretrained(run_dir / "checkpoints" / "step_2")
    # Resuming ignores the half-written directory and finishes the run.
    resumed = run_worker(tmp_path, str(run_dir), "4", "2", "1", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_2", "step_4"]


def test_partial_reload_copies_matching_modules_and_lists_shape_mismatches(tmp_path):
    from vlablocks.core.framework.synthetic import synthetic_norm_stats
    from vlablocks.core.policy.policy import build_policy
    from vlablocks.core.training.components import load_pretrained_modules

    data = examples(4)
    source_policy = build_policy(experiment(tmp_path / "a"), synthetic_norm_stats(data))
    source_policy.save_pretrained(tmp_path / "source")
    source = source_policy.model
    torch.manual_seed(123)
    target = build_policy(experiment(tmp_path / "b"), synthetic_norm_stats(data)).model
    loaded = load_pretrained_modules(target, str(tmp_path / "source"), [r"^action_model\."])
    assert loaded and all(k.startswith("action_model.") for k in loaded)
    for key in loaded:
        torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key], rtol=0, atol=0)
    vlm_key = "vlm.model.lm_head.weight"
    assert not torch.equal(target.state_dict()[vlm_key], source.state_dict()[vlm_key])  # left alone

    wider = experiment(tmp_path / "c").to_dict()
    wider["framework"]["action_model"]["hidden_dim"] = 48
    mismatched = build_policy(parse_experiment(wider), synthetic_norm_stats(data)).model
    with pytest.raises(ValueError, match=r"shape mismatch .*action_model\.mlp\..*checkpoint \(32.*vs model \(48"):
        load_pretrained_modules(mismatched, str(tmp_path / "source"), [r"^action_model\."])
    with pytest.raises(ValueError, match="matches no key"):
        load_pretrained_modules(target, str(tmp_path / "source"), [r"^nonexistent"])


def test_worker_sharing_is_set_only_when_workers_hand_batches_over():
    from vlablocks.core.config.trainer import TrainerConfig
    from vlablocks.core.training.components import set_worker_sharing

    before = torch.multiprocessing.get_sharing_strategy()
    try:
        torch.multiprocessing.set_sharing_strategy("file_descriptor")
        set_worker_sharing(TrainerConfig(num_workers=0, worker_sharing="file_system"))
        assert torch.multiprocessing.get_sharing_strategy() == "file_descriptor"
        set_worker_sharing(TrainerConfig(num_workers=2, worker_sharing="file_system"))
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy(before)


def test_dashboards_get_one_point_every_log_every_steps_with_the_window_mean(tmp_path, monkeypatch):
    """trainer.log_every: metrics.jsonl keeps every step; tensorboard gets the mean of each window of log_every steps
    and the last step's (partial) window."""
    from vlablocks.core.training import run_logger

    points = []

    class Writer:
        def __init__(self, *args, **kwargs):
            pass

        def add_scalar(self, tag, value, step):
            points.append((tag, step, value))

        def close(self):
            pass

    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter", Writer)
    logger = run_logger.RunLogger(tmp_path, max_steps=7, start_step=0, enabled=True, log_every=3)
    for step in range(1, 8):
        logger.log(step, {"loss": float(step), "lr": 0.1}, samples=4)
    logger.close([])
    losses = [(step, value) for tag, step, value in points if tag == "train/loss"]
    assert losses == [(3, 2.0), (6, 5.0), (7, 7.0)]  # means of 1-3, 4-6, and 7 alone
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 7
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        run_logger.RunLogger(tmp_path, max_steps=7, start_step=0, enabled=False, log_every=0)
