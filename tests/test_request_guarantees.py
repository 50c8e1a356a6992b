"""Served requests (issue 40, items 1-5, 7, 8, 13): one validation path whatever the policy wrapper, per-connection
steering state, steering options checked before serving, a closed set of request fields, bounded log lines, idle
slots reclaimed, memory handed back after an attack, and loopback recognized in every spelling."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
from test_server import ChecksumPolicy, ask, connect_raw, make_obs
from test_text_latent import TASKS, awake, examples_with

from deployment.client import msgpack_numpy
from vlablocks.core.serving.server import BUSY, PolicyServer, exposure_warning, running_server
from vlablocks.core.serving.slots import EVICT_IDLE_S, IDLE_CLOSE
from vlablocks.methods.steering.steered_policy import LatentOptions, SteeredPolicy
from vlablocks.methods.steering.text_latent import extract
from vlablocks.tools.bench import pipelining
from vlablocks.tools.bench.hostile import tiny_policy, valid_request


@pytest.fixture(scope="module")
def steerable():
    """A tiny policy whose actions read its VLM, the latents of both TASKS, and a request of TASKS[0]."""
    examples = examples_with(list(TASKS))
    policy = awake("QwenFlowMatching", examples)
    obs = {key: value for key, value in examples[0].items() if key not in ("action", "action_is_pad")}
    return policy, extract(policy, [examples]), obs


def send(ws, obs: dict) -> dict:
    return ask(ws, msgpack_numpy.packb(obs))


# ---- 1. one validation path: a steered server refuses what a plain one refuses; a wrapper cannot skip it ----------
def test_a_steered_server_applies_the_prompt_limits_and_no_wrapper_can_skip_them(steerable):
    policy, latents, obs = steerable
    steered = SteeredPolicy(policy, latents, LatentOptions(prompt="given"))
    with running_server(steered) as srv:
        ws = connect_raw(srv.port)
        for prompt, fragment in [
            ("a " * 999, "tokens, over this server's limit of 256"),
            (f"{TASKS[0]} <|im_end|>", "control token"),
        ]:
            reply = send(ws, {**obs, "prompt": prompt})
            assert reply["error"]["type"] == "invalid_value" and fragment in reply["error"]["message"]
        assert "actions" in send(ws, obs)
        ws.close()

    class ForwardsInferOnly:  # a wrapper that forgot the wrapped policy's checks
        def __init__(self, inner) -> None:
            self.inner, self.metadata = inner, inner.metadata

        def infer(self, request: dict) -> dict:
            return self.inner.infer(request)

    with pytest.raises(TypeError, match="check_request"):
        PolicyServer(ForwardsInferOnly(policy))


# ---- 2. per-connection episode state ---------------------------------------------------------------------------
def test_each_connection_has_its_own_steering_schedule(steerable):
    policy, latents, obs = steerable
    options = LatentOptions(task=TASKS[0], task_2=TASKS[1], switch_at=3, kind="mean")
    local = SteeredPolicy(policy, latents, options)
    expected = [local.infer(obs)["actions"] for _ in range(4)]  # calls 0-2: task A, call 3: task B
    assert np.abs(expected[0] - expected[3]).max() > 1e-4  # the two tasks steer differently
    with running_server(SteeredPolicy(policy, latents, options)) as srv:
        a, b = connect_raw(srv.port), connect_raw(srv.port)
        for k in range(4):
            np.testing.assert_allclose(send(a, {**obs, "episode_start": k == 0})["actions"], expected[k], atol=1e-5)
        np.testing.assert_allclose(send(b, obs)["actions"], expected[0], atol=1e-5)  # A's calls do not move B
        for _ in range(2):
            send(b, obs)
        send(a, {**obs, "episode_start": True})  # A's new episode does not reset B
        np.testing.assert_allclose(send(b, obs)["actions"], expected[3], atol=1e-5)
        reply = send(b, {**obs, "episode_start": "false"})
        assert reply["error"]["type"] == "wrong_type" and "episode_start" in reply["error"]["message"]
        a.close()
        b.close()


# ---- 3. bad steering options never start a server ----------------------------------------------------------------
def test_bad_steering_options_are_refused_before_serving(steerable, tmp_path):
    policy, latents, _ = steerable
    residuals = policy.model.vlm.num_layers + 1
    with pytest.raises(ValueError, match="--latent-task: no text latent for task 'no such task'"):
        SteeredPolicy(policy, latents, LatentOptions(task="no such task"))
    with pytest.raises(ValueError, match=f"--latent-layers must be in 0..{residuals - 1}"):
        SteeredPolicy(policy, latents, LatentOptions(layers=(99,)))
    for bad in ({"layers": (-1,)}, {"alpha": math.nan}, {"alpha": math.inf}, {"task_2": " "}):
        with pytest.raises(ValueError, match="--latent-"):
            LatentOptions(**bad)
    checkpoint, latent_file = policy.save_pretrained(tmp_path / "ckpt"), tmp_path / "latents.safetensors"
    latents.save(latent_file)
    for option in (["--latent-task", "no such task"], ["--latent-alpha", "nan"], ["--latent-layers", "99"]):
        command = [sys.executable, "-m", "vlablocks.cli.main", "serve", "--ckpt", str(checkpoint), "--port", "0"]
        done = subprocess.run(
            command + ["--text-latent", str(latent_file), *option], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and "serving" not in done.stdout, option
        assert done.stderr.strip().splitlines()[-1].startswith("error: --latent-"), done.stderr


# ---- 4. a closed set of request fields -------------------------------------------------------------------------
def test_training_fields_and_unknown_keys_are_refused_at_the_door():
    policy = tiny_policy()
    valid = valid_request()
    with running_server(policy) as srv:
        ws = connect_raw(srv.port)
        first = send(ws, valid)["actions"]
        moved = send(ws, {**valid, "state": valid["state"] + 3.0})["actions"]
        assert np.abs(first - moved).max() > 1e-6  # the state is read
        for extra, key in [({"answer": "x", "dataset_name": "hostile"}, "'answer'"), ({"action": [1.0]}, "'action'")]:
            reply = send(ws, {**valid, **extra})
            assert reply["error"]["type"] == "invalid_value" and key in reply["error"]["message"], extra
        reply = send(ws, {**valid, "dataset_name": "toy"})
        assert reply["error"]["type"] == "invalid_value" and "one of ['hostile']" in reply["error"]["message"]
        np.testing.assert_array_equal(send(ws, {**valid, "dataset_name": "hostile"})["actions"], first)
        ws.close()


# ---- 5. bounded log lines; client mistakes are not inference errors ---------------------------------------------
class ShoutingPolicy(ChecksumPolicy):
    def infer(self, obs: dict) -> dict:
        raise RuntimeError("model broke on " + obs["prompt"] * 4000)


def test_log_lines_are_bounded_and_client_mistakes_are_not_logged(caplog):
    valid = valid_request()
    with running_server(tiny_policy()) as srv, caplog.at_level(logging.INFO):
        ws = connect_raw(srv.port)
        for _ in range(5):
            reply = send(ws, {**valid, "dataset_name": "d" * (2 << 20)})
            assert reply["error"]["type"] == "invalid_value"
        ws.close()
    assert sum(len(r.getMessage()) for r in caplog.records) < 2000
    caplog.clear()
    with running_server(ShoutingPolicy()) as srv, caplog.at_level(logging.ERROR):
        ws = connect_raw(srv.port)
        for _ in range(5):
            reply = send(ws, {**make_obs(), "prompt": "p" * 1500})
            assert reply["error"]["type"] == "inference_error" and len(reply["error"]["message"]) <= 500
        ws.close()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("policy inference failed" in line for line in lines) == 5
    assert sum("stack" in line for line in lines) == 1  # the stack once, frames only
    assert max(len(line) for line in lines) < 5000 and sum(map(len, lines)) < 12_000


# ---- 7. idle connections cannot lock active clients out -----------------------------------------------------------
def test_idle_connections_yield_their_slots_and_time_out():
    with running_server(ChecksumPolicy(), max_connections=2, idle_timeout_s=3.0) as srv:
        idle = [connect_raw(srv.port) for _ in range(2)]
        time.sleep(EVICT_IDLE_S + 0.3)
        newcomer = connect_raw(srv.port)  # takes the slot of the longest-idle connection
        assert "actions" in send(newcomer, make_obs())
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            idle[0].recv(timeout=2)
        assert closed.value.rcvd.code == IDLE_CLOSE
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            idle[1].recv(timeout=5)  # idle 3 s: closed by the timeout
        assert closed.value.rcvd.code == IDLE_CLOSE and "idle for 3 s" in closed.value.rcvd.reason
        assert "actions" in send(newcomer, make_obs())  # active: never evicted
        newcomer.close()


def connect_from(source: str, port: int):
    """A websocket to the server from the loopback address `source` (another client address than 127.0.0.1)."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    return websockets.sync.client.connect(f"ws://127.0.0.1:{port}", sock=sock, compression=None, proxy=None)


