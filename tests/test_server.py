"""Policy server: round trip, every class of bad input, API key, health while busy, over-size payloads."""

from __future__ import annotations

import http.client
import threading

import msgpack
import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client

from deployment.client import PolicyClient, ProtocolError, msgpack_numpy
from vlablocks.core.serving.server import running_server

H = W = 16
T, D, S = 5, 3, 4
CAMERAS = ["top", "wrist"]


class ChecksumPolicy:
    """actions[t, d] = t + 10 d + state[d] + (pixel sum of view d % 2) % 997 + len(prompt): a transport checksum."""

    metadata = dict(action_horizon=T, action_dim=D, state_dim=S, camera_keys=CAMERAS, image_size=H, embodiment="toy")

    def __init__(self) -> None:
        self.calls = 0

    def check_request(self, request: dict, max_prompt_tokens: int) -> None:
        """No tokenizer: the observation contract's checks are all there is."""

    def session(self) -> ChecksumPolicy:
        return self  # no per-episode state

    def infer(self, obs: dict) -> dict:
        self.calls += 1
        return {"actions": expected_actions(obs)}


def expected_actions(obs: dict) -> np.ndarray:
    sums = [int(obs["images"][key].astype(np.int64).sum()) % 997 for key in CAMERAS]
    t, d = np.meshgrid(np.arange(T), np.arange(D), indexing="ij")
    per_dim = np.array([obs["state"][j] + sums[j % 2] + len(obs["prompt"]) for j in range(D)])
    return (t + 10 * d + per_dim[None, :]).astype(np.float32)


def make_obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {key: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for key in CAMERAS},
        "state": rng.normal(size=S).astype(np.float32),
        "prompt": "pick up the red cube",
    }


def raw_array(dtype: str, shape: list[int], data: bytes) -> dict:
    """An array map written by hand, bypassing the encoder's own dtype refusal."""
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


@pytest.fixture
def server():
    with running_server(ChecksumPolicy(), max_payload_mb=0.25) as srv:
        yield srv


def connect_raw(port: int) -> websockets.sync.client.ClientConnection:
    ws = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None)
    msgpack_numpy.unpackb(ws.recv(timeout=5))  # metadata
    return ws


def ask(ws, payload: bytes | str) -> dict:
    """One request on a raw connection -> the reply; an error (a text frame) as {"error": {"type", "message"}}."""
    ws.send(payload)
    reply = ws.recv(timeout=10)
    if isinstance(reply, str):
        error = ProtocolError.from_text(reply)
        return {"error": {"type": error.type, "message": error.message}}
    return msgpack_numpy.unpackb(reply)


