"""Load with idle sockets held: `python -m vlablocks.tools.bench.load [--clients 16 --requests 100 --idle 200]`.

Starts `vlablocks serve` on the tiny QwenOFT checkpoint of the hostile bench, at the default limits unless told
otherwise. `--idle` sockets connect first and then send nothing, held open until the server closes them (idle
timeout, or their slot given to a newcomer; beyond `--max-connections` they are refused with 1013); with
`--reconnect` each one closed or refused connects again after 0.1 s (a churning attacker); `--idle-from
127.0.0.2` makes them another client address than the active clients'. After `--hold-s`
seconds, `--clients` active clients connect and send `--requests` valid requests each, one at a time.
Reported: active clients refused (closed with 1013 before or while being served), failed requests, latency
p50 / p99 / max, and what the idle sockets went through. Exit status 1 when an active client was refused or a
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import websockets.asyncio.client
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from deployment.client import msgpack_numpy
from vlablocks.core.flags import FlagParser
from vlablocks.tools.bench.hostile import start_server, tiny_policy, valid_request

RECONNECT_S = 0.1


async def _hold_idle(
    url: str, count: int, reconnect: bool, source: str | None, stop: asyncio.Event, tally: dict
) -> None:
    local = {"local_addr": (source, 0)} if source else {}

    async def one() -> None:
        while not stop.is_set():
            try:
                async with websockets.asyncio.client.connect(url, compression=None, proxy=None, **local) as ws:
                    await ws.recv()  # metadata, or the close of a full server
                    tally["admitted"] += 1
                    await ws.wait_closed()  # idle until the server closes it
                    tally["closed_by_server"] += 1
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                tally["refused"] += 1
            if not reconnect:
                return
            await asyncio.sleep(RECONNECT_S)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _active(url: str, requests: int, message: bytes, outcome: dict, lock: threading.Lock) -> None:
    latencies, refused, failed = [], 0, 0
    while len(latencies) < requests:  # a refused or dropped client connects again, as PolicyClient does
        try:
            with websockets.sync.client.connect(url, compression=None, proxy=None) as ws:
                ws.recv(timeout=10)  # metadata, or the close of a full server
                while len(latencies) < requests:
                    start = time.perf_counter()
                    ws.send(message)
                    reply = ws.recv(timeout=30)
                    latencies.append((time.perf_counter() - start) * 1e3)
                    failed += not isinstance(reply, bytes)
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            refused += 1
            time.sleep(RECONNECT_S)
    with lock:
        outcome["latencies"] += latencies
        outcome["refused"] += refused
        outcome["failed"] += failed


def run(
    clients: int,
    requests: int,
    idle: int,
    hold_s: float,
    extra: list[str],
    reconnect: bool = False,
    idle_from: str | None = None,
) -> dict:
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        checkpoint = tiny_policy().save_pretrained(Path(tmp) / "ckpt")
        process, port = start_server(checkpoint, Path(tmp) / "server.log", extra=extra)
        url = f"ws://127.0.0.1:{port}"
        tally = dict.fromkeys(("admitted", "closed_by_server", "refused"), 0)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        holder = threading.Thread(
            target=loop.run_until_complete, args=(_hold_idle(url, idle, reconnect, idle_from, stop, tally),)
        )
        try:
            holder.start()
            time.sleep(hold_s)
            message = msgpack_numpy.packb(valid_request())
            outcome, lock = {"latencies": [], "refused": 0, "failed": 0}, threading.Lock()
            threads = [
                threading.Thread(target=_active, args=(url, requests, message, outcome, lock)) for _ in range(clients)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
        finally:
            loop.call_soon_threadsafe(stop.set)
            holder.join(timeout=30)
            process.terminate()
            process.wait(timeout=30)
    latencies = np.asarray(outcome["latencies"])
    return {
        "clients": clients,
        "requests_each": requests,
        "idle_sockets": idle,
        "idle_reconnect": reconnect,
        "idle_from": idle_from or "127.0.0.1",
        "server_options": extra,
        "served": int(latencies.size),
        "active_refused": outcome["refused"],
        "failed_requests": outcome["failed"],
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "max_ms": round(float(latencies.max()), 1) if latencies.size else None,
        "seconds": round(seconds, 1),
        "idle_connections": tally,
    }


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100, help="requests per active client")
    parser.add_argument("--idle", type=int, default=200, help="idle sockets held open")
    parser.add_argument("--hold-s", type=float, default=3.0, help="seconds the idle sockets are held before the load")
    parser.add_argument("--reconnect", action="store_true", help="idle sockets closed or refused connect again")
    parser.add_argument("--idle-from", help="source address of the idle sockets (e.g. 127.0.0.2: another client)")
    args, extra = parser.parse_known_args(argv)  # anything else goes to `vlablocks serve` (e.g. --max-connections)
    if min(args.clients, args.requests) < 1 or args.idle < 0 or not args.hold_s >= 0:
        parser.error("--clients and --requests must be >= 1, --idle and --hold-s >= 0")
    result = run(args.clients, args.requests, args.idle, args.hold_s, extra, args.reconnect, args.idle_from)
    print(json.dumps(result, indent=1))
    return 1 if result["active_refused"] or result["failed_requests"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