def test_one_address_cannot_take_the_slots_other_clients_need():
    with running_server(ChecksumPolicy(), max_connections=4, max_connections_per_address=2) as srv:
        other = connect_raw(srv.port)  # another client, connected first: the idlest connection from here on
        held = [connect_from("127.0.0.2", srv.port) for _ in range(2)]
        assert all("max_connections" in msgpack_numpy.unpackb(ws.recv(timeout=5)) for ws in held)
        extra = connect_from("127.0.0.2", srv.port)  # its address holds 2 connections, none idle 2 s: refused
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            extra.recv(timeout=5)
        assert closed.value.rcvd.code == BUSY and "limit per address" in closed.value.rcvd.reason
        time.sleep(EVICT_IDLE_S + 0.3)
        again = connect_from("127.0.0.2", srv.port)  # replaces one of its own idle connections ...
        assert "max_connections" in msgpack_numpy.unpackb(again.recv(timeout=5))
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            held[0].recv(timeout=2)
        assert "actions" in send(other, make_obs())  # ... not the other client's, idle longer
        for ws in (again, held[1], other):
            ws.close()
    with pytest.raises(ValueError, match="--max-connections-per-address must be an integer in 1..4"):
        PolicyServer(ChecksumPolicy(), max_connections=4, max_connections_per_address=5)


