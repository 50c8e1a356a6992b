"""Rectified-flow inversion (FlowMatchingHead.invert / reconstruct), the flow frameworks' `flow_conditioning`,
and `vlablocks invert` (vlablocks/methods/steering/flow_inversion.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from head_helpers import build, make_batch, make_conditioning, wake
from scipy.linalg import expm
from test_frameworks import built, scaled_examples

from vlablocks.cli.main import main
from vlablocks.core.config import load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.tools.toy.toy import ToyTabletopEnv

FLOW_FRAMEWORKS = ["QwenFlowMatching", "QwenLayerwiseFM3D", "QwenPI05"]


def linear_head(A: np.ndarray, b: np.ndarray):
    """A tiny flow head whose velocity is set to v(x, t) = A x + b (per action step), in float64."""
    head = build("flow_matching", use_state=False).double()
    A_t, b_t = torch.from_numpy(A), torch.from_numpy(b)
    head.velocity = lambda contexts, x, t, state_token: x @ A_t.T + b_t
    conditioning = make_conditioning(head)
    conditioning.tokens = conditioning.tokens.double()
    return head, conditioning


def affine_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    D = 3
    A = rng.normal(0, 0.6, (D, D)) - 0.5 * np.eye(D)  # invertible, eigenvalues of moderate size
    return A, rng.normal(0, 1, D), rng.normal(0, 1, (4, 4, D))  # A, b, actions [B, T, D]


def test_reverse_euler_of_a_linear_field_matches_its_closed_form_and_the_exact_flow():
    A, b, x1 = affine_problem()
    head, conditioning = linear_head(A, b)
    eye, A_inv = np.eye(3), np.linalg.inv(A)
    for S in (1, 3, 10):
        # x_{k+1} = M x_k - h b, M = I - h A  =>  x_S = M^S x_0 - (I - M^S) A^{-1} b   (geometric series)
        M_S = np.linalg.matrix_power(eye - A / S, S)
        expected = x1 @ M_S.T - (eye - M_S) @ A_inv @ b
        noise = head.invert(conditioning, torch.from_numpy(x1), None, S).numpy()
        np.testing.assert_allclose(noise, expected, rtol=1e-10, atol=1e-10)
        # reconstruct: x_{k+1} = P x_k + h b, P = I + h A  =>  x_S = P^S z + (P^S - I) A^{-1} b
        P_S = np.linalg.matrix_power(eye + A / S, S)
        back = head.reconstruct(conditioning, torch.from_numpy(noise), None, S).numpy()
        np.testing.assert_allclose(back, noise @ P_S.T + (P_S - eye) @ A_inv @ b, rtol=1e-10, atol=1e-10)
    # the exact ODE from t = 1 back to t = 0: x(0) = e^{-A} x(1) - (I - e^{-A}) A^{-1} b; Euler converges at O(1/S)
    exact = x1 @ expm(-A).T - (eye - expm(-A)) @ A_inv @ b
    errors = [
        np.abs(head.invert(conditioning, torch.from_numpy(x1), None, S).numpy() - exact).max() for S in (500, 1000)
    ]
    assert errors[1] < 0.01 * np.abs(exact).max() and 0.45 < errors[1] / errors[0] < 0.55, errors


def test_reverse_euler_reads_the_velocity_at_the_current_time():
    head, conditioning = linear_head(np.zeros((3, 3)), np.zeros(3))
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    head.velocity = lambda contexts, x, t, state_token: t[:, None, None] * c
    x1 = torch.zeros(4, 4, 3, dtype=torch.float64)
    for S in (1, 4):
        # sum over t_k = 1 - k / S of h t_k = (S + 1) / (2 S); reading t_{k+1} would give (S - 1) / (2 S)
        expected = -c * (S + 1) / (2 * S)
        torch.testing.assert_close(head.invert(conditioning, x1, None, S), expected.expand(4, 4, 3))


def test_invert_then_reconstruct_error_shrinks_first_order_on_a_real_head():
    head = wake(build("flow_matching")).double().eval()
    conditioning = make_conditioning(head)
    conditioning.tokens = conditioning.tokens.double()
    actions, _, state = make_batch()
    actions, state = actions.double(), state.double()
    with torch.no_grad():
        errors = {
            S: float(
                (head.reconstruct(conditioning, head.invert(conditioning, actions, state, S), state, S) - actions)
                .pow(2)
                .mean()
                .sqrt()
            )
            for S in (4, 8, 16, 32)
        }
    for S in (4, 8, 16):
        assert 0.35 < errors[2 * S] / errors[S] < 0.6, errors  # RMS error halves: first order
    with pytest.raises(ValueError, match=r"actions must be \[B, T, D\] = \[4, 4, 3\]"):
        head.invert(conditioning, actions[:, :2], state, 4)


@pytest.mark.parametrize("name", FLOW_FRAMEWORKS)
def test_flow_frameworks_sample_invert_and_reconstruct_through_flow_conditioning(name):
    examples = scaled_examples(2)
    policy = built(name, examples).eval()
    framework = policy.model
    batch = policy.processor(examples, targets=False)
    with torch.no_grad():
        sampled = framework.sample_actions(batch, torch.Generator().manual_seed(3))["actions"]
        conditioning, state = framework.flow_conditioning(batch)
        head = framework.action_model
        assert (state is None) == (name == "QwenPI05")  # the pi0.5 expert has no state input
        # sample_actions is the head's predict on flow_conditioning (no behaviour change)
        torch.testing.assert_close(head.predict(conditioning, state, torch.Generator().manual_seed(3)), sampled)
        errors = [
            float(
                (head.reconstruct(conditioning, head.invert(conditioning, sampled, state, S), state, S) - sampled)
                .pow(2)
                .mean()
            )
            for S in (5, 50)
        ]
        edited = policy.processor([{**e, "prompt": "push the blue cube left"} for e in examples], targets=False)
        edited_conditioning, _ = framework.flow_conditioning(edited)
        noise = head.invert(conditioning, sampled, state, 50)
        moved = float((head.reconstruct(edited_conditioning, noise, state, 50) - sampled).abs().max())
    assert errors[1] < errors[0] and errors[1] < 1e-3
    assert moved > 1e-4  # another prompt reconstructs another chunk from the same noise


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A tiny untrained QwenFlowMatching for the toy env (one top camera, toy norm stats), saved."""
    experiment = load_config(
        "configs/experiments/toy/qwen_flow_matching.yaml",
        ["framework.action_model.hidden_dim=32", "framework.action_model.num_layers=2"],
    )
    examples = synthetic_examples(experiment.platform, 8, image_size=112, dataset_name="toy", camera_keys=["top"])
    for e in examples:
        e["action"] = e["action"] * 0.05  # raw units unlike normalized ones, so the raw MSE differs
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples), camera_keys=["top"])
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "flow")


