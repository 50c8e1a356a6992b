"""The `metaworld` env: task sets and instructions from LeRobot's table, spaces, seeding, the renderer settings, and
the corner2 view pixel for pixel as LeRobot's own wrapper renders it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlablocks.core.build import build
from vlablocks.core.envs import metaworld_tasks
from vlablocks.core.registry import EVAL_ENVS

pytest.importorskip("metaworld", reason="the sim extra (pip install -e .[sim]) brings metaworld")


@pytest.fixture(scope="module")
def push_env():
    env = build(EVAL_ENVS, {"name": "metaworld", "task": "push-v3", "image_size": 64})
    yield env
    env.close()


def test_task_sets_match_metaworld_and_lerobot():
    from lerobot.envs.metaworld import DIFFICULTY_TO_TASKS, TASK_DESCRIPTIONS
    from metaworld.env_dict import MT10_V3

    assert list(metaworld_tasks.MT10) == list(MT10_V3)
    assert metaworld_tasks.resolve_tasks("mt10") == list(MT10_V3)
    assert metaworld_tasks.resolve_tasks("MT50") == sorted(TASK_DESCRIPTIONS) and len(TASK_DESCRIPTIONS) == 50
    sizes = {group: len(metaworld_tasks.resolve_tasks(group)) for group in metaworld_tasks.DIFFICULTIES}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert metaworld_tasks.resolve_tasks("medium") == DIFFICULTY_TO_TASKS["medium"]
    assert metaworld_tasks.resolve_tasks("reach, push-v3,reach-v3") == ["reach-v3", "push-v3"]
    assert metaworld_tasks.instruction("push") == TASK_DESCRIPTIONS["push-v3"] == "Push the puck to a goal"
    assert metaworld_tasks.difficulty("push-v3") == "hard"  # LeRobot's grouping, not the name's look
    assert metaworld_tasks.next_task("window-close-v3", list(metaworld_tasks.MT10)) == "reach-v3"


def test_an_unknown_task_is_one_line_naming_the_accepted_names():
    with pytest.raises(ValueError, match="unknown Meta-World task 'puhs-v3'; did you mean 'push-v3'.*mt10, mt50"):
        metaworld_tasks.resolve_tasks("reach,puhs-v3")
    with pytest.raises(ValueError, match=r"cameras must be \['corner2'\] or \['image'\]"):
        build(EVAL_ENVS, {"name": "metaworld", "cameras": ["top"]})
    with pytest.raises(ValueError, match="max_steps must be in 1..500"):
        build(EVAL_ENVS, {"name": "metaworld", "max_steps": 501})


def test_observation_spaces_instruction_and_state(push_env):
    obs = push_env.reset(seed=3)
    image = obs["images"]["corner2"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 10
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    np.testing.assert_allclose(obs["state"], push_env._raw_obs[:4].astype(np.float32))  # hand xyz + gripper
    assert obs["prompt"] == "Push the puck to a goal" and obs["dataset_name"] == "metaworld"
    assert push_env.wrong_instruction() == metaworld_tasks.instruction("pick-place-v3")  # the next MT10 task
    assert (push_env.action_dim, push_env.state_dim) == (4, 4)
    obs, reward, done, info = push_env.step(np.zeros(4, np.float32), observe=False)
    assert obs is None and not done and info["steps"] == 1 and info["task"] == "push-v3"
    with pytest.raises(ValueError, match="action must be 4 finite numbers"):
        push_env.step(np.zeros(3))


def test_the_view_can_carry_lerobots_dataset_key():
    env = build(EVAL_ENVS, {"name": "metaworld", "task": "reach-v3", "image_size": 32, "cameras": ["image"]})
    try:
        assert list(env.reset(seed=0)["images"]) == ["image"]
    finally:
        env.close()


def test_a_seed_fixes_the_layout_and_another_seed_moves_it(push_env):
    first = push_env.reset(seed=11)["images"]["corner2"]
    object_position = push_env._raw_obs[4:7].copy()
    again = push_env.reset(seed=11)["images"]["corner2"]
    np.testing.assert_array_equal(first, again)
    push_env.reset(seed=12)
    assert np.abs(push_env._raw_obs[4:7] - object_position).max() > 1e-3


def test_the_renderer_runs_without_shadows_or_multisampling():
    fast = build(EVAL_ENVS, {"name": "metaworld", "task": "reach-v3", "image_size": 32})
    default = build(EVAL_ENVS, {"name": "metaworld", "task": "reach-v3", "image_size": 32, "fast_render": False})
    try:
        assert (fast.env.model.vis.quality.shadowsize, fast.env.model.vis.quality.offsamples) == (0, 0)
        assert (default.env.model.vis.quality.shadowsize, default.env.model.vis.quality.offsamples) == (4096, 4)
        camera = fast.env.model.camera("corner2").id
        np.testing.assert_allclose(fast.env.model.cam_pos[camera], [0.75, 0.075, 0.7])
        # the same scene either way: the settings change how it is lit and smoothed, not what is seen
        difference = np.abs(
            fast.reset(seed=0)["images"]["corner2"].astype(int) - default.reset(seed=0)["images"]["corner2"]
        )
        assert difference.mean() < 25
    finally:
        fast.close()
        default.close()


def test_the_view_and_state_are_lerobots_pixel_for_pixel():
    """LeRobot's MetaworldEnv (480 px, default render quality) and ours at the same settings and seed."""
    from lerobot.envs.metaworld import MetaworldEnv

    theirs = MetaworldEnv(task="drawer-open-v3", obs_type="pixels_agent_pos")
    ours = build(EVAL_ENVS, {"name": "metaworld", "task": "drawer-open-v3", "image_size": 480, "fast_render": False})
    try:
        their_obs, _ = theirs.reset(seed=5)
        our_obs = ours.reset(seed=5)
        np.testing.assert_array_equal(our_obs["images"]["corner2"], their_obs["pixels"])
        np.testing.assert_allclose(our_obs["state"], their_obs["agent_pos"], rtol=1e-6)
        # the fix shows the arm's base on the left of the frame and the table below (unflipped: right and above)
        red = (our_obs["images"]["corner2"][..., 0] > 120) & (our_obs["images"]["corner2"][..., 1] < 60)
        columns = np.nonzero(red)[1]
        assert columns.size > 1000 and columns.mean() < 240
    finally:
        theirs.close()
        ours.close()


