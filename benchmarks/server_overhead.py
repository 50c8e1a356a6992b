"""Serving overhead: round-trip time minus model time for 2 x 224x224x3 uint8 views + state on loopback.

Goal: <= 1.5 ms (p50). Side by side in one run (requests alternate): the policy server (msgpack + numpy decode, validation,
thread hand-off, reply) and a bare websocket echo of the same request bytes, the floor any protocol pays.

    python benchmarks/server_overhead.py [--ckpt DIR] [--requests 500]

Without --ckpt the server is a zero-cost stand-in policy in its own process; with --ckpt it is
`vlablocks serve --ckpt DIR` and the model's own time (server_timing.infer_ms) is subtracted.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import websockets.sync.client

from benchmarks.serving_common import (
    FixedCostPolicy,
    make_observation,
    percentiles,
    start_policy_server,
    start_server,
)
from deployment.client import PolicyClient, msgpack_numpy

GOAL_MS = 1.5


def measure(policy_port: int, echo_port: int, requests: int, warmup: int, block: int = 25) -> dict[str, list[float]]:
    """Alternates blocks of policy-server and bare-echo requests so both see the same machine load.

    -> {"rtt", "infer", "echo"} in ms per request; policy requests go through `PolicyClient.infer`, echo
    requests pack the same observation and unpack the reply like the client does.
    """
    times: dict[str, list[float]] = {"rtt": [], "infer": [], "echo": []}
    echo_uri = f"ws://127.0.0.1:{echo_port}"
    with (
        PolicyClient("127.0.0.1", policy_port) as client,
        websockets.sync.client.connect(echo_uri, compression=None, max_size=None, proxy=None) as echo,
    ):
        obs = make_observation({**client.metadata, "image_size": 224})  # the benchmark's fixed payload
        for i in range(warmup + requests):
            start = time.perf_counter()
            reply = client.infer(obs)
            rtt = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            echo.send(msgpack_numpy.packb(obs))
            msgpack_numpy.unpackb(echo.recv())
            echo_ms = (time.perf_counter() - start) * 1e3
            if i >= warmup:
                times["rtt"].append(rtt)
                times["infer"].append(reply["server_timing"]["infer_ms"])
                times["echo"].append(echo_ms)
    return times


def measure_overhead(ckpt: str | None, requests: int, warmup: int) -> tuple[dict[str, list[float]], str]:
    """Starts the policy server (`ckpt` or the zero-cost stand-in) and the bare echo, each in its own process,
    runs `measure` and stops them -> (times as `measure` returns them, the server's label)."""
    policy_process, policy_port, label = start_policy_server(ckpt, model_ms=0.0)
    echo_process, echo_port = start_server([sys.executable, "benchmarks/serving_common.py", "--echo"])
    try:
        return measure(policy_port, echo_port, requests, warmup), label
    finally:
        for process in (policy_process, echo_process):
            process.terminate()
            process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="serve this checkpoint instead of the zero-cost stand-in")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    times, label = measure_overhead(args.ckpt, args.requests, args.warmup)
    rtt, infer, echo = times["rtt"], times["infer"], times["echo"]
    overhead = [r - m for r, m in zip(rtt, infer)]
    nbytes = len(msgpack_numpy.packb(make_observation(FixedCostPolicy.metadata)))
    p50 = float(np.median(overhead))
    print(f"server: {label}; request {nbytes / 1e6:.3f} MB (2 x 224x224x3 uint8 + state), {args.requests} requests")
    print(f"round trip          {percentiles(rtt)}")
    print(f"model (infer_ms)    {percentiles(infer)}")
    print(f"overhead (rt-model) {percentiles(overhead)}")
    print(f"bare websocket echo {percentiles(echo)}")
    print(f"overhead / echo floor (p50): {p50 / float(np.median(echo)):.2f}x")
    verdict = "meets" if p50 <= GOAL_MS else "MISSES"
    print(f"overhead p50 {p50:.3f} ms {verdict} the {GOAL_MS} ms goal ({p50 / GOAL_MS:.2f}x of it)")
    return 0 if p50 <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
