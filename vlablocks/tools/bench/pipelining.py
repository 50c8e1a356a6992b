"""Memory under a pipelining attack: `python -m vlablocks.tools.bench.pipelining [--attackers 24 --frames 20]`.

Serves a tiny QwenOFT in a child process with `--max-connections C` and `--max-payload-mb M`, then opens
more connections than C, each sending frames just under M MiB as fast as the socket takes them without
reading a reply (a malformed-camera observation: decoded, then refused). The server's resident memory is
sampled every 20 ms; its growth over the idle server is compared with the bound the limits imply, and measured
again 2 s after the attackers closed (`rss_after_close_mb`: what the server kept):

    bound = C x (MAX_QUEUED_FRAMES + 2) x M   frames read ahead, the one being received, its decoded copy

Without the limits (no connection cap, websockets' default 16-frame queue) the same attack held one
buffer per pipelined frame: 1.9 GB for 6 connections of 16 MiB frames (the reliability issue).
`tests/test_hostile_inputs.py` runs a small configuration; the documented figure is the default one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from deployment.client import msgpack_numpy
from vlablocks.core.flags import FlagParser
from vlablocks.core.serving.server import MAX_QUEUED_FRAMES, running_server

SAMPLE_S = 0.02
SETTLE_S = 2.0  # after the attackers close: the server hands their buffers back (core/serving/slots.py)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def attack_frame(frame_bytes: int) -> bytes:
    """An observation of about `frame_bytes` whose camera the policy does not have (refused after decoding)."""
    side = int((frame_bytes / 3) ** 0.5)
    image = np.full((side, side, 3), 7, dtype=np.uint8)
    return msgpack_numpy.packb({"prompt": "go", "images": {"elsewhere": image}})


def _pipeline(url: str, frame: bytes, frames: int, stop: threading.Event, outcome: dict) -> None:
    try:
        with websockets.sync.client.connect(url, compression=None, proxy=None, max_size=None) as ws:
            ws.recv(timeout=10)  # metadata, or a 1013 close when the server is full
            for _ in range(frames):
                if stop.is_set():
                    break
                ws.send(frame)
                outcome["sent"] += 1
            stop.wait()
    except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
        outcome["refused"] += 1


def run(max_connections: int, max_payload_mb: float, attackers: int, frames: int, seconds: float) -> dict:
    """Starts the server child, attacks it, returns peak RSS growth, the bound and what was sent."""
    child = subprocess.Popen(
        [sys.executable, "-m", "vlablocks.tools.bench.pipelining", "serve"]
        + ["--max-connections", str(max_connections), "--max-payload-mb", str(max_payload_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(child.stdout.readline())
        url = f"ws://127.0.0.1:{port}"
        time.sleep(0.5)
        idle = rss_bytes(child.pid)
        frame = attack_frame(int(max_payload_mb * 2**20 * 0.95))
        stop, outcome = threading.Event(), {"sent": 0, "refused": 0}
        threads = [
            threading.Thread(target=_pipeline, args=(url, frame, frames, stop, outcome)) for _ in range(attackers)
        ]
        peak, deadline = idle, time.monotonic() + seconds
        for thread in threads:
            thread.start()
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(child.pid))
            time.sleep(SAMPLE_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        time.sleep(SETTLE_S)  # the attackers' connections are closed: what the server still holds
        after = rss_bytes(child.pid)
        alive = child.poll() is None
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    bound = max_connections * (MAX_QUEUED_FRAMES + 2) * max_payload_mb * 2**20
    growth = peak - idle
    return {
        "attackers": attackers,
        "max_connections": max_connections,
        "max_payload_mb": max_payload_mb,
        "frames_sent": outcome["sent"],
        "bytes_sent_mb": round(outcome["sent"] * len(frame) / 2**20, 1),
        "connections_refused": outcome["refused"],
        "rss_growth_mb": round(growth / 2**20, 1),
        "rss_after_close_mb": round((after - idle) / 2**20, 1),
        "bound_mb": round(bound / 2**20, 1),
        "growth_over_bound": round(growth / bound, 3),
        "server_alive": alive,
    }


def serve(max_connections: int, max_payload_mb: float) -> None:
    """The child: a tiny policy on loopback, its port on stdout, until stdin closes."""
    from vlablocks.tools.bench.hostile import tiny_policy

    with running_server(tiny_policy(), max_connections=max_connections, max_payload_mb=max_payload_mb) as server:
        print(server.port, flush=True)
        sys.stdin.read()


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["attack", "serve"], default="attack", help="serve: the child")
    parser.add_argument("--max-connections", type=int, default=8)
    parser.add_argument("--max-payload-mb", type=float, default=16.0)
    parser.add_argument("--attackers", type=int, default=24, help="connections opened (more than the limit)")
    parser.add_argument("--frames", type=int, default=20, help="frames each connection pipelines")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long RSS is sampled")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.max_connections, args.max_payload_mb)
        return 0
    result = run(args.max_connections, args.max_payload_mb, args.attackers, args.frames, args.seconds)
    print(json.dumps(result, indent=1))
    return 0 if result["server_alive"] and result["growth_over_bound"] <= 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
