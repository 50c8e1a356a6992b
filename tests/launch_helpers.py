"""Starting test workers on CPU ranks: under `accelerate launch` on one host, or as N simulated nodes on it.

Shared by tests/test_zero.py, test_zero_train.py, test_zero_resume.py and test_multinode.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
LAUNCH_NODE = ROOT / "examples" / "cluster" / "launch_node.sh"
FAILED_NODE_GRACE_S = 30


def cpu_env(**extra: str) -> dict:
    """CPU ranks even on a GPU machine (the comparisons are about ZeRO's sharding, not devices), 1 thread each."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}


def accelerate_launch(config: str, num_processes: int) -> list[str]:
    """`accelerate launch` of N ranks on this host with configs/accelerate/<config>; the script follows."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / config),
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        "0",  # a free port: other test runs may launch at the same time
    ]


def free_port() -> int:
    """A TCP port free right now (every node of a static rendezvous must be told the same one in advance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_failed(proc: subprocess.Popen, err_log: Path) -> bool:
    """The node's launcher exited non-zero, or reported a failed rank. (A torchrun agent whose rank succeeded
    waits up to 300 s in its exit barrier for the other nodes; one that reported a failure may too.)"""
    return proc.returncode not in (None, 0) or "ChildFailedError" in err_log.read_text(errors="replace")


def run_nodes(
    config: str, script: Path, args: list[str], log_dir: Path, num_nodes: int = 2, timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Simulated nodes on this host: examples/cluster/launch_node.sh once per node, as `srun` starts it under
    SLURM (SLURM_NNODES, SLURM_NODEID), one CPU rank per node, rendezvous at 127.0.0.1. -> one result per node.

    Output goes to `log_dir/node<r>.{out,err}` (no pipe to fill). Once a node has failed the others get
    `FAILED_NODE_GRACE_S` to finish before they are stopped, instead of waiting out the rendezvous timeout.
    """
    port = str(free_port())
    bin_dir = str(Path(sys.executable).parent)  # this venv's `accelerate`
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for node in range(num_nodes):
        env = cpu_env(
            SLURM_NNODES=str(num_nodes),
            SLURM_NODEID=str(node),
            GPUS_PER_NODE="1",
            MAIN_PROCESS_IP="127.0.0.1",
            MAIN_PROCESS_PORT=port,
            ACCELERATE_CONFIG=str(ACCELERATE_CONFIGS / config),
            PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        )
        out, err = (open(log_dir / f"node{node}.{kind}", "w") for kind in ("out", "err"))
        files.append((out, err))
        command = ["bash", str(LAUNCH_NODE), str(script), *args]
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True))
    deadline, failed_at = time.monotonic() + timeout, None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(_node_failed(proc, log_dir / f"node{i}.err") for i, proc in enumerate(procs)):
                failed_at = now
            if now > deadline or (failed_at is not None and now - failed_at > FAILED_NODE_GRACE_S):
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started (its own session)
                proc.wait()
        for out, err in files:
            out.close()
            err.close()
    if time.monotonic() > deadline:
        raise TimeoutError(f"simulated nodes still running after {timeout} s; logs in {log_dir}")
    return [
        subprocess.CompletedProcess(
            proc.args, proc.returncode, (log_dir / f"node{i}.out").read_text(), (log_dir / f"node{i}.err").read_text()
        )
        for i, proc in enumerate(procs)
    ]


ZERO_WORKER = ROOT / "tests" / "zero_worker.py"  # a 2-layer MLP, fixed data: per-step losses as JSON (--out)
TRAIN_WORKER = ROOT / "tests" / "train_worker.py"  # the real loop, tiny QwenOFT: losses on stdout's last line


def zero_worker_args(out: Path, steps: int, batch_size: int, accum: int, clip: float) -> list[str]:
    return [
        str(ZERO_WORKER),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch_size",
        str(batch_size),
        "--accum",
        str(accum),
        "--max_grad_norm",
        str(clip),
    ]


def train_worker_args(run_dir: Path, batch_size: int, steps: int, *extra: str) -> list[str]:
    return [
        str(TRAIN_WORKER),
        "--run_dir",
        str(run_dir),
        "--batch_size",
        str(batch_size),
        "--steps",
        str(steps),
        *extra,
    ]


def printed_losses(proc: subprocess.CompletedProcess) -> list[float]:
    """The per-step losses a train_worker run printed last (rank 0), after checking it succeeded."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
