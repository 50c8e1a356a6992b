"""The policy server: websocket + msgpack (openpi protocol), health check, API key, bad-input replies.

The event loop only decodes, validates and answers; inference runs in a single worker thread, so model calls
are serialized while health checks, handshakes and other clients' bad-input replies are never blocked by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from deployment.client import msgpack_numpy
from deployment.client.protocol import (
    API_KEY_HEADER,
    API_KEY_PREFIX,
    HEALTH_PATH,
    PROTOCOL_VERSION,
    ProtocolError,
    one_line,
)
from vlablocks.core.processor.embodiment import embodiment_sizes
from vlablocks.core.serving.policy import METADATA_KEYS, Policy, ServedPolicy, served
from vlablocks.core.serving.requests import check_prompt_chars, validate_observation
from vlablocks.core.serving.slots import (
    DEFAULT_IDLE_TIMEOUT_S,
    EVICT_IDLE_S,
    IDLE_CLOSE,
    Slot,
    idlest,
    is_loopback,
    release_memory,
    url_host,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_MB = 16.0
DEFAULT_MAX_PROMPT_CHARS = 2000  # checked before anything is tokenized
DEFAULT_MAX_PROMPT_TOKENS = 256  # checked with the policy's tokenizer (`check_prompt`), before the model
DEFAULT_MAX_CONNECTIONS = 32
MAX_QUEUED_FRAMES = 2  # frames read ahead per connection: memory <= connections x (queue + 1) x max payload
BUSY = 1013  # websocket close code "try again later": the connection limit is reached
RELEASE_DELAY_S = 0.5  # connections ending within this share one malloc_trim
MAX_LOG_CHARS = 300  # a log line never quotes more of a client's input than this
MAX_TRACEBACK_CHARS = 4000  # the first inference failure's stack (frames only: no message, so no client input)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning owed when the server listens beyond loopback without an API key, else None."""
    if api_key or is_loopback(host):
        return None
    return (
        f"listening on {url_host(host)} without an API key: anyone who can reach this port can drive the robot; "
        "set $VLABLOCKS_API_KEY or --api-key-file"
    )


