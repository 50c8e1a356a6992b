"""Runs cannot be clobbered or resumed wrongly, and damaged checkpoints are refused with the file named."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_frameworks import experiment_for, scaled_examples
from test_training import examples, experiment

from vlablocks.core.config import ConfigError, to_yaml
from vlablocks.core.framework.synthetic import synthetic_norm_stats
from vlablocks.core.manifest import CorruptCheckpointError, read_json, verify_manifest, write_manifest
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.training.checkpoint import latest_checkpoint
from vlablocks.core.training.run_dir import check_run_dir, remove_stale_temporaries, truncate_metrics
from vlablocks.core.training.train import train


def test_training_into_an_existing_run_without_resume_names_both_ways_out(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match=r"already holds a run; continue it with trainer.resume=true or pick a new"):
        train(experiment(run_dir), dataset=examples())
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'  # nothing touched
    check_run_dir(tmp_path / "fresh", experiment(tmp_path / "fresh"))  # a new run_dir is fine


def test_resume_refuses_a_changed_config_except_the_safe_keys(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    saved = experiment(run_dir, resume=True)
    (run_dir / "config.yaml").write_text(to_yaml(saved.to_dict()))
    check_run_dir(run_dir, experiment(run_dir, resume=True, max_steps=40, save_every=7, num_workers=1))
    with pytest.raises(ConfigError, match=r"trainer.learning_rate: 0.001 -> 0.01.*start a new run_dir"):
        check_run_dir(run_dir, experiment(run_dir, resume=True, learning_rate=1e-2))


def test_stale_save_folders_are_removed_and_metrics_are_keyed_by_step(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("step_2", ".step_4.tmp-x1y2", ".step_2.old-123"):
        (checkpoints / name).mkdir(parents=True)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".step_2.old-123", ".step_4.tmp-x1y2"]
    assert [p.name for p in checkpoints.iterdir()] == ["step_2"]
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo')  # cut by a kill
    truncate_metrics(tmp_path, 4)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    data = scaled_examples(2)
    policy = build_policy(experiment_for("QwenOFT"), synthetic_norm_stats(data))
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "ckpt"), data


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text().splitlines()[0] + "\n"), "config"),
        (lambda d: _flip_byte(d / "model.safetensors"), "model.safetensors"),
        (lambda d: _nan_stats(d / "processor" / "norm_stats.json"), "norm_stats.json"),
        (lambda d: (d / "processor" / "processor.json").unlink(), "processor.json: listed in the manifest but missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(saved, damage, named, tmp_path):
    import shutil

    source, data = saved
    copy = shutil.copytree(source, tmp_path / "copy")
    assert verify_manifest(copy) is True
    Policy.from_pretrained(copy)
    damage(copy)
    with pytest.raises(CorruptCheckpointError, match=named):
        Policy.from_pretrained(copy)


def _flip_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _nan_stats(path):
    stats = json.loads(path.read_text())
    first = next(iter(stats.values()))
    first["action"]["std"] = [float("nan")] * len(first["action"]["std"])
    path.write_text(json.dumps(stats))


def test_resume_skips_a_corrupt_checkpoint_to_the_last_verified_one(tmp_path):
    for step in (2, 4):
        directory = tmp_path / "checkpoints" / f"step_{step}"
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(np.arange(64, dtype=np.float32).tobytes())
        write_manifest(directory)
    (tmp_path / "checkpoints" / "step_4" / "model.safetensors").write_bytes(b"\x00" * 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(tmp_path).name == "step_2"
    assert any("skipping corrupt checkpoint step_4" in str(w.message) for w in caught)


def test_unreadable_json_names_its_file(tmp_path):
    (tmp_path / "state.json").write_text('{"step": 3, "loss')
    with pytest.raises(CorruptCheckpointError, match=r"state.json: not valid JSON"):
        read_json(tmp_path / "state.json")
    with pytest.raises(FileNotFoundError, match=r"absent.json is missing"):
        read_json(tmp_path / "absent.json")
