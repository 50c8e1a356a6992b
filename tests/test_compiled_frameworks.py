"""Compiled inference (`Policy.compile`) of every framework, built tiny from its toy recipe: the compiled policy's
actions equal eager within float tolerance, and its sampling is captured with the measured number of graph breaks.

These compile with backend "aot_eager" (dynamo's capture and AOT autograd, no code generation: seconds on a CPU);
tests/test_compiled_policy.py runs QwenOFT once through inductor. Zero breaks means one graph per prompt bucket: the
host-side work (the VLM layout, a flow head's noise) runs eagerly before it (`Framework.prepare_sampling`).
QwenFAST's autoregressive decoding ends its graph one step early (`AUTOREGRESSIVE_BREAKS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlablocks.core.config import load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # fp32 on CPU; the compiled vision tower attends with one block-diagonal mask instead of per-view calls
# QwenFAST's KV-cached loop: every tensor op in one graph (the loop unrolled, the early stop skipped when compiled),
# then one break for the host-side answer (until_stop's lists), after the last op.
AUTOREGRESSIVE_BREAKS = 1
STEPS = ["framework.action_model.num_inference_steps=2"]  # 2 Euler steps capture as 10 do, in a fifth of the time
DDIM = ["framework.action_model.name=diffusion", "framework.action_model.num_inference_steps=3"]
# QwenOFT options that add to the VLM's input embeddings through a hook registered per call break where it is
# registered (torch 2.11: RemovableHandle's id counter); what the hooks compute is break-free (no host reads).
LLM_INPUT = [*DDIM, "framework.noisy_actions=llm_input"]  # OFT's diffusion variant: the noisy chunk through the LLM
HOOKED = {  # id -> (overrides, graph breaks)
    "noisy_actions-llm_input": (LLM_INPUT, 1),
    "proprio-llm_token": (["framework.proprio=llm_token"], 2),
    "film-vision_blocks": (["framework.use_film=true", "framework.film=vision_blocks"], 2),
}

CASES = {  # id -> (toy recipe, overrides, graph breaks)
    "QwenOFT": ("qwen_oft.yaml", [], 0),
    "QwenOFT-DDIM": ("qwen_oft.yaml", DDIM, 0),  # the start noise drawn before the graph, integer timesteps
    "QwenFlowMatching": ("qwen_flow_matching.yaml", STEPS, 0),
    "QwenLayerwiseFM3D": ("qwen_layerwise_fm_3d.yaml", STEPS, 0),
    "QwenLayerwiseFM3D-tokenwise": ("qwen_layerwise_fm_3d_tokenwise.yaml", STEPS, 0),  # the geometric branch fused
    "QwenPI05": ("qwen_pi05.yaml", STEPS, 0),  # the prefix once, then the expert's steps
    "QwenFAST": ("qwen_fast.yaml", [], 0),  # parallel_decoding: one pass
    "QwenFAST-autoregressive": (
        "qwen_fast.yaml",
        ["framework.parallel_decoding=false", "platform.action_horizon=2"],  # 2 x 2 FAST tokens + stop: 5 steps
        AUTOREGRESSIVE_BREAKS,
    ),
}


def tiny_policy(recipe: str, overrides: list[str]) -> tuple[Policy, list[dict]]:
    """The recipe's framework, random-init, its processor fitted on two synthetic samples whose prompts differ in
    length (left padding inside the bucket)."""
    experiment = load_config(REPO / "configs/experiments/toy" / recipe, overrides)
    cameras = [key.split(".")[-1] for key in experiment.dataset["camera_keys"]]
    examples = synthetic_examples(experiment.platform, 2, image_size=112, dataset_name="toy", camera_keys=cameras)
    assert len(examples[0]["prompt"]) != len(examples[1]["prompt"])
    if experiment.dataset["depth_keys"]:
        rng = np.random.default_rng(0)
        intrinsics = np.array([[80.0, 0.0, 56.0], [0.0, 80.0, 56.0], [0.0, 0.0, 1.0]], np.float32)
        for example in examples:
            example["depth"] = {key: rng.uniform(0.5, 1.5, (112, 112)).astype(np.float32) for key in cameras}
            example["intrinsics"] = {key: intrinsics for key in cameras}
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    policy.processor.fit(examples)
    return policy.eval(), examples


def assert_compiled_matches_eager(recipe: str, overrides: list[str], breaks: int) -> None:
    """The recipe's policy compiled (aot_eager) returns eager's actions for the same seed, with `breaks` graph breaks."""
    policy, examples = tiny_policy(recipe, overrides)
    eager = policy.predict(examples, seed=5)["actions"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = policy.compile(prompt_bucket=32, backend="aot_eager").predict(examples, seed=5)["actions"]
    np.testing.assert_allclose(compiled, eager, atol=ATOL)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks


@pytest.mark.parametrize(("recipe", "overrides", "breaks"), list(CASES.values()), ids=list(CASES))
def test_compiled_actions_match_eager_with_the_measured_graph_breaks(recipe, overrides, breaks):
    assert_compiled_matches_eager(recipe, overrides, breaks)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # every tensor op in one graph


@pytest.mark.parametrize(("overrides", "breaks"), list(HOOKED.values()), ids=list(HOOKED))
def test_hooked_oft_options_compile_to_eager_s_actions_with_the_measured_breaks(overrides, breaks):
    assert_compiled_matches_eager("qwen_oft.yaml", overrides, breaks)


@pytest.mark.parametrize("overrides", [DDIM, LLM_INPUT], ids=["head", "llm_input"])
def test_the_ddim_start_is_drawn_from_the_seed_before_the_graph(overrides):
    """Compiled, a DDIM policy's noise still comes from the call's seed: the same seed, the same actions; another
    seed, other actions."""
    policy, examples = tiny_policy("qwen_oft.yaml", overrides)
    policy.compile(backend="eager")
    first, again, other = (policy.predict(examples, seed=s)["actions"] for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


def test_the_flow_noise_is_drawn_from_the_seed_before_the_graph():
    """A flow head's noise comes from the call's seed: another seed, other actions (compiled as eager)."""
    policy, examples = tiny_policy("qwen_flow_matching.yaml", STEPS)
    policy.compile(backend="eager")
    first, again, other = (policy.predict(examples, seed=s)["actions"] for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_an_unknown_backend_is_a_one_line_error():
    policy, _ = tiny_policy("qwen_oft.yaml", [])
    with pytest.raises(ValueError, match="compile backend 'tvm'"):
        policy.compile(backend="tvm")
