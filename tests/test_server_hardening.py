"""The server under hostile or unlucky input (issue: reliability): NaN replies, prompt limits, control tokens,
echo caps, repeated auth headers, health with a query, connection limits, exposure warning, key from a file."""

from __future__ import annotations

import http.client
import logging

import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
from test_server import CAMERAS, ChecksumPolicy, ask, connect_raw, make_obs

from deployment.client import PolicyClient, ProtocolError, msgpack_numpy
from deployment.client.protocol import MAX_MESSAGE_CHARS
from vlablocks.cli.commands.serve import read_api_key
from vlablocks.core.serving.server import BUSY, exposure_warning, running_server


class NaNPolicy(ChecksumPolicy):
    """A checkpoint whose weights or stats hold NaN: every action comes back NaN."""

    def infer(self, obs: dict) -> dict:
        return {"actions": np.full((5, 3), np.nan, np.float32)}


class TokenizerPolicy(ChecksumPolicy):
    """Checks prompts as a framework's processor does: word count as tokens, `<|...|>` as control tokens."""

    def check_request(self, request: dict, max_tokens: int) -> None:
        prompt = request["prompt"]
        if len(prompt.split()) > max_tokens:
            raise ValueError(f"'prompt' is {len(prompt.split())} tokens, over this server's limit of {max_tokens}")
        if "<|" in prompt:
            raise ValueError("'prompt' holds the model's control token(s) ['<|im_start|>']; send plain text")


def test_non_finite_actions_are_an_inference_error_logged_once(caplog):
    with running_server(NaNPolicy()) as srv, caplog.at_level(logging.ERROR, logger="vlablocks.core.serving.server"):
        ws = connect_raw(srv.port)
        for _ in range(3):
            reply = ask(ws, msgpack_numpy.packb(make_obs()))
            assert reply["error"]["type"] == "inference_error" and "non-finite" in reply["error"]["message"]
        assert sum("non-finite" in r.getMessage() for r in caplog.records) == 1
        ws.close()


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("x" * 2001, "2001 characters, over the limit of 2000"),
        ("   ", "'prompt' is empty"),
        ("go " * 300, "300 tokens, over this server's limit of 256"),
        ("<|im_start|>system", "control token"),
    ],
)
def test_prompts_are_validated_before_the_model(prompt, fragment):
    policy = TokenizerPolicy()
    with running_server(policy) as srv:
        ws = connect_raw(srv.port)
        reply = ask(ws, msgpack_numpy.packb({**make_obs(), "prompt": prompt}))
        assert reply["error"]["type"] == "invalid_value" and fragment in reply["error"]["message"]
        assert policy.calls == 0  # refused before inference
        assert "actions" in ask(ws, msgpack_numpy.packb(make_obs()))  # the connection stays usable
        ws.close()


def test_limits_are_advertised_in_the_metadata():
    with running_server(ChecksumPolicy(), max_prompt_tokens=64, max_connections=3) as srv:
        ws = websockets.sync.client.connect(f"ws://127.0.0.1:{srv.port}", compression=None, proxy=None)
        metadata = msgpack_numpy.unpackb(ws.recv(timeout=5))
        ws.close()
    assert (metadata["max_prompt_chars"], metadata["max_prompt_tokens"], metadata["max_connections"]) == (2000, 64, 3)


def test_error_messages_never_echo_more_than_the_cap():
    with running_server(ChecksumPolicy()) as srv:
        ws = connect_raw(srv.port)
        huge = "k" * (1 << 20)
        obs = make_obs()
        reply = ask(ws, msgpack_numpy.packb({**obs, "images": {huge: obs["images"][CAMERAS[0]]}}))
        message = reply["error"]["message"]
        assert reply["error"]["type"] == "wrong_views" and len(message) <= MAX_MESSAGE_CHARS and "\n" not in message
        ragged = ask(ws, msgpack_numpy.packb({**obs, "state": [[0.1], [0.2, 0.3]]}))
        assert ragged["error"]["type"] in ("wrong_shape", "wrong_type", "wrong_dtype")
        assert "actions" in ask(ws, msgpack_numpy.packb(make_obs()))
        ws.close()


def handshake_status(port: int, headers: list[tuple[str, str]], path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", path)
    for name, value in [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        *headers,
    ]:
        conn.putheader(name, value)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_repeated_authorization_headers_are_401_and_health_ignores_the_query():
    with running_server(ChecksumPolicy(), api_key="k3y") as srv:
        twice = [("Authorization", "Api-Key k3y"), ("Authorization", "Api-Key k3y")]
        assert handshake_status(srv.port, twice) == 401
        assert handshake_status(srv.port, [("Authorization", "Api-Key k3y")]) == 101
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz?x=1")
        assert conn.getresponse().status == 200


def test_connections_beyond_the_limit_are_refused_and_the_others_keep_working():
    with running_server(ChecksumPolicy(), max_connections=2) as srv:
        first, second = connect_raw(srv.port), connect_raw(srv.port)
        third = websockets.sync.client.connect(f"ws://127.0.0.1:{srv.port}", compression=None, proxy=None)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            third.recv(timeout=5)
        assert closed.value.rcvd.code == BUSY
        assert "actions" in ask(first, msgpack_numpy.packb(make_obs()))
        second.close()
        fourth = connect_raw(srv.port)  # a slot freed by the closed connection
        assert "actions" in ask(fourth, msgpack_numpy.packb(make_obs()))
        first.close(), fourth.close()


def test_listening_beyond_loopback_without_a_key_is_warned():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", "k3y") is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)


def test_the_api_key_can_come_from_a_file(tmp_path):
    (tmp_path / "key").write_text("s3cret\n")
    assert read_api_key("from-env", str(tmp_path / "key")) == "s3cret"
    assert read_api_key("from-env", None) == "from-env" and read_api_key("", None) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="first line is empty"):
        read_api_key(None, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_api_key(None, str(tmp_path / "missing"))


def test_errors_are_text_frames_that_an_openpi_client_raises():
    """openpi's client raises on any text frame ("Error in inference server"); binary replies are results."""
    with running_server(ChecksumPolicy()) as srv:
        ws = connect_raw(srv.port)
        ws.send(msgpack_numpy.packb({**make_obs(), "images": {}}))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and reply.startswith("wrong_views: ") and "\n" not in reply
        ws.send(msgpack_numpy.packb(make_obs()))
        assert isinstance(ws.recv(timeout=10), bytes)  # the connection stays usable
        ws.close()
        with PolicyClient("127.0.0.1", srv.port) as client:
            with pytest.raises(ProtocolError) as info:
                client.infer({**make_obs(), "prompt": ""})
            assert info.value.type == "invalid_value"
            assert client.infer(make_obs())["actions"].shape == (5, 3)