def test_round_trip_returns_the_policys_actions_and_timing(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        assert client.metadata["camera_keys"] == CAMERAS
        assert client.metadata["action_horizon"] == T and client.metadata["max_payload_bytes"] == int(0.25 * 2**20)
        for seed in range(3):
            obs = make_obs(seed)
            reply = client.infer(obs)
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (T, D)
            np.testing.assert_array_equal(reply["actions"], expected_actions(obs))
            assert reply["server_timing"]["total_ms"] >= reply["server_timing"]["infer_ms"] >= 0


def test_views_of_any_size_pass_through_unchanged(server):
    obs = make_obs(2)
    obs["images"]["wrist"] = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with PolicyClient("127.0.0.1", server.port) as client:
        np.testing.assert_array_equal(client.infer(obs)["actions"], expected_actions(obs))


def test_state_of_another_numeric_dtype_is_cast_to_float32(server):
    obs = make_obs(1)
    obs["state"] = obs["state"].astype(np.float64)
    with PolicyClient("127.0.0.1", server.port) as client:
        np.testing.assert_allclose(client.infer(obs)["actions"], expected_actions(obs), rtol=1e-6)


def _with(**changes) -> dict:
    obs = make_obs()
    for key, value in changes.items():
        obs[key] = value
    return obs


def _without(key: str) -> dict:
    obs = make_obs()
    del obs[key]
    return obs


GOOD = make_obs()
BAD_INPUTS = {
    "not msgpack": (b"\xc1\xc1\xc1", "malformed_message", "msgpack"),
    "truncated msgpack": (msgpack_numpy.packb(GOOD)[:-40], "malformed_message", "msgpack"),
    "text frame": ("hello", "malformed_message", "text frame"),
    "not a map": (msgpack.packb([1, 2, 3]), "malformed_message", "must be a map"),
    "object dtype": (
        msgpack.packb({**GOOD, "state": raw_array("|O", [S], b"\0" * 8 * S)}, default=msgpack_numpy.pack_array),
        "unsupported_dtype",
        "'|O'",
    ),
    "complex dtype": (
        msgpack.packb({**GOOD, "state": raw_array("<c8", [S], b"\0" * 8 * S)}, default=msgpack_numpy.pack_array),
        "unsupported_dtype",
        "'<c8'",
    ),
    "structured dtype": (
        msgpack.packb({**GOOD, "state": raw_array("i4,f4", [S], b"\0" * 8 * S)}, default=msgpack_numpy.pack_array),
        "unsupported_dtype",
        "structured",
    ),
    "bytes do not match shape": (
        msgpack.packb({**GOOD, "state": raw_array("<f4", [S], b"\0" * 3)}, default=msgpack_numpy.pack_array),
        "malformed_message",
        "needs 16 bytes, got 3",
    ),
    "four-channel image": (
        msgpack_numpy.packb(_with(images={"top": np.zeros((H, W, 4), np.uint8), "wrist": GOOD["images"]["wrist"]})),
        "wrong_shape",
        "images['top'] has shape (16, 16, 4); expected (H, W, 3)",
    ),
    "grayscale image": (
        msgpack_numpy.packb(_with(images={"top": GOOD["images"]["top"], "wrist": np.zeros((H, W), np.uint8)})),
        "wrong_shape",
        "images['wrist'] has shape (16, 16)",
    ),
    "wrong state shape": (msgpack_numpy.packb(_with(state=np.zeros(S + 1, np.float32))), "wrong_shape", f"({S},)"),
    "float images": (
        msgpack_numpy.packb(_with(images={k: np.zeros((H, W, 3), np.float32) for k in CAMERAS})),
        "wrong_dtype",
        "expected uint8",
    ),
    "missing state": (msgpack_numpy.packb(_without("state")), "missing_key", "['state']"),
    "missing images": (msgpack_numpy.packb(_without("images")), "missing_key", "['images']"),
    "one view of two": (
        msgpack_numpy.packb(_with(images={"top": GOOD["images"]["top"]})),
        "wrong_views",
        "2 view(s) ['top', 'wrist']",
    ),
    "misnamed view": (
        msgpack_numpy.packb(_with(images={"top": GOOD["images"]["top"], "left": GOOD["images"]["top"]})),
        "wrong_views",
        "['left', 'top']",
    ),
    "prompt not a string": (msgpack_numpy.packb(_with(prompt=7)), "wrong_type", "'prompt' must be a string"),
    "NaN in state": (
        msgpack_numpy.packb(_with(state=np.array([0, np.nan, 0, 0], np.float32))),
        "invalid_value",
        "indices [1]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_named_error_and_the_connection_stays_usable(server, case):
    payload, error_type, fragment = BAD_INPUTS[case]
    ws = connect_raw(server.port)
    try:
        reply = ask(ws, payload)
        assert set(reply) == {"error"}, reply
        assert reply["error"]["type"] == error_type, reply
        assert fragment in reply["error"]["message"], reply
        good = make_obs(5)
        np.testing.assert_array_equal(ask(ws, msgpack_numpy.packb(good))["actions"], expected_actions(good))
    finally:
        ws.close()


def test_client_raises_the_servers_error_and_keeps_working(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        with pytest.raises(ProtocolError, match="wrong_views") as info:
            client.infer(_with(images={"top": GOOD["images"]["top"]}))
        assert info.value.type == "wrong_views"
        np.testing.assert_array_equal(client.infer(GOOD)["actions"], expected_actions(GOOD))


def test_oversize_payload_closes_only_that_connection_with_1009(server):
    big = _with(images={k: np.zeros((512, 512, 3), np.uint8) for k in CAMERAS})  # 1.5 MiB > 0.25 MiB limit
    ws = connect_raw(server.port)
    ws.send(msgpack_numpy.packb(big))
    with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
        ws.recv(timeout=10)
    assert info.value.rcvd.code == 1009
    with PolicyClient("127.0.0.1", server.port) as client:  # the server still serves
        np.testing.assert_array_equal(client.infer(GOOD)["actions"], expected_actions(GOOD))


def test_client_reports_oversize_before_sending_and_stays_usable(server):
    big = _with(images={k: np.zeros((512, 512, 3), np.uint8) for k in CAMERAS})
    with PolicyClient("127.0.0.1", server.port) as client:
        with pytest.raises(ProtocolError, match="over the server's limit of 262144 bytes") as info:
            client.infer(big)
        assert info.value.type == "payload_too_large"
        client.metadata["max_payload_bytes"] = None  # now let the server enforce it
        with pytest.raises(ProtocolError) as info:
            client.infer(big)
        assert info.value.type == "payload_too_large" and "exceeds limit" in info.value.message
        np.testing.assert_array_equal(client.infer(GOOD)["actions"], expected_actions(GOOD))


class FailingPolicy(ChecksumPolicy):
    """Fails on prompts saying "explode", returns a wrong-shape chunk on "short"."""

    def infer(self, obs: dict) -> dict:
        if obs["prompt"] == "explode":
            raise RuntimeError("CUDA out of memory (simulated)")
        if obs["prompt"] == "short":
            return {"actions": np.zeros((T - 1, D), np.float32)}
        return super().infer(obs)


def test_policy_failure_is_an_inference_error_and_the_next_request_succeeds():
    with running_server(FailingPolicy()) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        with pytest.raises(ProtocolError, match="inference_error: RuntimeError: CUDA out of memory"):
            client.infer(_with(prompt="explode"))
        with pytest.raises(ProtocolError, match=rf"shape \({T - 1}, {D}\).*expected float \({T}, {D}\)"):
            client.infer(_with(prompt="short"))
        np.testing.assert_array_equal(client.infer(GOOD)["actions"], expected_actions(GOOD))


def test_api_key_is_enforced_when_set():
    with running_server(ChecksumPolicy(), api_key="s3cret") as srv:
        for key, reason in ((None, "missing API key"), ("guess", "wrong API key")):
            with pytest.raises(ProtocolError, match=reason) as info:
                PolicyClient("127.0.0.1", srv.port, api_key=key, connect_timeout=2)
            assert info.value.type == "unauthorized"
        with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
            websockets.sync.client.connect(f"ws://127.0.0.1:{srv.port}", proxy=None)
        with PolicyClient("127.0.0.1", srv.port, api_key="s3cret") as client:
            np.testing.assert_array_equal(client.infer(GOOD)["actions"], expected_actions(GOOD))
        assert healthz(srv.port) == (200, "OK\n")  # health checks need no key


def healthz(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class BlockingPolicy(ChecksumPolicy):
    """Blocks inside `infer` until released: a model call that takes as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, obs: dict) -> dict:
        self.entered.set()
        assert self.release.wait(20), "test never released the policy"
        return super().infer(obs)


def test_a_busy_model_blocks_neither_health_checks_nor_other_clients():
    policy = BlockingPolicy()
    with running_server(policy) as srv:
        results: list = []
        busy = threading.Thread(target=lambda: results.append(PolicyClient("127.0.0.1", srv.port).infer(GOOD)))
        busy.start()
        try:
            assert policy.entered.wait(10), "inference never started"
            assert healthz(srv.port) == (200, "OK\n")
            with PolicyClient("127.0.0.1", srv.port, request_timeout=5) as other:  # handshake + metadata
                with pytest.raises(ProtocolError, match="missing_key"):  # answered without the model
                    other.infer(_without("prompt"))
            assert not results, "the blocked request finished early"
        finally:
            policy.release.set()
            busy.join(20)
        np.testing.assert_array_equal(results[0]["actions"], expected_actions(GOOD))


def test_model_calls_never_overlap():
    class CountingPolicy(ChecksumPolicy):
        def __init__(self) -> None:
            super().__init__()
            self.active = 0
            self.max_active = 0
            self.lock = threading.Lock()

        def infer(self, obs: dict) -> dict:
            with self.lock:
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            threading.Event().wait(0.005)  # hold the "model" long enough for calls to pile up
            with self.lock:
                self.active -= 1
            return super().infer(obs)

    policy = CountingPolicy()
    with running_server(policy) as srv:

        def worker() -> None:
            with PolicyClient("127.0.0.1", srv.port) as client:
                for _ in range(5):
                    client.infer(GOOD)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert policy.calls == 20 and policy.max_active == 1


def test_metadata_must_declare_the_wire_fields():
    class Incomplete(ChecksumPolicy):
        metadata = {"action_horizon": 2}

        def infer(self, obs: dict) -> dict:
            return {}

    with pytest.raises(ValueError, match=r"lacks \['action_dim'"):
        with running_server(Incomplete()):
            pass
