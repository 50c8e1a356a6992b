"""A DataLoader worker dies with the process that started it, even when SIGKILL gives that process no chance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent("""
    import os, sys, time
    from vlablocks.core.dataloader.loader import build_dataloader

    class Slow:
        calls = 0
        def __len__(self):
            return 100
        def __getitem__(self, index):
            Slow.calls += 1  # per worker process
            if Slow.calls > 2:  # the first batch comes back, then the worker is busy for a long time
                time.sleep(120)
            return os.getpid()

    loader = iter(build_dataloader(Slow(), 2, seed=0, num_workers=1))
    print(next(loader)[0], flush=True)   # the worker's pid
    time.sleep(120)
    """)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited (PID 1 may not reap it in a container)


def test_a_worker_dies_when_its_training_process_is_killed():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(child.stdout.readline())
        assert worker != child.pid and alive(worker)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5  # the worker sleeps for 120 s: only the parent-death signal ends it now
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), f"worker {worker} outlived its killed parent"
    finally:
        child.kill()
        child.wait(10)
