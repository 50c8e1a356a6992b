"""Policy client: wire encoding, chunk broker, reconnect, image resizing, and the standalone package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from deployment.client import ActionChunkBroker, PolicyClient, ProtocolError, msgpack_numpy, resize_with_pad
from vlablocks.core.serving.server import running_server

CLIENT_DIR = Path(__file__).resolve().parents[1] / "deployment" / "client"


class StatePolicy:
    """actions[t, d] = 100 * call index + t + state[0]: tells chunks and steps apart."""

    metadata = dict(action_horizon=4, action_dim=2, state_dim=1, camera_keys=["image"], image_size=8, embodiment="toy")

    def __init__(self) -> None:
        self.calls = 0

    def check_request(self, request: dict, max_prompt_tokens: int) -> None:
        """No tokenizer: the observation contract's checks are all there is."""

    def session(self) -> StatePolicy:
        return self

    def infer(self, obs: dict) -> dict:
        self.calls += 1
        base = 100 * self.calls + float(obs["state"][0])
        return {"actions": np.repeat((base + np.arange(4, dtype=np.float32))[:, None], 2, axis=1)}


def obs(state: float = 0.0) -> dict:
    return {"images": {"image": np.zeros((8, 8, 3), np.uint8)}, "state": np.array([state], np.float32), "prompt": "go"}


# ---- wire encoding ----------------------------------------------------------------------------------------
def test_arrays_and_scalars_round_trip_in_openpi_layout():
    message = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.float32(1.5), "nested": [np.ones(2, bool)]}
    packed = msgpack_numpy.packb(message)
    raw = msgpack.unpackb(packed)  # no hook: the wire maps as openpi writes them (bytes keys, dtype.str)
    assert raw["a"] == {b"__ndarray__": True, b"data": message["a"].tobytes(), b"dtype": "<i2", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"}
    decoded = msgpack_numpy.unpackb(packed)
    np.testing.assert_array_equal(decoded["a"], message["a"])
    assert decoded["a"].dtype == np.int16 and decoded["s"].dtype == np.float32 and decoded["nested"][0].dtype == bool


def test_str_keyed_array_maps_decode_too():
    packed = msgpack.packb(
        {"__ndarray__": True, "data": np.arange(3, dtype="<f8").tobytes(), "dtype": "<f8", "shape": [3]}
    )
    np.testing.assert_array_equal(msgpack_numpy.unpackb(packed), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("value", [np.array([object()]), np.ones(2, np.complex64), np.complex128(1j)])
def test_encoder_refuses_object_and_complex(value):
    with pytest.raises(ProtocolError, match="unsupported_dtype"):
        msgpack_numpy.packb({"x": value})


# ---- chunk broker -----------------------------------------------------------------------------------------
def test_broker_plays_open_loop_steps_then_requeries():
    policy = StatePolicy()
    broker = ActionChunkBroker(policy, open_loop_horizon=3)
    steps = [broker.infer(obs(state=float(i))) for i in range(7)]
    # chunk 1 from state 0 (steps 0..2), chunk 2 from state 3 (steps 3..5), chunk 3 from state 6
    assert [s["actions"][0] for s in steps] == [100, 101, 102, 203, 204, 205, 306]
    assert [s["chunk_step"] for s in steps] == [0, 1, 2, 0, 1, 2, 0]
    assert steps[0]["actions"].shape == (2,) and policy.calls == 3
    broker.reset()
    assert broker.infer(obs(state=0.5))["actions"][0] == 400.5 and policy.calls == 4


def test_broker_rejects_a_horizon_longer_than_the_chunk():
    with pytest.raises(ValueError, match="open_loop_horizon 5 is longer than the policy's chunk of 4"):
        ActionChunkBroker(StatePolicy(), open_loop_horizon=5).infer(obs())
    with pytest.raises(ValueError, match=">= 1"):
        ActionChunkBroker(StatePolicy(), open_loop_horizon=0)


def test_broker_over_the_wire_plays_the_full_chunk():
    with running_server(StatePolicy()) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        broker = ActionChunkBroker(client, open_loop_horizon=4)
        values = [broker.infer(obs(state=1.0))["actions"][1] for _ in range(5)]
        assert values == [101, 102, 103, 104, 201]


# ---- connection handling ----------------------------------------------------------------------------------
def test_client_reconnects_after_the_server_restarts():
    policy = StatePolicy()
    with running_server(policy) as srv:
        port = srv.port
        client = PolicyClient("127.0.0.1", port, retries=20, retry_delay=0.05)
        assert client.infer(obs())["actions"][0, 0] == 100
    with running_server(policy, port=port):  # same port, new server: the old connection is gone
        assert client.infer(obs())["actions"][0, 0] == 200
    client.close()


def test_client_waits_for_a_server_that_starts_later():
    with running_server(StatePolicy()) as srv:
        port = srv.port  # a free port, closed again below
    result: list = []
    errors: list = []

    def connect() -> None:
        try:
            with PolicyClient("127.0.0.1", port, connect_timeout=20, retry_delay=0.05) as client:
                result.append(client.infer(obs()))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    with running_server(StatePolicy(), port=port):
        thread.join(20)
    assert not errors and result[0]["actions"].shape == (4, 2)


def test_unreachable_server_is_a_clear_error():
    with running_server(StatePolicy()) as srv:
        port = srv.port
    with pytest.raises(ConnectionError, match=rf"no policy server reachable at ws://127.0.0.1:{port}.*vlablocks serve"):
        PolicyClient("127.0.0.1", port, connect_timeout=0.3, retry_delay=0.05)


# ---- image tools ------------------------------------------------------------------------------------------
def test_resize_with_pad_keeps_aspect_and_pads_black():
    image = np.full((40, 80, 3), 200, np.uint8)
    out = resize_with_pad(image, 32, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[8:24] == 200).all() and (out[:8] == 0).all() and (out[24:] == 0).all()
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (64, 1, 3))  # 64 columns
    half = resize_with_pad(ramp, 32, 32)[:, :, 0].astype(int)
    np.testing.assert_allclose(half[0], (ramp[0, 0::2, 0].astype(int) + ramp[0, 1::2, 0]) / 2, atol=1)


# ---- the standalone package -------------------------------------------------------------------------------
def test_client_installs_and_works_alone_without_vlablocks_or_torch(tmp_path):
    source = tmp_path / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    assert (site / "vlablocks_client" / "websocket_client.py").is_file()
    with running_server(StatePolicy()) as srv:
        script = textwrap.dedent(f"""
            import sys
            import numpy as np
            import vlablocks_client
            assert vlablocks_client.__file__.startswith({str(site)!r}), vlablocks_client.__file__
            client = vlablocks_client.PolicyClient("127.0.0.1", {srv.port})
            reply = client.infer({{"images": {{"image": np.zeros((8, 8, 3), np.uint8)}},
                                   "state": np.array([2.0], np.float32), "prompt": "go"}})
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "vlablocks", "deployment"))
            print(reply["actions"][0, 0], heavy)
            """)
        run = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["102.0", "[]"]
