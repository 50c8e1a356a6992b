"""Exact resume under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks: a run killed after a checkpoint and
resumed logs the same per-step losses as the uninterrupted run (optimizer partitions restored pickle-free)."""

from __future__ import annotations

import enum
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from launch_helpers import ROOT, accelerate_launch, cpu_env, printed_losses, train_worker_args

from vlablocks.core.training.zero_state import decode, encode, load_zero_shard

STEPS, KILL_AT = 8, 4


def launch(stage: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = accelerate_launch(f"{stage}.yaml", 2)
    command += train_worker_args(run_dir, 2, STEPS, "--save_every", str(KILL_AT), *extra)
    return subprocess.run(command, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path, stage):
    uninterrupted = printed_losses(launch(stage, tmp_path / "full"))
    killed = launch(stage, tmp_path / "killed", "--kill_after_save", str(KILL_AT))
    assert killed.returncode != 0  # it died after the step-4 checkpoint
    state_dir = tmp_path / "killed" / "checkpoints" / f"step_{KILL_AT}" / "trainer_state"
    assert sorted(p.name for p in state_dir.glob("zero_rank_*")) == [
        "zero_rank_0.json",
        "zero_rank_0.safetensors",
        "zero_rank_1.json",
        "zero_rank_1.safetensors",
    ]
    resumed = printed_losses(launch(stage, tmp_path / "killed", "--resume"))
    assert len(uninterrupted) == len(resumed) == STEPS
    assert uninterrupted[0] != uninterrupted[-1]  # it trained
    np.testing.assert_allclose(resumed[KILL_AT:], uninterrupted[KILL_AT:], rtol=0, atol=1e-5)


class Stage(enum.IntEnum):
    GRADIENTS = 2


def test_shard_structure_round_trips_without_pickle():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0], "amsgrad": False, "foreach": None}],
        "zero_stage": Stage.GRADIENTS,
        "fp32": [torch.ones(2, 3)],
    }
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(encode(state, tensors)))
    back = decode(tree, tensors)
    assert list(back["state"]) == [0]  # integer keys stay integers
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["zero_stage"] == 2 and back["param_groups"][0]["foreach"] is None
    torch.testing.assert_close(back["state"][0]["exp_avg"], torch.arange(4.0))
    torch.testing.assert_close(back["fp32"][0], torch.ones(2, 3))
    with pytest.raises(TypeError, match="without pickle"):
        encode({"scaler": object()}, {})


def test_resuming_shards_on_another_number_of_ranks_names_the_fix(tmp_path):
    (tmp_path / "zero_rank_0.json").write_text(json.dumps({"world_size": 2, "rank": 0, "state": {"dict": []}}))
    with pytest.raises(ValueError, match="--num_processes 2"):
        load_zero_shard(tmp_path, optimizer=None, rank=0, world_size=4)
    with pytest.raises(FileNotFoundError, match="zero_rank_1.json"):
        load_zero_shard(tmp_path, optimizer=None, rank=1, world_size=2)
