"""Row 5: serving overhead, round trip minus model time, 2 x 224x224x3 uint8 views + state (goal <= 1.5 ms).

Reuses `benchmarks/server_overhead.py`: the policy server (a zero-cost stand-in policy in its own process)
and a bare websocket echo of the same request bytes (the floor any protocol pays), requests alternating.
"""

from __future__ import annotations

from vlablocks.bench.result import Goal, Row, Side
from vlablocks.bench.settings import BenchSettings, require_checkout

GOAL_MS = 1.5


def server_row(settings: BenchSettings) -> Row:
    require_checkout("benchmarks/server_overhead.py")
    from benchmarks.server_overhead import measure_overhead

    times, label = measure_overhead(None, settings.server_requests, settings.server_warmup)
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
            f"{label}; {settings.server_requests} requests per side after {settings.server_warmup} warm-up,"
            " loopback, alternating blocks; the medians are p50. Device-independent (CPU and network stack)."
        ],
    )
