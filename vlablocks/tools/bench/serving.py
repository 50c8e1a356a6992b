"""The server row's two servers, each in its own process (as in deployment, so client and server share no GIL).

    python -m vlablocks.tools.bench.serving [--port 0] [--model-ms 0]   # the policy server on a fixed-cost stand-in
    python -m vlablocks.tools.bench.serving --echo [--port 0]           # a bare websocket echo: the transport floor

The stand-in policy has 2 cameras of 224 x 224, an 8-D state and 8 x 7 actions; the echo answers each
message with a fixed 8 x 7 float32 reply. Each prints its `ws://HOST:PORT` address once it listens.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import numpy as np

from deployment.client import msgpack_numpy
from vlablocks.core.flags import FlagParser

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

    def check_request(self, request: dict, max_prompt_tokens: int) -> None:
        """No tokenizer: the observation contract's checks are all there is."""

    def session(self) -> FixedCostPolicy:
        return self

    def infer(self, obs: dict) -> dict:
        if self.model_seconds:
            time.sleep(self.model_seconds)
        return {"actions": np.zeros((8, 7), np.float32)}


def start_server(echo: bool = False, model_ms: float = 0.0, timeout: float = 300.0) -> tuple[subprocess.Popen, int]:
    """Starts this module as a server process (the stand-in policy, or the echo) -> (process, port it printed)."""
    args = [sys.executable, "-m", __name__, "--port", "0", "--model-ms", str(model_ms)] + (["--echo"] if echo else [])
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
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


async def serve_echo(port: int) -> None:
    from websockets.asyncio.server import serve

    reply = msgpack_numpy.packb({"actions": np.zeros((8, 7), np.float32)})

    async def handler(connection) -> None:
        async for _ in connection:
            await connection.send(reply)

    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None) as server:
        print(f"echo on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


async def serve_policy(port: int, model_ms: float) -> None:
    from vlablocks.core.serving.server import PolicyServer

    server = PolicyServer(FixedCostPolicy(model_ms), port=port)
    handle = await server.start()
    print(f"policy on ws://127.0.0.1:{server.port}", flush=True)
    async with handle:
        await handle.serve_forever()


def main() -> None:
    parser = FlagParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-ms", type=float, default=0.0, help="the stand-in policy's time per call")
    parser.add_argument("--echo", action="store_true", help="bare websocket echo instead of the policy server")
    args = parser.parse_args()
    asyncio.run(serve_echo(args.port) if args.echo else serve_policy(args.port, args.model_ms))


if __name__ == "__main__":
    main()
