"""Serving a real (tiny, random-init) framework checkpoint: adapter, un-normalization, and `vlablocks serve`."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deployment.client import PolicyClient, ProtocolError
from vlablocks.core.config import load_config
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.serving.policy import load_policy
from vlablocks.core.serving.server import running_server

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = np.array([0.5, -0.5]), np.array([2.0, 3.0])
STATS = {
    "toy": {
        "mode": "mean_std",
        "action": {
            **{f: [-1.0, -1.0] for f in ("min", "q01")},
            **{f: [1.0, 1.0] for f in ("max", "q99")},
            "mean": MEAN.tolist(),
            "std": STD.tolist(),
            "mask": [True, True],
            "count": 10,
        },
        "state": {
            **{f: [-1.0, -1.0] for f in ("min", "q01")},
            **{f: [1.0, 1.0] for f in ("max", "q99")},
            "mean": [0.0, 0.0],
            "std": [1.0, 1.0],
            "mask": [True, True],
            "count": 10,
        },
    }
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    experiment = load_config(REPO / "configs/datasets/toy_two_views.yaml", ["framework.name=QwenOFT"])
    return build_policy(experiment, STATS).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {
            "top": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
        },
        "state": rng.uniform(-1, 1, 2).astype(np.float32),
        "prompt": "push the red puck to the green square",
    }


def test_metadata_comes_from_the_checkpoint(checkpoint):
    assert load_policy(checkpoint).metadata == {
        "action_horizon": 4,
        "action_dim": 2,
        "state_dim": 2,
        "camera_keys": ["top", "wrist"],
        "image_size": 112,
        "embodiment": "toy",
        "n_action_steps": 4,
    }


def test_served_actions_are_the_frameworks_unnormalized_prediction(checkpoint):
    reference = Policy.from_pretrained(checkpoint)
    with running_server(load_policy(checkpoint)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        for seed in range(2):
            obs = observation(seed)
            served = client.infer(obs)["actions"]
            direct = reference.predict([obs])  # the wire observation is a sample without its action
            assert served.shape == (4, 2) and served.dtype == np.float32
            np.testing.assert_allclose(served, direct["actions"][0], rtol=1e-5, atol=1e-5)
            # un-normalized with the checkpoint's stats: x = normalized * std + mean
            np.testing.assert_allclose(served, direct["normalized_actions"][0] * STD + MEAN, rtol=1e-5, atol=1e-5)


def test_vlablocks_serve_serves_a_checkpoint_with_an_api_key(checkpoint):
    command = [sys.executable, "-m", "vlablocks.cli.main", "serve", "--ckpt", str(checkpoint), "--port", "0"]
    process = subprocess.Popen([*command, "--api-key", "k3y"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # blocks until the server has bound its port (or exited)
        match = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert match, f"no address in {line!r} (exit code {process.poll()})"
        port = int(match.group(1))
        assert "QwenOFT" in line and "API key required" in line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        with pytest.raises(ProtocolError, match="unauthorized"):
            PolicyClient("127.0.0.1", port, connect_timeout=5)
        with PolicyClient("127.0.0.1", port, api_key="k3y") as client:
            assert client.metadata["embodiment"] == "toy"
            assert client.infer(observation(0))["actions"].shape == (4, 2)
    finally:
        process.terminate()
        process.wait(30)