def test_invert_command_writes_mse_that_a_recomputation_matches(toy_checkpoint, tmp_path, capsys):
    argv = ["invert", "--ckpt", str(toy_checkpoint), "--env", "toy", "--episodes", "2", "--seed", "1000"]
    assert main([*argv, "--steps", "1", "4", "--execute-steps", "4", "--out", str(tmp_path)]) == 0
    assert "MSE / action variance: S=1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "inversion.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "chunks.jsonl").read_text().splitlines()]
    assert summary["chunks"] == len(records) > 2 and summary["executed"]["episodes"] == 2
    assert set(summary["per_steps"]) == {"1", "4"}
    assert {"variance_normalized", "mse_other_noise", "mse_sampled_vs_reprompt", "executed"} <= set(summary)
    assert set(summary["per_steps"]["4"]) >= {"mse_normalized", "mse_over_variance", "mse_raw", "edit_share"}
    for s in ("1", "4"):
        mean = np.mean([r["mse_normalized"][s] for r in records])
        assert summary["per_steps"][s]["mse_normalized"] == pytest.approx(mean)
        ratio = summary["per_steps"][s]["mse_normalized"] / summary["variance_normalized"]
        assert summary["per_steps"][s]["mse_over_variance"] == pytest.approx(ratio)
    # Recompute the first call of both episodes: seeded noise through predict, invert, reconstruct, postprocess.
    policy = Policy.from_pretrained(toy_checkpoint).eval()
    framework = policy.model
    observations = [ToyTabletopEnv().reset(seed=seed) for seed in (1000, 1001)]
    batch = policy.processor(observations, targets=False)
    head = framework.action_model
    with torch.no_grad():
        conditioning, state = framework.flow_conditioning(batch)
        sampled = head.predict(conditioning, state, torch.Generator().manual_seed(1000))
        for S in (1, 4):
            same = head.reconstruct(conditioning, head.invert(conditioning, sampled, state, S), state, S)
            raw = [policy.processor.postprocess({"actions": x}, batch)["actions"] for x in (sampled, same)]
            for k, seed in enumerate((1000, 1001)):
                record = next(r for r in records if r["seed"] == seed and r["call"] == 0)
                normalized = float((same[k] - sampled[k]).pow(2).mean())
                assert record["mse_normalized"][str(S)] == pytest.approx(normalized, rel=1e-4, abs=1e-9)
                assert record["mse_raw"][str(S)] == pytest.approx(np.mean((raw[1][k] - raw[0][k]) ** 2), rel=1e-3)
    assert records[0]["mse_raw"]["1"] != pytest.approx(records[0]["mse_normalized"]["1"])


def test_invert_command_refuses_a_checkpoint_without_a_flow_head(tmp_path, capsys):
    experiment = load_config("configs/experiments/toy/qwen_oft.yaml")
    examples = synthetic_examples(experiment.platform, 2, dataset_name="toy", camera_keys=["top"])
    checkpoint = build_policy(experiment, synthetic_norm_stats(examples)).save_pretrained(tmp_path / "oft")
    assert main(["invert", "--ckpt", str(checkpoint), "--env", "toy", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "vlablocks invert: QwenOFT lacks the capability FlowInvertible" in error
    assert error.rstrip().endswith("models that have it: QwenFlowMatching, QwenLayerwiseFM3D, QwenPI05")
