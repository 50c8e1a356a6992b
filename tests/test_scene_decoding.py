"""The scene-decoding probe (vlablocks/tools/probes/scene_decoding.py): its held-out ridge R^2 against hand
computations, its toy scenes against the env's geometry, and its readout features against the VLM's own states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlablocks.core.config import load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.tools.probes.scene_decoding import cosine_by_colour, readout_features, ridge_r2, toy_scenes
from vlablocks.tools.toy.toy_scene import COLOURS

REPO = Path(__file__).resolve().parents[1]


def test_ridge_r2_matches_a_hand_computed_held_out_score():
    # x = 0..7, y = x on the 6 fitted rows, so the fit is y_hat = x; the held-out rows are (6, 6) and (7, 9):
    # residual 0 + 4, spread around their mean 7.5: 1.5^2 + 1.5^2 = 4.5, so R^2 = 1 - 4 / 4.5 = 1/9.
    x = np.arange(8.0)[:, None]
    y = np.array([0, 1, 2, 3, 4, 5, 6, 9.0])
    assert ridge_r2(x, y, lam=1e-9) == pytest.approx(1 / 9, abs=1e-6)


def test_ridge_r2_is_one_for_a_linear_target_and_near_zero_for_an_unrelated_one():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 16))
    linear = features @ rng.normal(size=(16, 2)) + 3.0
    assert ridge_r2(features, linear) > 0.999
    assert ridge_r2(features, rng.normal(size=(400, 2))) < 0.1


def test_ridge_r2_refuses_a_split_with_no_held_out_rows():
    with pytest.raises(ValueError, match="both sides of the split"):
        ridge_r2(np.zeros((3, 2)), np.zeros(3))


def test_toy_scenes_name_the_block_the_expert_heads_for():
    scenes = toy_scenes(20, seed=123)
    offset = scenes.target - scenes.puck
    cosine = (offset * scenes.expert).sum(1) / (np.linalg.norm(offset, axis=1) * np.linalg.norm(scenes.expert, axis=1))
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    assert all(c in COLOURS and c in o["prompt"] for c, o in zip(scenes.colour, scenes.observations))
    np.testing.assert_allclose(scenes.puck, [o["state"] for o in scenes.observations], atol=1e-6)


def test_cosine_by_colour_averages_each_colour_s_episodes():
    actions = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expert = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert cosine_by_colour(actions, expert, ["red", "red", "blue"]) == {"blue": -1.0, "red": 0.5}


def test_readout_features_are_the_mean_readout_state_of_the_policy_s_own_vlm_call():
    experiment = load_config(
        REPO / "configs/experiments/toy/qwen_pi05.yaml", ["framework.action_model.num_inference_steps=2"]
    )
    cameras = [key.split(".")[-1] for key in experiment.dataset["camera_keys"]]
    examples = synthetic_examples(experiment.platform, 2, image_size=112, dataset_name="toy", camera_keys=cameras)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    policy.processor.fit(examples)
    policy.eval()
    scenes = toy_scenes(3, seed=7)
    features, actions = readout_features(policy, scenes.observations, batch_size=2)
    assert features.shape == (3, policy.model.vlm.hidden_size) and actions.shape == (3, 2)
    readout_ids = policy.model.auxiliary_losses.token_ids
    with torch.no_grad():
        batch = policy.processor(scenes.observations, targets=False)
        out = policy.model.vlm(batch.vlm, requested_token_ids=readout_ids)
    positions = torch.cat([out.token_positions[t] for t in readout_ids], dim=1)  # [B, T]
    expected = torch.stack([out.last_hidden_state[b, positions[b]].mean(0) for b in range(3)]).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-5)
