"""Precision that trains (vlablocks/core/training/precision.py): under the precision a GPU recipe resolves to (a bf16
VLM, bf16 autocast), forced here on CPU, trainable weights are stored in fp32 so AdamW's small steps are not rounded
away; the run tracks an fp32 run and resumes exactly; 16-bit training without a master copy is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlablocks.core.training.train as train_module
from vlablocks.core.config import ExperimentConfig, PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.training.checkpoint import checkpoint_dirs
from vlablocks.core.training.train import train

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}


def experiment(run_dir: Path, vlm_dtype: str, mixed: str, **options) -> ExperimentConfig:
    framework = {
        "name": "QwenOFT",
        "vlm": {"name": "qwen2_5_vl", "image_size": 56, "dtype": vlm_dtype},
        "action_model": {"name": "l1_regression", "hidden_dim": 32, "num_blocks": 1},
    }
    trainer = {"max_steps": 2, "batch_size": 4, "learning_rate": 2.5e-5, "save_every": 1, "max_grad_norm": None}
    trainer = {**trainer, "mixed_precision": mixed, "torch_threads": 1, **options}
    return parse_experiment(
        {"run_dir": str(run_dir), "seed": 3, "platform": PLATFORM, "framework": framework, "trainer": trainer}
    )


def data(n: int = 16) -> list[dict]:
    return synthetic_examples(PlatformConfig(**PLATFORM), n, image_size=56, seed=7)


def vlm_updates(run_dir: Path) -> tuple[dict[str, torch.Tensor], set]:
    """-> ({VLM weight name: bool mask of the elements that changed from step 1's checkpoint to step 2's (the second
    optimizer step)}, the dtypes the VLM's weights were saved in)."""
    first, second = (load_file(str(d / "model.safetensors")) for d in checkpoint_dirs(run_dir)[:2])
    keys = [k for k in first if k.startswith("vlm.") and first[k].is_floating_point()]
    return {k: first[k].float() != second[k].float() for k in keys}, {first[k].dtype for k in keys}


def landed_share(run_dir: Path, reference: Path) -> float:
    """The share of the fp32 reference run's moved elements that moved in `run_dir` too (elements with no gradient,
    such as the embedding rows of tokens the batches never hold, move in neither and are not counted)."""
    moved, _ = vlm_updates(reference)
    landed, _ = vlm_updates(run_dir)
    return sum(int((landed[k] & moved[k]).sum()) for k in moved) / sum(int(moved[k].sum()) for k in moved)


@pytest.fixture(scope="module")
def fp32_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("precision") / "fp32"
    train(experiment(run_dir, "float32", "no"), dataset=data())
    return run_dir


def test_a_bf16_recipe_moves_every_trainable_weight(tmp_path, fp32_reference):
    train(experiment(tmp_path / "fixed", "bfloat16", "bf16"), dataset=data())
    _, dtypes = vlm_updates(tmp_path / "fixed")
    assert dtypes == {torch.float32}  # trainable weights live (and are saved) in fp32
    share = landed_share(tmp_path / "fixed", fp32_reference)
    assert share >= 0.99, share


def test_without_fp32_weights_the_same_step_rounds_most_updates_away(tmp_path, monkeypatch, fp32_reference):
    """The defect the fix removes, measured the same way: bf16 storage loses the updates below half a bf16 step."""
    monkeypatch.setattr(train_module, "keep_trainable_weights_fp32", lambda *args, **kwargs: 0)
    train(experiment(tmp_path / "bf16", "bfloat16", "bf16"), dataset=data())
    _, dtypes = vlm_updates(tmp_path / "bf16")
    share = landed_share(tmp_path / "bf16", fp32_reference)
    assert dtypes == {torch.bfloat16} and share < 0.5, share


def losses(run_dir: Path) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def windows(values: list[float], size: int = 10) -> list[float]:
    """Means of consecutive windows of `size` steps."""
    return [sum(values[i : i + size]) / size for i in range(0, len(values), size)]


def test_the_bf16_run_tracks_an_fp32_run_and_resumes_exactly(tmp_path):
    """50 steps at lr 1e-3: bf16 compute (with fp32 weights) follows the fp32 run's loss, each 10-step window's mean
    after the first within 7% of the fp32 run's (measured: 4.6, 0.1, 2.7, 0.5%); 2 + 2 resumed steps give the weights
    of 4 straight ones, bit for bit."""
    samples = data(32)
    options = {"max_steps": 50, "learning_rate": 1e-3, "save_every": 50}
    train(experiment(tmp_path / "fp32", "float32", "no", **options), dataset=samples)
    train(experiment(tmp_path / "bf16", "bfloat16", "bf16", **options), dataset=samples)
    full, mixed = windows(losses(tmp_path / "fp32")), windows(losses(tmp_path / "bf16"))
    assert full[-1] < 0.8 * full[0] and mixed[-1] < 0.9 * mixed[0], (full, mixed)  # both learn
    for a, b in zip(full[1:], mixed[1:]):  # the first window differs: the bf16 build rounded the initial weights
        assert abs(a - b) <= 0.07 * a, (full, mixed)
    run_dir = tmp_path / "resumed"
    train(experiment(run_dir, "bfloat16", "bf16", max_steps=4, save_every=2), dataset=samples)
    last = checkpoint_dirs(run_dir)[-1]
    straight = load_file(str(last / "model.safetensors"))
    shutil.rmtree(last)  # as if the run had stopped after step 2's checkpoint
    train(experiment(run_dir, "bfloat16", "bf16", max_steps=4, save_every=2, resume=True), dataset=samples)
    resumed = load_file(str(checkpoint_dirs(run_dir)[-1] / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_16bit_weights_without_autocast_are_refused(tmp_path):
    with pytest.raises(ValueError, match="set trainer.mixed_precision: bf16"):
        train(experiment(tmp_path / "refused", "bfloat16", "no"), dataset=data())
    assert not (tmp_path / "refused" / "checkpoints").exists()
