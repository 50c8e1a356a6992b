"""Load: 16 concurrent clients x 100 requests each against one policy server; 0 errors required.

    python benchmarks/server_load.py [--ckpt DIR] [--clients 16] [--requests 100] [--model-ms 0]

Each client is a `PolicyClient` on its own connection and thread, sending 2 x 224x224x3 uint8 views + state
(or the checkpoint's cameras) back to back. Model calls are serialized on the server, so latency under load
is about (clients x model time) + overhead; the run prints p50/p99 latency, throughput and the error count,
and the same client's latency alone (1 client) side by side.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
from serving_common import FixedCostPolicy, make_observation, percentiles, start_policy_server

from deployment.client import PolicyClient


def run_clients(port: int, clients: int, requests: int) -> tuple[list[float], list[float], list[str], float]:
    """-> (latency ms, server infer ms, errors, wall seconds) over `clients` threads x `requests` requests."""
    latencies: list[float] = []
    infer: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client_loop(index: int) -> None:
        try:
            with PolicyClient("127.0.0.1", port, request_timeout=120) as client:
                metadata = {**FixedCostPolicy.metadata, **client.metadata}
                obs = make_observation(metadata, seed=index)
                expected = (metadata["action_horizon"], metadata["action_dim"])
                barrier.wait(60)
                for _ in range(requests):
                    start = time.perf_counter()
                    try:
                        reply = client.infer(obs)
                    except Exception as exc:  # counted, reported, and the run fails
                        with lock:
                            errors.append(f"client {index}: {type(exc).__name__}: {exc}")
                        continue
                    elapsed = (time.perf_counter() - start) * 1e3
                    with lock:
                        if reply["actions"].shape != expected:
                            errors.append(f"client {index}: actions {reply['actions'].shape}, expected {expected}")
                        latencies.append(elapsed)
                        infer.append(reply["server_timing"]["infer_ms"])
        except Exception as exc:
            with lock:
                errors.append(f"client {index} could not run: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, infer, errors, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="serve this checkpoint (the tiny model) instead of the stand-in policy")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--model-ms", type=float, default=0.0, help="stand-in policy's time per call")
    args = parser.parse_args()

    process, port, label = start_policy_server(args.ckpt, args.model_ms)
    try:
        alone, _, alone_errors, _ = run_clients(port, 1, min(args.requests, 50))
        latencies, infer, errors, wall = run_clients(port, args.clients, args.requests)
    finally:
        process.terminate()
        process.wait(10)
    errors += alone_errors
    total = args.clients * args.requests
    print(f"server: {label}")
    print(f"{args.clients} clients x {args.requests} requests: {len(latencies)}/{total} answered, {len(errors)} errors")
    for line in errors[:5]:
        print(f"  {line}")
    if latencies:
        print(f"latency under load  {percentiles(latencies)}")
        print(f"latency, 1 client   {percentiles(alone)}")
        print(f"model time (server) {percentiles(infer)}")
        print(
            f"throughput {len(latencies) / wall:.1f} requests/s over {wall:.2f} s; "
            f"p50 under load / alone: {np.median(latencies) / np.median(alone):.1f}x"
        )
    return 0 if not errors and len(latencies) == total else 1


if __name__ == "__main__":
    sys.exit(main())