def check_limits(
    max_payload_mb: float, max_prompt_chars: int, max_prompt_tokens: int, max_connections: int, idle_timeout_s: float
) -> None:
    """ValueError naming the first nonsensical limit (NaN, inf, zero or negative), before anything opens."""
    if not 0 < max_payload_mb < 4096:  # False for NaN
        raise ValueError(f"--max-payload-mb must be a number in (0, 4096), got {max_payload_mb}")
    for name, value in (
        ("max_prompt_chars", max_prompt_chars),
        ("--max-prompt-tokens", max_prompt_tokens),
        ("--max-connections", max_connections),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not EVICT_IDLE_S <= idle_timeout_s < float("inf"):
        raise ValueError(f"--idle-timeout-s must be a number of seconds >= {EVICT_IDLE_S:g}, got {idle_timeout_s}")


def check_per_address(max_per_address: int | None, max_connections: int) -> int:
    """The per-address limit (None: max_connections, i.e. none); ValueError unless 1..max_connections."""
    if max_per_address is None:
        return max_connections
    if not isinstance(max_per_address, int) or not 1 <= max_per_address <= max_connections:
        raise ValueError(
            f"--max-connections-per-address must be an integer in 1..{max_connections} (--max-connections), "
            f"got {max_per_address!r}"
        )
    return max_per_address


class PolicyServer:
    """Serves `policy` on ws://host:port. `port=0` picks a free port (see `port` once started)."""

    def __init__(
        self,
        policy: Policy | ServedPolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections_per_address: int | None = None,
    ) -> None:
        policy = served(policy)
        missing = [k for k in METADATA_KEYS if k not in policy.metadata]
        if missing:
            raise ValueError(f"policy metadata lacks {missing}; a served policy must declare {list(METADATA_KEYS)}")
        check_limits(max_payload_mb, max_prompt_chars, max_prompt_tokens, max_connections, idle_timeout_s)
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_payload_bytes = int(max_payload_mb * 2**20)
        self.max_connections = max_connections
        self.max_per_address = check_per_address(max_connections_per_address, max_connections)
        self.idle_timeout_s = float(idle_timeout_s)
        self.slots: set[Slot] = set()
        self.metadata = {
            **policy.metadata,
            "max_payload_bytes": self.max_payload_bytes,
            "max_prompt_chars": max_prompt_chars,
            "max_prompt_tokens": max_prompt_tokens,
            "max_connections": max_connections,
            "max_connections_per_address": self.max_per_address,
            "idle_timeout_s": self.idle_timeout_s,
            "protocol": PROTOCOL_VERSION,
        }
        self._warned_nonfinite = False
        self._logged_traceback = False
        self._release_pending = False
        self._tasks: set[asyncio.Future] = set()
        # One worker: model calls never overlap, and the event loop never runs one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._packed_metadata = msgpack_numpy.packb(self.metadata)

    @property
    def connections(self) -> int:
        return len(self.slots)

    @property
    def url(self) -> str:
        return f"ws://{url_host(self.host)}:{self.port}"

    # ---- HTTP side of the handshake -----------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            values = request.headers.get_all(API_KEY_HEADER)
            sent = values[0] if len(values) == 1 else ""
            if not hmac.compare_digest(sent.encode(), (API_KEY_PREFIX + self.api_key).encode()):
                reason = "missing" if not values else "wrong" if len(values) == 1 else f"{len(values)} headers for one"
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    f"{reason} API key: send the header '{API_KEY_HEADER}: {API_KEY_PREFIX}<key>' "
                    "(PolicyClient(host, port, api_key=...))\n",
                )
        return None

    # ---- one request --------------------------------------------------------------------------------
    @staticmethod
    def _infer(session: ServedPolicy, obs: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        result = session.infer(obs)
        return result, (time.perf_counter() - start) * 1e3

    def _check_actions(self, result: dict, obs: dict) -> np.ndarray:
        """The reply's actions: float [T, D], D the request's embodiment's own action_dim (cross-embodiment)."""
        actions = np.asarray(result.get("actions") if isinstance(result, dict) else None)
        expected = (self.metadata["action_horizon"], embodiment_sizes(self.metadata, obs)[1])
        if actions.shape != expected or actions.dtype.kind != "f":
            raise ProtocolError(
                "inference_error",
                f"the policy returned actions of shape {actions.shape} dtype {actions.dtype}; expected float {expected}",
            )
        bad = int((~np.isfinite(actions)).sum())
        if bad:
            message = (
                f"the policy returned {bad} non-finite action values (NaN/inf) of {actions.size}: "
                "its weights or normalization stats hold NaN/inf; check the checkpoint"
            )
            if not self._warned_nonfinite:  # once: a broken checkpoint would otherwise flood the log
                logger.error(message)
                self._warned_nonfinite = True
            raise ProtocolError("inference_error", message)
        return actions.astype(np.float32, copy=False)

    def _check_request(self, obs: dict) -> None:
        """Prompt characters before anything is tokenized, then the served policy's own checks."""
        check_prompt_chars(obs["prompt"], self.metadata["max_prompt_chars"])
        try:
            self.policy.check_request(obs, self.metadata["max_prompt_tokens"])
        except (ValueError, KeyError) as exc:  # a client mistake: its own one-line message
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ProtocolError("invalid_value", str(message)) from None

    def _log_failure(self, exc: Exception) -> None:
        """One bounded line per failed inference (the client's input is cut); the stack once, frames only."""
        logger.error("policy inference failed: %s", one_line(f"{type(exc).__name__}: {exc}", MAX_LOG_CHARS))
        if not self._logged_traceback:
            self._logged_traceback = True
            stack = "".join(traceback.format_tb(exc.__traceback__))[-MAX_TRACEBACK_CHARS:]
            logger.error("first inference failure's stack (later ones are not shown):\n%s", stack)

    async def _answer(self, message: bytes | str, session: ServedPolicy) -> bytes | str:
        """A binary msgpack reply, or an error as a text frame (see deployment/client/protocol.py)."""
        received = time.perf_counter()
        try:
            if isinstance(message, str):
                raise ProtocolError("malformed_message", "expected a binary msgpack frame, got a text frame")
            obs = validate_observation(msgpack_numpy.unpackb(message), self.metadata)
            self._check_request(obs)
            loop = asyncio.get_running_loop()
            try:
                result, infer_ms = await loop.run_in_executor(self._executor, self._infer, session, obs)
            except Exception as exc:  # the model failed on a valid observation: report, keep serving
                self._log_failure(exc)
                raise ProtocolError("inference_error", f"{type(exc).__name__}: {exc}") from None
            actions = self._check_actions(result, obs)
        except ProtocolError as exc:
            return exc.to_text()
        timing = {"infer_ms": infer_ms, "total_ms": (time.perf_counter() - received) * 1e3}
        return msgpack_numpy.packb({"actions": actions, "server_timing": timing})

    # ---- one connection -----------------------------------------------------------------------------
    async def _admit(self, connection: ServerConnection) -> Slot | None:
        """A slot for a new connection: a free one, else the idlest connection's (closed), else None (refused).
        A client address already holding `max_per_address` connections can only replace one of its own idle ones."""
        address = (connection.remote_address or ("?",))[0]
        own = {s for s in self.slots if s.address == address}
        if len(own) >= self.max_per_address or len(self.slots) >= self.max_connections:
            limited = len(own) >= self.max_per_address
            victim = idlest(own if limited else self.slots)
            if victim is None:
                reason = (
                    f"{len(own)} connections open from your address, the limit per address"
                    if limited
                    else f"server busy: {self.max_connections} connections active"
                )
                await connection.close(BUSY, f"{reason}; retry later")
                return None
            self.slots.discard(victim)
            closing = asyncio.ensure_future(victim.connection.close(IDLE_CLOSE, "idle: slot given to a waiting client"))
            self._tasks.add(closing)
            closing.add_done_callback(self._tasks.discard)
        slot = Slot(connection, address)
        self.slots.add(slot)
        return slot

    async def _handle(self, connection: ServerConnection) -> None:
        slot = await self._admit(connection)
        if slot is None:
            return
        session = self.policy.session()  # per-connection episode state
        try:
            await connection.send(self._packed_metadata)
            while True:
                try:
                    message = await asyncio.wait_for(connection.recv(), self.idle_timeout_s)
                except TimeoutError:
                    await connection.close(IDLE_CLOSE, f"idle for {self.idle_timeout_s:g} s; reconnect to continue")
                    break
                slot.busy = True
                reply = await self._answer(message, session)
                del message  # the frame's buffer is not held while the reply is sent
                await connection.send(reply)
                slot.busy, slot.last_active = False, time.monotonic()
        except ConnectionClosed:
            pass  # the client left (or sent an over-limit message: websockets closed with 1009)
        finally:
            self.slots.discard(slot)
            self._schedule_release()

    def _schedule_release(self) -> None:
        """Frees the heap a closed connection's frames held (malloc_trim), once for connections ending together."""
        if self._release_pending:
            return
        self._release_pending = True
        loop = asyncio.get_running_loop()

        def release() -> None:
            self._release_pending = False
            task = asyncio.ensure_future(loop.run_in_executor(None, release_memory))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_later(RELEASE_DELAY_S, release)

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> Server:
        """Binds and starts accepting; `self.port` is the bound port afterwards."""
        warning = exposure_warning(self.host, self.api_key)
        if warning:
            logger.warning(warning)
        server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_payload_bytes,
            max_queue=MAX_QUEUED_FRAMES,
            compression=None,
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def running_server(policy: Policy | ServedPolicy, *, timeout: float = 10.0, **kwargs: object) -> Iterator[PolicyServer]:
    """Runs a `PolicyServer` in a background thread for the `with` block (tests, benchmarks, notebooks).

    Binds 127.0.0.1 on a free port unless `host`/`port` say otherwise; `server.port` is the bound port.
    """
    kwargs.setdefault("port", 0)
    server = PolicyServer(policy, **kwargs)
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            handle = await server.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            await stop
        finally:
            handle.close()
            await handle.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="policy-server", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError(f"policy server did not start within {timeout} s")
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        server.close()


__all__ = ["DEFAULT_MAX_PAYLOAD_MB", "PolicyServer", "running_server"]