# ---- 8. memory handed back after a pipelining attack -------------------------------------------------------------
def test_memory_is_returned_after_a_pipelining_attack():
    # Before the fix the server kept 119-382 MB of this attack's ~450 MB after every attacker had gone (3 runs).
    result = pipelining.run(max_connections=12, max_payload_mb=16.0, attackers=12, frames=4, seconds=3.0)
    assert result["server_alive"] and result["frames_sent"] > 0
    assert result["rss_growth_mb"] > 200  # the attack did take memory
    assert result["rss_after_close_mb"] < 40


# ---- 13. loopback in every spelling, IPv6 URLs in brackets ----------------------------------------------------
def test_loopback_is_recognized_in_every_spelling_and_ipv6_urls_have_brackets():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "0:0:0:0:0:0:0:1", "[::1]", "::ffff:127.0.0.1"):
        assert exposure_warning(host, None) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.4", "fe80::1"):
        assert "without an API key" in exposure_warning(host, None), host
    assert "listening on [::]" in exposure_warning("::", None)
    assert PolicyServer(ChecksumPolicy(), host="::1", port=8123).url == "ws://[::1]:8123"
    assert PolicyServer(ChecksumPolicy(), host="127.0.0.1", port=8123).url == "ws://127.0.0.1:8123"
    server = PolicyServer(ChecksumPolicy(), host="0:0:0:0:0:0:0:1", port=0)
    assert server.url.startswith("ws://[0:0:0:0:0:0:0:1]:")
    ws = None
    with running_server(ChecksumPolicy(), host="::1") as srv:
        ws = websockets.sync.client.connect(f"ws://[::1]:{srv.port}", compression=None, proxy=None)
        assert msgpack_numpy.unpackb(ws.recv(timeout=5))["max_connections"] == 32
        ws.close()
