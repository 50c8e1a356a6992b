"""Compiled inference (`Policy.compile`, `vlablocks serve --compile`): actions equal eager within float tolerance,
prompts of different lengths in one bucket reuse one compiled graph, and bad options are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_server_framework import REPO, STATS, observation

from vlablocks.cli.commands.serve import warm_up_observation
from vlablocks.cli.main import main
from vlablocks.core.config import load_config
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.serving.requests import validate_observation
from vlablocks.core.serving.server import PolicyServer

ATOL = 1e-4  # fp32 on CPU: inductor reorders reductions (measured: ~2e-6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    experiment = load_config(REPO / "configs/datasets/toy_two_views.yaml", ["framework.name=QwenOFT"])
    return build_policy(experiment, STATS).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_compiled_actions_match_eager_and_one_bucket_compiles_once(checkpoint):
    eager = Policy.from_pretrained(checkpoint)
    compiled = Policy.from_pretrained(checkpoint).compile("default", prompt_bucket=32)
    short, long = {**observation(0), "prompt": "push the blue puck"}, observation(1)  # 54 and 64 tokens
    lengths = [eager.processor([o], targets=False).vlm.input_ids.shape[1] for o in (short, long)]
    assert lengths[0] != lengths[1], "the two prompts must differ in length for the bucket to be exercised"
    padded = [compiled.processor([o], targets=False).vlm.input_ids.shape[1] for o in (short, long)]
    assert padded[0] == padded[1] and padded[0] % 32 == 0
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs = []
    for obs in (short, long, {**observation(2), "prompt": "push the red puck to the green"}):
        np.testing.assert_allclose(compiled.infer(obs)["actions"], eager.infer(obs)["actions"], atol=ATOL)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[2] == graphs[0]  # compiled on the first call only


def test_compile_options_are_checked(checkpoint):
    policy = Policy.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        policy.compile("fast")
    with pytest.raises(ValueError, match="prompt_bucket 0"):
        policy.compile(prompt_bucket=0)


def test_serve_refuses_compile_with_a_text_latent(checkpoint, tmp_path, capsys):
    latent = tmp_path / "latent.safetensors"
    latent.write_bytes(b"")
    code = main(["serve", "--ckpt", str(checkpoint), "--port", "0", "--compile", "--text-latent", str(latent)])
    assert code == 2
    assert "--compile and --text-latent together are not supported" in capsys.readouterr().err


def test_the_serve_warm_up_observation_is_a_valid_request_of_the_served_shape(checkpoint):
    policy = Policy.from_pretrained(checkpoint)
    server = PolicyServer(policy, port=0)
    try:
        obs = validate_observation(warm_up_observation(policy.metadata), server.metadata)
    finally:
        server.close()
    assert sorted(obs["images"]) == ["top", "wrist"] and obs["images"]["top"].shape == (112, 112, 3)
    assert policy.infer(obs)["actions"].shape == (4, 2)
