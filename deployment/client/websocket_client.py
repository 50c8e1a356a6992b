"""`PolicyClient`: a blocking client for a policy server, with reconnect-and-retry."""

from __future__ import annotations

import logging
import time
from typing import Any

import websockets.exceptions
import websockets.sync.client

from . import msgpack_numpy
from .protocol import MESSAGE_TOO_BIG, ProtocolError, api_key_header

logger = logging.getLogger(__name__)


class PolicyClient:
    """Queries a policy server: `PolicyClient("127.0.0.1", 8000).infer(obs) -> {"actions": [T, D], ...}`.

    The constructor waits up to `connect_timeout` seconds for the server to come up. A dropped connection is
    re-opened and the request re-sent (inference is stateless) up to `retries` times, `retry_delay` seconds
    apart. A refusal by the server (bad observation, wrong API key, over-size payload) raises `ProtocolError`
    with its `type` and `message`; those are not retried.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 8000,
        api_key: str | None = None,
        *,
        connect_timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 0.5,
        request_timeout: float | None = None,
    ) -> None:
        self.uri = f"ws://{host}" if port is None else f"ws://{host}:{port}"
        self.api_key = api_key
        self.retries = retries
        self.retry_delay = retry_delay
        self.request_timeout = request_timeout
        self._packer = msgpack_numpy.Packer()
        self._ws: websockets.sync.client.ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self._connect(deadline=time.monotonic() + connect_timeout)

    # ---- connection ---------------------------------------------------------------------------------
    def _open(self) -> None:
        headers = api_key_header(self.api_key) if self.api_key else None
        try:
            ws = websockets.sync.client.connect(
                self.uri, additional_headers=headers, compression=None, max_size=None, proxy=None
            )
        except websockets.exceptions.InvalidStatus as exc:
            if exc.response.status_code == 401:
                body = (exc.response.body or b"").decode(errors="replace").strip()
                raise ProtocolError("unauthorized", body or "the server refused the API key") from None
            raise
        self.metadata = msgpack_numpy.unpackb(ws.recv(timeout=self.request_timeout))
        self._ws = ws

    def _connect(self, deadline: float) -> None:
        """Opens the connection, retrying refused/failed attempts until `deadline` (time.monotonic)."""
        while True:
            try:
                self._open()
                return
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                if time.monotonic() + self.retry_delay > deadline:
                    raise ConnectionError(
                        f"no policy server reachable at {self.uri} ({type(exc).__name__}: {exc}); "
                        "start one with `vlablocks serve --ckpt DIR --port PORT` and check host/port"
                    ) from None
                logger.info("waiting for policy server at %s (%s)", self.uri, exc)
                time.sleep(self.retry_delay)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------------
    def _check_size(self, data: bytes) -> None:
        limit = self.metadata.get("max_payload_bytes")
        if limit is not None and len(data) > limit:
            raise ProtocolError(
                "payload_too_large",
                f"observation is {len(data)} bytes, over the server's limit of {limit} bytes; send smaller "
                "images or start the server with a larger --max-payload-mb",
            )

    def _round_trip(self, data: bytes) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                if self._ws is None:
                    self._connect(deadline=time.monotonic() + self.retry_delay)
                self._ws.send(data)
                reply = self._ws.recv(timeout=self.request_timeout)
                if isinstance(reply, str):
                    raise ProtocolError.from_text(reply)  # the server's error reply
                return reply
            except websockets.exceptions.ConnectionClosed as exc:
                self._ws = None
                if exc.rcvd is not None and exc.rcvd.code == MESSAGE_TOO_BIG:
                    raise ProtocolError("payload_too_large", exc.rcvd.reason or "message too big") from None
                error: Exception = exc
            except TimeoutError:
                # A late reply would be read as the answer to the next request: drop the connection.
                self.close()
                raise TimeoutError(f"no reply from {self.uri} within {self.request_timeout} s") from None
            except OSError as exc:
                self._ws = None
                error = exc
            if attempt < self.retries:
                logger.warning("connection to %s lost (%s); retrying", self.uri, error)
                time.sleep(self.retry_delay)
        raise ConnectionError(f"lost the policy server at {self.uri} after {self.retries} retries: {error}")

    def infer(self, obs: dict) -> dict:
        """obs: {"images": {cam: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str} -> {"actions": [T, D], ...}"""
        data = self._packer.pack(obs)
        self._check_size(data)
        return msgpack_numpy.unpackb(self._round_trip(data))

    def reset(self) -> None:
        """Start of an episode; the server keeps no per-episode state, so nothing to do."""

    def get_server_metadata(self) -> dict:
        """openpi-compatible spelling of `metadata`."""
        return self.metadata
