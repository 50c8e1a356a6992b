"""Two simulated nodes on one host: `num_machines 2`, one CPU rank each (gloo), rendezvous at 127.0.0.1, started
by examples/cluster/launch_node.sh from SLURM-style variables, as a real cluster job starts it.

Under ZeRO-2 and ZeRO-3 the per-step losses equal one plain process (the tolerance of tests/test_zero.py), and
a run killed on both "nodes" after a checkpoint resumes to exactly the uninterrupted losses (tolerance of
tests/test_zero_resume.py). The real training loop (tests/train_worker.py, tiny QwenOFT) is the one resumed.
Under ZeRO-3 its model is built partitioned (another initialisation than a plain process), so the 1-process
comparison under ZeRO-3 uses the MLP of tests/zero_worker.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from launch_helpers import (
    LAUNCH_NODE,
    ROOT,
    ZERO_WORKER,
    cpu_env,
    printed_losses,
    run_nodes,
    train_worker_args,
    zero_worker_args,
)

STEPS, KILL_AT = 8, 4
LOSS_ATOL = 1e-4  # tests/test_zero.py, tests/test_zero_train.py: 2 ranks vs 1 process
RESUME_ATOL = 1e-5  # tests/test_zero_resume.py: resumed vs uninterrupted
ZERO_FILES = ["zero_rank_0.json", "zero_rank_0.safetensors", "zero_rank_1.json", "zero_rank_1.safetensors"]


def plain(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)


TEARDOWN_ABORT = "terminate called without an active exception"


def two_nodes(config: str, args: list[str], log_dir) -> subprocess.CompletedProcess:
    """Both nodes must succeed; -> node 0's result (rank 0 reports).

    The rare CPU teardown abort at process exit (docs/distributed.md, Checks and figures; seen once in ~20
    launches, after training had finished) reruns the whole launch once, from scratch, with every check; a
    second abort, or any other failure, fails the test. The run directory is restored before the rerun."""
    run_dir = Path(args[args.index("--run_dir") + 1]) if "--run_dir" in args else None
    snapshot = log_dir / "run_dir_before"
    if run_dir is not None and run_dir.exists():
        shutil.copytree(run_dir, snapshot)
    for attempt in range(2):
        if attempt and run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            if snapshot.exists():
                shutil.copytree(snapshot, run_dir)
        node0, node1 = run_nodes(config, args[0], args[1:], log_dir / f"attempt_{attempt}")
        aborted = any(r.returncode != 0 and TEARDOWN_ABORT in r.stderr for r in (node0, node1))
        if not aborted or attempt == 1:
            break
    for node, result in enumerate((node0, node1)):
        hint = "the CPU teardown abort at exit, twice; " if TEARDOWN_ABORT in result.stderr else ""
        assert result.returncode == 0, f"node {node}: {hint}" + result.stdout[-2000:] + result.stderr[-3000:]
        assert f"launch_node.sh: node {node} of 2, 1 rank(s) here, 2 in all" in result.stderr
    return node0


def kill_and_resume(config: str, run_dir, log_dir) -> tuple[list[float], list[float]]:
    """-> (losses of the killed run's first KILL_AT steps, losses of the resumed run: all STEPS)."""
    args = train_worker_args(run_dir, 2, STEPS, "--save_every", str(KILL_AT))
    killed = run_nodes(config, args[0], args[1:] + ["--kill_after_save", str(KILL_AT)], log_dir / "killed")
    assert all(result.returncode != 0 for result in killed)  # every rank died after the step-4 checkpoint
    state_dir = run_dir / "checkpoints" / f"step_{KILL_AT}" / "trainer_state"
    assert sorted(p.name for p in state_dir.glob("zero_rank_*")) == ZERO_FILES  # one partition per node's rank
    before_kill = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = printed_losses(two_nodes(config, args + ["--resume"], log_dir / "resumed"))
    assert len(resumed) == STEPS and len(before_kill) >= KILL_AT
    return before_kill[:KILL_AT], resumed


def test_zero2_two_nodes_match_one_process_and_resume_exactly(tmp_path):
    """Plain process, batch 4 = 2 nodes x 1 rank x batch 2; ZeRO-2 builds the same initial model."""
    single = printed_losses(plain(train_worker_args(tmp_path / "single", 4, STEPS)))
    assert single[0] != single[-1]  # it trained
    before_kill, resumed = kill_and_resume("zero2.yaml", tmp_path / "run", tmp_path / "logs")
    np.testing.assert_allclose(before_kill, single[:KILL_AT], rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose(resumed, single, rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose(resumed[KILL_AT:], single[KILL_AT:], rtol=0, atol=RESUME_ATOL)  # measured: ~1e-7


def test_zero3_two_nodes_resume_exactly(tmp_path):
    args = train_worker_args(tmp_path / "full", 2, STEPS, "--save_every", str(KILL_AT))
    uninterrupted = printed_losses(two_nodes("zero3.yaml", args, tmp_path / "logs_full"))
    before_kill, resumed = kill_and_resume("zero3.yaml", tmp_path / "run", tmp_path / "logs")
    assert uninterrupted[0] != uninterrupted[-1]
    np.testing.assert_allclose(before_kill, uninterrupted[:KILL_AT], rtol=0, atol=RESUME_ATOL)
    np.testing.assert_allclose(resumed[KILL_AT:], uninterrupted[KILL_AT:], rtol=0, atol=RESUME_ATOL)


def test_zero3_two_nodes_match_one_process(tmp_path):
    """The MLP worker: 2 nodes x micro 2 x accumulation 2 = one process's batch of 8, ten steps, clipping on."""
    reference_out, nodes_out = tmp_path / "single.json", tmp_path / "nodes.json"
    proc = plain(zero_worker_args(reference_out, 10, 8, 1, 0.3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two_nodes("zero3.yaml", zero_worker_args(nodes_out, 10, 2, 2, 0.3), tmp_path / "logs")
    single, nodes = json.loads(reference_out.read_text()), json.loads(nodes_out.read_text())
    assert nodes["node_of_rank"] == [0, 1] and nodes["num_processes"] == 2  # rank r ran on node r
    assert nodes["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and nodes["deepspeed"]["train_batch_size"] == 8
    assert nodes["state_dict_numel"] == single["state_dict_numel"]  # the gathered full model
    np.testing.assert_allclose(nodes["losses"], single["losses"], rtol=0, atol=LOSS_ATOL)


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "123457"},
            "--num_machines 4 --machine_rank 2 --num_processes 32 --main_process_ip gpu07 --main_process_port 23457",
        ),
        (
            {"SLURM_NNODES": "2", "SLURM_NODEID": "0", "GPUS_PER_NODE": "4", "MAIN_PROCESS_IP": "10.0.0.5"},
            "--num_machines 2 --machine_rank 0 --num_processes 8 --main_process_ip 10.0.0.5 --main_process_port 20000",
        ),
    ],
)
def test_launch_node_derives_ranks_from_slurm(tmp_path, env, expected):
    """Stub `scontrol` and `accelerate` print what the script would run."""
    (tmp_path / "scontrol").write_text('#!/bin/sh\nprintf "gpu07\\ngpu08\\ngpu09\\ngpu10\\n"\n')
    (tmp_path / "accelerate").write_text('#!/bin/sh\necho "$@"\n')
    for stub in ("scontrol", "accelerate"):
        (tmp_path / stub).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full = {**base, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[07-10]", **env}
    command = ["bash", str(LAUNCH_NODE), "vlablocks/core/training/train.py", "--config_yaml", "F"]
    proc = subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert proc.stdout.startswith("launch --config_file configs/accelerate/zero2.yaml")
    assert proc.stdout.strip().endswith("vlablocks/core/training/train.py --config_yaml F")


def test_launch_node_outside_slurm_names_what_is_missing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", str(LAUNCH_NODE), str(ZERO_WORKER)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "SLURM_NNODES is not set" in proc.stderr and "srun" in proc.stderr


def test_norm_stats_reach_a_shared_run_dir_whole(tmp_path, monkeypatch):
    """Every rank writes run_dir/norm_stats.json, and ranks of other nodes may read it meanwhile: by a rename."""
    from vlablocks.core.config import PlatformConfig, parse_experiment
    from vlablocks.core.framework.synthetic import synthetic_examples
    from vlablocks.core.training.components import resolve_norm_stats

    renames = []
    rename = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), rename(src, dst)))
    platform = {"name": "t", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
    run_dir = tmp_path / "run"
    stats = resolve_norm_stats(
        parse_experiment({"platform": platform}), synthetic_examples(PlatformConfig(**platform), 4), run_dir
    )
    [(source, target)] = renames
    assert target == run_dir / "norm_stats.json" and source.parent == run_dir and not source.exists()
    assert json.loads(target.read_text()) == stats and [p.name for p in run_dir.iterdir()] == ["norm_stats.json"]


def test_a_checkpoint_missing_another_node_s_partition_is_refused_naming_shared_storage(tmp_path):
    """Node-local run directories: rank 0 cannot see rank 1's optimizer partition, so it refuses to save."""
    from vlablocks.core.training.zero_state import check_all_shards

    for name in ZERO_FILES[:2]:  # only rank 0's
        (tmp_path / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"zero_rank_1.safetensors, zero_rank_1.json are missing.*shares"):
        check_all_shards(tmp_path, world_size=2)
    for name in ZERO_FILES[2:]:
        (tmp_path / name).write_text("{}")
    check_all_shards(tmp_path, world_size=2)  # all there: no error