def test_the_scripted_expert_succeeds_and_success_ends_the_episode():
    env = build(EVAL_ENVS, {"name": "metaworld", "task": "reach-v3", "image_size": 32, "max_steps": 150})
    try:
        env.reset(seed=1000)
        done, steps = False, 0
        while not done:
            _, _, done, info = env.step(env.expert_action(), observe=False)
            steps += 1
        assert info["success"] and steps < 150 and info["steps"] == steps
    finally:
        env.close()


def test_eval_command_runs_a_suite_and_refuses_it_on_another_env(tmp_path, capsys):
    from vlablocks.cli.main import main as cli

    out = tmp_path / "eval"
    command = ["eval", "--env", "metaworld", "--policy", "expert", "--tasks", "reach", "--episodes-per-task", "2"]
    assert cli([*command, "--out", str(out), "--image_size=32", "--max_steps=150"]) == 0
    printed = capsys.readouterr().out
    assert "reach-v3                     easy      100.0% (2/2" in printed and "wrong instruction 100%" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["successes"] == 2 and summary["protocol"]["env"]["max_steps"] == 150
    assert summary["wrong_instruction"]["tasks"]["reach-v3"]["per_episode"][0]["seed"] == 1000
    assert (out / "report.html").is_file() and (out / "reach-v3" / "episode_000_success.gif").is_file()
    assert cli(["eval", "--env", "toy", "--policy", "random", "--tasks", "mt10", "--out", str(tmp_path / "x")]) == 2
    assert "--tasks runs a Meta-World suite: use --env metaworld" in capsys.readouterr().err
