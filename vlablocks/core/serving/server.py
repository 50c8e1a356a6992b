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
from typing import Any

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
from vlablocks.core.dataloader.sample import SampleError, validate_sample
from vlablocks.core.processor.embodiment import embodiment_sizes
from vlablocks.core.serving.policy import METADATA_KEYS, ServedPolicy

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_MB = 16.0
DEFAULT_MAX_PROMPT_CHARS = 2000  # checked before anything is tokenized
DEFAULT_MAX_PROMPT_TOKENS = 256  # checked with the policy's tokenizer (`check_prompt`), before the model
DEFAULT_MAX_CONNECTIONS = 32
MAX_QUEUED_FRAMES = 2  # frames read ahead per connection: memory <= connections x (queue + 1) x max payload
BUSY = 1013  # websocket close code "try again later": the connection limit is reached
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---- the server's side of the observation contract: validate_sample with the policy's metadata, its SampleError
# answered as the wire's ProtocolError (same code, same one-line message).


def _state_as_float32(state: Any) -> Any:
    """The wire accepts a state of any real numeric dtype (or a list of numbers) and casts it to float32."""
    if isinstance(state, (list, tuple)):
        with contextlib.suppress(ValueError):  # ragged: left for the validator to name
            state = np.asarray(state)
    if isinstance(state, np.ndarray) and state.dtype.kind in "fiu":
        return state.astype(np.float32, copy=False)
    return state


def validate_observation(obs: Any, metadata: dict) -> dict:
    """obs (decoded wire message) -> the request the policy gets: the same map with `images` in the order of
    metadata["camera_keys"] and `state` float32 [metadata["state_dim"]]; other keys pass through unchecked.
    A policy serving several embodiments (metadata["embodiments"]): the request's `embodiment` (default
    metadata["embodiment"]) must be one of them, its state is checked against that robot's own state_dim, and the
    returned request names it.

    Raises `ProtocolError` naming the problem (see `validate_sample`).
    """
    if isinstance(obs, dict) and "state" in obs:
        obs = {**obs, "state": _state_as_float32(obs["state"])}
    camera_keys = list(metadata["camera_keys"])
    state_dim = int(metadata["state_dim"])
    if metadata.get("embodiments") and isinstance(obs, dict):
        try:
            embodiment, _, state_dim = embodiment_sizes(metadata, obs)
        except ValueError as exc:
            raise ProtocolError("invalid_value", str(exc)) from None
        obs = {**obs, "embodiment": embodiment}
    try:
        validate_sample(obs, camera_keys=camera_keys, state_dim=state_dim)
    except SampleError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    # Any H x W: the model resizes every view to metadata["image_size"] itself (sending that size saves bandwidth).
    return {**obs, "images": {key: obs["images"][key] for key in camera_keys}}


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning owed when the server listens beyond loopback without an API key, else None."""
    if api_key or host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    return (
        f"listening on {host} without an API key: anyone who can reach this port can drive the robot; "
        "set $VLABLOCKS_API_KEY or --api-key-file"
    )


class PolicyServer:
    """Serves `policy` on ws://host:port. `port=0` picks a free port (see `port` once started)."""

    def __init__(
        self,
        policy: ServedPolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        missing = [k for k in METADATA_KEYS if k not in policy.metadata]
        if missing:
            raise ValueError(f"policy metadata lacks {missing}; a served policy must declare {list(METADATA_KEYS)}")
        if max_payload_mb <= 0:
            raise ValueError(f"max_payload_mb must be > 0, got {max_payload_mb}")
        if min(max_prompt_chars, max_prompt_tokens, max_connections) < 1:
            raise ValueError("max_prompt_chars, max_prompt_tokens and max_connections must be >= 1")
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_payload_bytes = int(max_payload_mb * 2**20)
        self.max_connections = max_connections
        self.connections = 0
        self.metadata = {
            **policy.metadata,
            "max_payload_bytes": self.max_payload_bytes,
            "max_prompt_chars": max_prompt_chars,
            "max_prompt_tokens": max_prompt_tokens,
            "max_connections": max_connections,
            "protocol": PROTOCOL_VERSION,
        }
        self._warned_nonfinite = False
        # One worker: model calls never overlap, and the event loop never runs one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._packed_metadata = msgpack_numpy.packb(self.metadata)

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
    def _infer(self, obs: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        result = self.policy.infer(obs)
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

    def _check_prompt(self, prompt: str) -> None:
        """Prompt limits before the model: characters here, tokens and control tokens with the policy's tokenizer."""
        if len(prompt) > self.metadata["max_prompt_chars"]:
            raise ProtocolError(
                "invalid_value",
                f"'prompt' is {len(prompt)} characters, over the limit of {self.metadata['max_prompt_chars']}",
            )
        check = getattr(self.policy, "check_prompt", None)
        if check is not None:
            try:
                check(prompt, self.metadata["max_prompt_tokens"])
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None

    async def _answer(self, message: bytes | str) -> bytes | str:
        """A binary msgpack reply, or an error as a text frame (see deployment/client/protocol.py)."""
        received = time.perf_counter()
        try:
            if isinstance(message, str):
                raise ProtocolError("malformed_message", "expected a binary msgpack frame, got a text frame")
            obs = validate_observation(msgpack_numpy.unpackb(message), self.metadata)
            self._check_prompt(obs["prompt"])
            loop = asyncio.get_running_loop()
            try:
                result, infer_ms = await loop.run_in_executor(self._executor, self._infer, obs)
            except Exception as exc:  # the model failed on a valid observation: report, keep serving
                logger.exception("policy inference failed")
                raise ProtocolError("inference_error", f"{type(exc).__name__}: {exc}") from None
            actions = self._check_actions(result, obs)
        except ProtocolError as exc:
            return exc.to_text()
        timing = {"infer_ms": infer_ms, "total_ms": (time.perf_counter() - received) * 1e3}
        return msgpack_numpy.packb({"actions": actions, "server_timing": timing})

    async def _handle(self, connection: ServerConnection) -> None:
        if self.connections >= self.max_connections:
            await connection.close(BUSY, f"server busy: {self.max_connections} connections open; retry later")
            return
        self.connections += 1
        try:
            await connection.send(self._packed_metadata)
            async for message in connection:
                await connection.send(await self._answer(message))
        except ConnectionClosed:
            pass  # the client left (or sent an over-limit message: websockets closed with 1009)
        finally:
            self.connections -= 1

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
def running_server(policy: ServedPolicy, *, timeout: float = 10.0, **kwargs: object) -> Iterator[PolicyServer]:
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
