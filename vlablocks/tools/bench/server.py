"""Row 5: serving overhead, round trip minus model time, 2 x 224x224x3 uint8 views + state (goal <= 1.5 ms).

The policy server (a zero-cost stand-in policy in its own process, see serving.py) and a bare websocket
echo of the same request bytes (the floor any protocol pays), requests alternating over loopback.
"""

from __future__ import annotations

import time

import websockets.sync.client

from deployment.client import PolicyClient, msgpack_numpy
from vlablocks.tools.bench.result import Goal, Row, Side
from vlablocks.tools.bench.serving import make_observation, start_server
from vlablocks.tools.bench.settings import BenchSettings

GOAL_MS = 1.5


def measure(policy_port: int, echo_port: int, requests: int, warmup: int) -> dict[str, list[float]]:
    """Alternates policy-server and bare-echo requests, one by one, so both see the same machine load.

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


def measure_overhead(requests: int, warmup: int) -> dict[str, list[float]]:
    """Starts the zero-cost stand-in policy server and the bare echo, each in its own process, runs `measure`
    and stops them -> the times as `measure` returns them."""
    policy_process, policy_port = start_server(model_ms=0.0)
    try:
        echo_process, echo_port = start_server(echo=True)
    except Exception:
        policy_process.terminate()
        raise
    try:
        return measure(policy_port, echo_port, requests, warmup)
    finally:
        for process in (policy_process, echo_process):
            process.terminate()
            process.wait(10)


def server_row(settings: BenchSettings) -> Row:
    times = measure_overhead(settings.server_requests, settings.server_warmup)
    overhead = [rtt - model for rtt, model in zip(times["rtt"], times["infer"])]
    return Row(
        key="server",
        title="server: round trip minus model time, 2 x 224x224x3 + state",
        unit="ms",
        ours=Side("policy server overhead", overhead),
        baseline=Side("bare websocket echo", times["echo"]),
        ratio_name="server / echo",
        goals=[Goal("ours", "<=", GOAL_MS)],
        notes=[
            f"fixed-cost stand-in policy (0 ms per call) in its own process; {settings.server_requests} requests"
            f" per side after {settings.server_warmup} warm-up, loopback, alternating; the medians are p50."
            " Device-independent (CPU and network stack)."
        ],
    )
