"""Closed-loop evaluation: the CI, the toy env with its scripted expert, baselines, and the eval command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vlablocks.core.dataloader.sample import SampleError
from vlablocks.core.evaluation.baselines import ExpertPolicy, RandomPolicy, action_bounds
from vlablocks.core.evaluation.rollout import evaluate
from vlablocks.core.evaluation.summary import wilson_interval
from vlablocks.core.evaluation.video import BAND, FAILURE_RGB, SUCCESS_RGB, annotate, outcome_text
from vlablocks.tools.toy.toy import ToyTabletopEnv


@pytest.mark.parametrize(
    "successes, trials, low, high",
    # Reference values of the 95% Wilson score interval (z = 1.96).
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (45, 50, 0.7864, 0.9565)],
)
def test_wilson_interval(successes, trials, low, high):
    got = wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_scripted_expert_solves_the_toy_env(tmp_path):
    env = ToyTabletopEnv()
    summary = evaluate(env, ExpertPolicy(env), 20, seed=0, out_dir=tmp_path, open_loop_horizon=1, videos=2)
    assert summary["success_rate"] == 1.0
    assert summary["ci95"][0] > 0.8
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["successes"] == 20 and len(saved["per_episode"]) == 20
    assert len(summary["videos"]) == 2 and all(
        (tmp_path / p.split("/")[-1]).stat().st_size > 500 for p in summary["videos"]
    )


def band_colour(gif_path, frame: int) -> np.ndarray:
    """The mean colour of the right end of the bottom band of one GIF frame (text is drawn on the left)."""
    from PIL import Image

    image = Image.open(gif_path)
    image.seek(frame)
    pixels = np.asarray(image.convert("RGB"))
    return pixels[-BAND + 4 : -4, -30:].reshape(-1, 3).mean(0)


def test_videos_show_every_step_the_instruction_and_the_outcome(tmp_path):
    from PIL import Image

    env = ToyTabletopEnv()
    expert = evaluate(env, ExpertPolicy(env), 1, seed=5, out_dir=tmp_path / "expert", open_loop_horizon=1, videos=1)
    steps = expert["per_episode"][0]["steps"]
    gif = expert["videos"][0]
    assert Image.open(gif).n_frames == steps + 1  # before the first step and after each
    np.testing.assert_allclose(band_colour(gif, steps), SUCCESS_RGB, atol=1)
    assert band_colour(gif, 0).min() > 250  # no outcome before the end
    random = RandomPolicy(np.full(2, -0.01), np.full(2, 0.01), horizon=1, seed=0)
    failed = evaluate(env, random, 1, seed=5, out_dir=tmp_path / "random", open_loop_horizon=1, videos=1)
    np.testing.assert_allclose(
        band_colour(failed["videos"][0], -1 + Image.open(failed["videos"][0]).n_frames), FAILURE_RGB, atol=1
    )
    assert outcome_text(False, {"reached": "blue"}) == "FAILURE: reached the blue block"
    assert outcome_text(True, {"reached": "red"}) == "SUCCESS: reached the red block"
    assert outcome_text(False, {"reached": None}) == "FAILURE: reached no block"
    caption = annotate(np.zeros((8, 8, 3), np.uint8), "go to the red block | step 0/3", None, True, 64)
    assert caption[:BAND].min() < 100  # the caption's text is drawn in the top band


def test_random_policy_rarely_succeeds(tmp_path):
    env = ToyTabletopEnv()
    low, high = action_bounds(env)
    np.testing.assert_allclose(high, [env.config.max_move] * env.action_dim)
    np.testing.assert_array_equal(low, -high)
    policy = RandomPolicy(low, high, horizon=4, seed=0)
    summary = evaluate(env, policy, 30, seed=0, out_dir=tmp_path, open_loop_horizon=4, videos=0)
    assert summary["success_rate"] < 0.3


class RecordingPolicy(RandomPolicy):
    """Random actions; keeps the requests it got and declares the cameras it takes."""

    def __init__(self, camera_keys: list[str]) -> None:
        super().__init__(np.full(2, -0.1), np.full(2, 0.1), horizon=2)
        self.metadata = {"camera_keys": camera_keys, "state_dim": 2, "action_horizon": 2}
        self.requests: list[dict] = []

    def infer(self, request: dict) -> dict:
        self.requests.append(request)
        return super().infer(request)


def test_the_policy_gets_the_env_observation_itself(tmp_path):
    env = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["top", "wrist"], max_steps=4))
    policy = RecordingPolicy(["wrist", "top"])
    evaluate(env, policy, 1, seed=0, out_dir=tmp_path, open_loop_horizon=2, videos=0, wrong_instruction=True)
    first = policy.requests[0]
    assert list(first["images"]) == ["top", "wrist"] and set(first["depth"]) == {"top", "wrist"}
    env.reset(seed=0)
    assert first["prompt"] == env.wrong_instruction() != env.layout.instruction
    with pytest.raises(
        SampleError, match=r"'images' has 1 view\(s\) \['top'\]; expected 2 view\(s\) \['top', 'wrist'\]"
    ):
        evaluate(ToyTabletopEnv(), RecordingPolicy(["top", "wrist"]), 1, 0, tmp_path, 2, videos=0)


def test_eval_command_reports_success_rate(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlablocks.cli.main",
            "eval",
            "--env",
            "toy",
            "--policy",
            "expert",
            "--episodes",
            "5",
            "--out",
            str(tmp_path),
            "--videos",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "success rate 100.0% (5/5" in result.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["episodes"] == 5
