"""Shared pieces of the serving benchmarks: server processes, observations, latency summaries.

Run as a script it is the benchmarks' stand-in server: `python benchmarks/serving_common.py --port 0
[--model-ms 5]` serves a fixed-cost policy (2 cameras of 224 x 224, 8-D state, 8 x 7 actions), and `--echo`
serves a bare websocket that answers each message with a fixed 8 x 7 float32 reply (the transport floor).
Servers run in their own process, as in deployment, so client and server do not share a GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from deployment.client import msgpack_numpy

REPO = Path(__file__).resolve().parents[1]
PORT_LINE = re.compile(r"ws://[^\s:]+:(\d+)")


class FixedCostPolicy:
    """Zero actions after `model_ms` of sleeping: a model whose time is known and releases the GIL."""

    metadata = dict(
        action_horizon=8,
        action_dim=7,
        state_dim=8,
        camera_keys=["image", "wrist_image"],
        image_size=224,
        embodiment="bench",
    )

    def __init__(self, model_ms: float) -> None:
        self.model_seconds = model_ms / 1e3

    def infer(self, obs: dict) -> dict:
        if self.model_seconds:
            time.sleep(self.model_seconds)
        return {"actions": np.zeros((8, 7), np.float32)}


def start_server(args: list[str], timeout: float = 300.0) -> tuple[subprocess.Popen, int]:
    """Starts a server subprocess and returns it with the port it printed (`... ws://HOST:PORT ...`)."""
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = PORT_LINE.search(line)
        if match:
            return process, int(match.group(1))
    process.kill()
    raise RuntimeError(f"server {' '.join(args)} exited or printed no ws:// address (exit code {process.poll()})")


def start_policy_server(ckpt: str | None, model_ms: float) -> tuple[subprocess.Popen, int, str]:
    """The tiny-model server (`vlablocks serve --ckpt`) or the fixed-cost stand-in -> (process, port, label)."""
    if ckpt:
        process, port = start_server([sys.executable, "-m", "vlablocks.cli", "serve", "--ckpt", ckpt, "--port", "0"])
        return process, port, f"checkpoint {ckpt}"
    process, port = start_server([sys.executable, __file__, "--port", "0", "--model-ms", str(model_ms)])
    return process, port, f"fixed-cost stand-in policy ({model_ms} ms per call)"


def make_observation(metadata: dict, seed: int = 0) -> dict:
    """A random observation matching the server's metadata: uint8 views of image_size, float32 state."""
    rng = np.random.default_rng(seed)
    size = metadata["image_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return {
        "images": {key: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for key in metadata["camera_keys"]},
        "state": rng.normal(size=metadata["state_dim"]).astype(np.float32),
        "prompt": "pick up the red block and put it in the bowl",
    }


def percentiles(values_ms: list[float]) -> str:
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return f"p50 {p50:7.3f}  p90 {p90:7.3f}  p99 {p99:7.3f}  mean {np.mean(values_ms):7.3f} ms"


async def _serve_echo(port: int) -> None:
    from websockets.asyncio.server import serve

    reply = msgpack_numpy.packb({"actions": np.zeros((8, 7), np.float32)})

    async def handler(connection) -> None:
        async for _ in connection:
            await connection.send(reply)

    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None) as server:
        print(f"echo on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


async def _serve_policy(port: int, model_ms: float) -> None:
    from deployment.server import PolicyServer

    server = PolicyServer(FixedCostPolicy(model_ms), port=port)
    handle = await server.start()
    print(f"policy on ws://127.0.0.1:{server.port}", flush=True)
    async with handle:
        await handle.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-ms", type=float, default=0.0)
    parser.add_argument("--echo", action="store_true", help="bare websocket echo instead of the policy server")
    args = parser.parse_args()
    asyncio.run(_serve_echo(args.port) if args.echo else _serve_policy(args.port, args.model_ms))


if __name__ == "__main__":
    main()
