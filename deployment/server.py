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
)
from deployment.policy import METADATA_KEYS, Policy
from deployment.validation import validate_observation

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_MB = 16.0


class PolicyServer:
    """Serves `policy` on ws://host:port. `port=0` picks a free port (see `port` once started)."""

    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
    ) -> None:
        missing = [k for k in METADATA_KEYS if k not in policy.metadata]
        if missing:
            raise ValueError(f"policy metadata lacks {missing}; a served policy must declare {list(METADATA_KEYS)}")
        if max_payload_mb <= 0:
            raise ValueError(f"max_payload_mb must be > 0, got {max_payload_mb}")
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_payload_bytes = int(max_payload_mb * 2**20)
        self.metadata = {**policy.metadata, "max_payload_bytes": self.max_payload_bytes, "protocol": PROTOCOL_VERSION}
        # One worker: model calls never overlap, and the event loop never runs one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._packed_metadata = msgpack_numpy.packb(self.metadata)

    # ---- HTTP side of the handshake -----------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            sent = request.headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(sent.encode(), (API_KEY_PREFIX + self.api_key).encode()):
                reason = "missing" if not sent else "wrong"
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    f"{reason} API key: send the header '{API_KEY_HEADER}: {API_KEY_PREFIX}<key>' "
                    "(PolicyClient(host, port, api_key=...))\n",
                )
        return None

    # ---- one request --------------------------------------------------------------------------------
    def _infer(self, obs: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        result = self.policy.infer(obs)
        return result, (time.perf_counter() - start) * 1e3

    def _check_actions(self, result: dict) -> np.ndarray:
        actions = np.asarray(result.get("actions") if isinstance(result, dict) else None)
        expected = (self.metadata["action_horizon"], self.metadata["action_dim"])
        if actions.shape != expected or actions.dtype.kind != "f":
            raise ProtocolError(
                "inference_error",
                f"the policy returned actions of shape {actions.shape} dtype {actions.dtype}; expected float {expected}",
            )
        return actions.astype(np.float32, copy=False)

    async def _answer(self, message: bytes | str) -> bytes:
        received = time.perf_counter()
        try:
            if isinstance(message, str):
                raise ProtocolError("malformed_message", "expected a binary msgpack frame, got a text frame")
            obs = validate_observation(msgpack_numpy.unpackb(message), self.metadata)
            loop = asyncio.get_running_loop()
            try:
                result, infer_ms = await loop.run_in_executor(self._executor, self._infer, obs)
            except Exception as exc:  # the model failed on a valid observation: report, keep serving
                logger.exception("policy inference failed")
                raise ProtocolError("inference_error", f"{type(exc).__name__}: {exc}") from None
            actions = self._check_actions(result)
        except ProtocolError as exc:
            return msgpack_numpy.packb(exc.to_reply())
        timing = {"infer_ms": infer_ms, "total_ms": (time.perf_counter() - received) * 1e3}
        return msgpack_numpy.packb({"actions": actions, "server_timing": timing})

    async def _handle(self, connection: ServerConnection) -> None:
        try:
            await connection.send(self._packed_metadata)
            async for message in connection:
                await connection.send(await self._answer(message))
        except ConnectionClosed:
            pass  # the client left (or sent an over-limit message: websockets closed with 1009)

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> Server:
        """Binds and starts accepting; `self.port` is the bound port afterwards."""
        server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_payload_bytes,
            compression=None,
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def running_server(policy: Policy, *, timeout: float = 10.0, **kwargs: object) -> Iterator[PolicyServer]:
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
