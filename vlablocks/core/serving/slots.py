"""Connection slots, the idle timeout, host addresses and memory hand-back for the policy server.

Slot policy: at most `max_connections` open connections. A slot belongs to a client while it uses it: when every
slot is taken, a newcomer takes the slot of the connection idle longest (no request in flight, nothing received
for at least `EVICT_IDLE_S`), which is closed with `IDLE_CLOSE`; only when every connection is active is the
newcomer refused (1013). Independently, a connection that sends nothing for `idle_timeout_s` is closed. So held-
open idle sockets can never lock active clients out for more than `EVICT_IDLE_S`. Per client: an address holding
`max_connections_per_address` connections (default: no limit below `max_connections`) can only replace one of its
own idle connections, so one address churning connections cannot take the slots other clients need.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

EVICT_IDLE_S = 2.0  # a connection idle this long yields its slot to a newcomer when the server is full
DEFAULT_IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing this long is closed
IDLE_CLOSE = 1001  # websocket close code "going away": an idle connection's slot was reclaimed


@dataclass(eq=False)
class Slot:
    connection: Any
    address: str = "?"  # the client's IP address
    last_active: float = field(default_factory=time.monotonic)
    busy: bool = False  # a request is being answered

    def idle_s(self, now: float) -> float:
        return 0.0 if self.busy else now - self.last_active


def idlest(slots: set[Slot], min_idle_s: float = EVICT_IDLE_S) -> Slot | None:
    """The slot idle longest, if it has been idle at least `min_idle_s`; None when every connection is active."""
    now = time.monotonic()
    candidates = [s for s in slots if s.idle_s(now) >= min_idle_s]
    return max(candidates, key=lambda s: s.idle_s(now)) if candidates else None


# ---- hosts ----------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 in any spelling (0:0:0:0:0:0:0:1, [::1]), ::ffff:127.x, and localhost."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets."""
    name = host.strip().strip("[]")
    return f"[{name}]" if ":" in name else name


# ---- memory -----------------------------------------------------------------------------------------

_LIBC: Any = None


def release_memory() -> bool:
    """Hands freed heap memory back to the OS (glibc `malloc_trim`): the buffers of large frames a closed connection
    held stay in malloc's arenas otherwise. False where the C library has no malloc_trim (musl, macOS)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        with contextlib.suppress(OSError, TypeError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.malloc_trim.argtypes = [ctypes.c_size_t]  # AttributeError without the symbol
            _LIBC = libc
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True
