"""Third-party simulator adapters: gym-aloha and gym-pusht episodes through a served tiny framework checkpoint.

The simulator tests need the `sim` extra (`pip install -e .[sim]`) and skip, saying so, without it; the tests
of the missing-package path run everywhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deployment.client import ActionChunkBroker, PolicyClient
from vlablocks.core.build import build
from vlablocks.core.config import load_config, parse_experiment, validate
from vlablocks.core.evaluation.rollout import evaluate
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.registry import EVAL_ENVS
from vlablocks.core.serving.policy import load_policy
from vlablocks.core.serving.server import running_server, validate_observation

REPO = Path(__file__).resolve().parents[1]
SIM_EXTRA = "the sim extra is not installed (pip install -e .[sim])"
TINY_VLM = ["framework.vlm.base_vlm=null", "framework.vlm.arch=tiny", "framework.vlm.image_size=56"]
TINY_HEAD = ["framework.action_model.hidden_dim=32", "framework.action_model.num_blocks=1"]
# gym-aloha's ctrl vector: per arm 6 joint targets then 2 gripper fingers; the 14-D action has 1 gripper per arm.
ALOHA_ARM_CTRL, ALOHA_ARM_ACTION = [*range(0, 6), *range(8, 14)], [*range(0, 6), *range(7, 13)]


def norm_stats(name: str, action_mean: list[float], action_std: list[float], state_dim: int) -> dict:
    """mean_std stats (action = normalized * std + mean) and a unit-range state, as `vlablocks stats` writes them."""

    def entry(mean: list[float], std: list[float]) -> dict:
        low, high = [m - 2 * s for m, s in zip(mean, std)], [m + 2 * s for m, s in zip(mean, std)]
        bounds = {"min": low, "max": high, "q01": low, "q99": high}
        return {**bounds, "mean": mean, "std": std, "mask": [True] * len(mean), "count": 10}

    return {
        name: {
            "mode": "mean_std",
            "action": entry(action_mean, action_std),
            "state": entry([0.0] * state_dim, [1.0] * state_dim),
        }
    }


# ---- without the simulators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_name, package", [("aloha_transfer_cube", "gym_aloha"), ("pusht", "gym_pusht"), ("metaworld", "metaworld")]
)
def test_a_missing_simulator_fails_only_when_built_naming_the_extra(monkeypatch, env_name, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    assert env_name in EVAL_ENVS.names()
    with pytest.raises(ImportError, match=rf"eval env '{env_name}' needs .*'{package}'.*pip install -e \.\[sim\]"):
        build(EVAL_ENVS, {"name": env_name})


def test_listing_envs_needs_no_simulator_package():
    blocked = ["gym_aloha", "gym_pusht", "metaworld", "dm_control", "mujoco", "pymunk", "pygame"]
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        "from vlablocks.cli.main import main; sys.exit(main(['list', 'eval_envs']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ("aloha_transfer_cube", "pusht", "metaworld", "toy")), result.stdout


def test_env_options_are_validated_against_the_config():
    with pytest.raises(ValueError, match="unknown key max_step — did you mean max_steps"):
        validate({"name": "aloha_transfer_cube", "max_step": 3}, EVAL_ENVS.entry("aloha_transfer_cube").config_class)


# ---- gym-aloha ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aloha_env():
    pytest.importorskip("gym_aloha", reason=f"gym-aloha cannot be imported: {SIM_EXTRA}")
    env = build(EVAL_ENVS, {"name": "aloha_transfer_cube", "max_steps": 3})
    yield env
    env.close()


@pytest.fixture(scope="module")
def aloha_checkpoint(tmp_path_factory, aloha_env) -> Path:
    """The example's QwenOFT config (aloha platform: chunks [25, 14], state 14) with a tiny random VLM."""
    experiment = load_config(REPO / "examples/aloha_sim/qwen_oft_aloha.yaml", [*TINY_VLM, *TINY_HEAD])
    stats = norm_stats("aloha_sim_transfer_cube_human", [0.0] * 14, [0.2] * 14, 14)
    return build_policy(experiment, stats).save_pretrained(tmp_path_factory.mktemp("aloha") / "ckpt")


def test_aloha_episode_through_the_served_checkpoint(aloha_env, aloha_checkpoint, tmp_path):
    with running_server(load_policy(aloha_checkpoint)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        meta = client.metadata
        assert (meta["action_horizon"], meta["action_dim"], meta["state_dim"]) == (25, 14, 14)
        assert meta["camera_keys"] == ["top"]  # the example dataset's observation.images.top, the env's camera
        assert meta["embodiment"] == "aloha_sim_transfer_cube_human" == aloha_env.config.dataset_name

        obs = aloha_env.reset(seed=0)
        assert aloha_env.action_dim == aloha_env.state_dim == 14
        assert obs["state"].shape == (14,) and obs["state"].dtype == np.float32
        [top] = obs["images"].values()
        assert list(obs["images"]) == meta["camera_keys"]
        assert top.shape == (480, 640, 3) and top.dtype == np.uint8
        assert top.std() > 10, "the top camera rendered a blank frame (MUJOCO_GL / libosmesa6?)"

        broker = ActionChunkBroker(client, open_loop_horizon=25)
        for _ in range(2):
            action = broker.infer(obs)["actions"]
            assert action.shape == (14,) and action.dtype == np.float32
            obs, reward, done, info = aloha_env.step(action)
            # the simulator drives the arm joints at exactly the served targets
            np.testing.assert_allclose(aloha_env.physics.data.ctrl[ALOHA_ARM_CTRL], action[ALOHA_ARM_ACTION], 1e-6)
            assert not done and info["success"] is False

        summary = evaluate(aloha_env, client, 1, 0, tmp_path, 25, videos=1, progress=False)
    assert summary["per_episode"][0]["steps"] == 3 and summary["successes"] == 0  # max_steps ends the episode
    assert summary["per_episode"][0]["instruction"] == aloha_env.config.instruction
    assert Path(summary["videos"][0]).stat().st_size > 0


def test_aloha_success_is_the_tasks_max_reward(aloha_env):
    obs = aloha_env.reset(seed=1)
    obs, reward, done, info = aloha_env.step(obs["state"])  # hold still: the cube rests on the table
    assert (reward, done, info["success"]) == (0.0, False, False)
    # Put the cube against the left gripper's finger, in the air: the left arm holds it off the table.
    physics = aloha_env.physics
    physics.named.data.qpos["red_box_joint"][:3] = physics.named.data.geom_xpos["vx300s_left/10_left_gripper_finger"]
    physics.forward()
    obs, reward, done, info = aloha_env.step(obs["state"])
    assert (reward, done, info["success"]) == (4.0, True, True)


def test_aloha_rejects_a_wrong_action_size(aloha_env):
    aloha_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"aloha_transfer_cube action must be 14 finite numbers, got shape \(7,\)"):
        aloha_env.step(np.zeros(7))


# ---- gym-pusht ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pusht_env():
    pytest.importorskip("gym_pusht", reason=f"gym-pusht cannot be imported: {SIM_EXTRA}")
    env = build(EVAL_ENVS, {"name": "pusht", "max_steps": 4})
    yield env
    env.close()


@pytest.fixture(scope="module")
def pusht_checkpoint(tmp_path_factory, pusht_env) -> Path:
    experiment = parse_experiment(
        {
            "platform": {"name": "pusht", "action_horizon": 4, "action_dim": 2, "state_dim": 2},
            "dataset": {"name": "lerobot", "root": "data/pusht", "camera_keys": ["observation.image"]},
            "framework": {
                "name": "QwenOFT",
                "vlm": {"name": "qwen2_5_vl", "arch": "tiny", "image_size": 56},
                "action_model": {"name": "l1_regression", "hidden_dim": 32, "num_blocks": 1},
            },
        },
    )
    stats = norm_stats("pusht", [256.0, 256.0], [60.0, 60.0], 2)
    return build_policy(experiment, stats).save_pretrained(tmp_path_factory.mktemp("pusht") / "ckpt")


def test_pusht_episode_through_the_served_checkpoint(pusht_env, pusht_checkpoint, tmp_path):
    with running_server(load_policy(pusht_checkpoint)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        meta = client.metadata
        assert (meta["action_horizon"], meta["action_dim"], meta["state_dim"]) == (4, 2, 2)
        obs = pusht_env.reset(seed=0)
        assert meta["camera_keys"] == list(obs["images"]) == ["image"]  # lerobot/pusht's observation.image
        view = obs["images"]["image"]
        assert view.shape == (96, 96, 3) and view.dtype == np.uint8 and view.std() > 10
        assert obs["state"].shape == (2,) and obs["prompt"] == "Push the T-shaped block onto the T-shaped target."

        action = ActionChunkBroker(client, 4).infer(obs)["actions"]
        assert action.shape == (2,) and action.dtype == np.float32
        before = np.linalg.norm(obs["state"] - action)
        obs, reward, done, info = pusht_env.step(action)
        # the agent is PD-controlled towards the commanded position: one 0.1 s step closes ~30% of the gap
        assert np.linalg.norm(obs["state"] - action) < 0.9 * before

        summary = evaluate(pusht_env, client, 2, 0, tmp_path, 4, videos=0, progress=False)
    assert [e["steps"] for e in summary["per_episode"]] == [4, 4] and summary["successes"] == 0


def test_pusht_success_is_95_percent_coverage_of_the_target(pusht_env):
    obs = pusht_env.reset(seed=0)
    obs, reward, done, info = pusht_env.step(obs["state"])
    assert not info["success"] and not done and reward < 1.0
    block, goal = pusht_env.env.unwrapped.block, pusht_env.env.unwrapped.goal_pose
    block.angle = goal[2]  # angle first: pymunk rotates about the centre of gravity, which moves the origin
    block.position = goal[:2].tolist()
    far_corner = np.array([480.0, 480.0], dtype=np.float32)  # park the agent away from the block
    pusht_env.env.unwrapped.agent.position = far_corner.tolist()
    obs, reward, done, info = pusht_env.step(far_corner)
    assert (reward, done, info["success"]) == (1.0, True, True)


# ---- examples ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, dims, cameras",
    [
        ("examples/aloha_sim/qwen_oft_aloha.yaml", (25, 14, 14), ["observation.images.top"]),
        (
            "examples/libero/qwen_oft_libero.yaml",
            (8, 7, 8),
            ["observation.images.image", "observation.images.wrist_image"],
        ),
    ],
)
def test_example_configs_resolve_to_their_platform(config, dims, cameras):
    experiment = load_config(REPO / config)
    platform = experiment.platform
    assert (platform.action_horizon, platform.action_dim, platform.state_dim) == dims
    assert experiment.dataset["camera_keys"] == cameras and experiment.framework["name"] == "QwenOFT"


@pytest.fixture(scope="module")
def libero_client():
    """examples/libero/main.py as a module (LIBERO itself is imported only by its main())."""
    spec = importlib.util.spec_from_file_location("libero_main", REPO / "examples/libero/main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_libero_client_axis_angle_matches_scipy(libero_client):
    from scipy.spatial.transform import Rotation

    for quat in Rotation.random(20, random_state=0).as_quat():  # (x, y, z, w), robosuite's order too
        quat = quat if quat[3] >= 0 else -quat  # the same rotation, angle in [0, pi]
        np.testing.assert_allclose(
            libero_client.quat_to_axis_angle(quat), Rotation.from_quat(quat).as_rotvec(), atol=1e-5
        )
    np.testing.assert_array_equal(libero_client.quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), np.zeros(3))


def test_libero_client_sends_what_the_server_accepts(libero_client):
    agentview = np.zeros((256, 256, 3), np.uint8)
    agentview[:32, :32] = (255, 0, 0)  # a red marker in the top-left corner of LIBERO's render
    obs = {
        "agentview_image": agentview,
        "robot0_eye_in_hand_image": np.full((256, 256, 3), 7, np.uint8),
        "robot0_eef_pos": np.array([0.1, -0.2, 1.1]),
        "robot0_eef_quat": np.array([0.0, 0.0, np.sin(0.25), np.cos(0.25)]),  # 0.5 rad about z
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }
    meta = {"camera_keys": ["image", "wrist_image"], "state_dim": 8}  # the camera names of the example's dataset
    request = libero_client.wire_observation(obs, meta["camera_keys"], [224, 224], "put the bowl on the plate")
    checked = validate_observation(request, meta)
    main_view = checked["images"]["image"]
    assert main_view.shape == (224, 224, 3) and checked["images"]["wrist_image"].shape == (224, 224, 3)
    assert (main_view[-8:, -8:] == (255, 0, 0)).all() and (main_view[:8, :8] == 0).all()  # rotated 180 degrees
    np.testing.assert_allclose(checked["state"], [0.1, -0.2, 1.1, 0.0, 0.0, 0.5, 0.04, -0.04], atol=1e-6)
    upright = libero_client.wire_observation(obs, meta["camera_keys"][:1], 224, "x", rotate=False)
    assert (upright["images"]["image"][:8, :8] == (255, 0, 0)).all()
    with pytest.raises(ValueError, match=r"LIBERO gives 2 views \(agentview, wrist\); the policy wants"):
        libero_client.wire_observation(obs, ["a", "b", "c"], 224, "x")


def test_pusht_in_worker_processes_steps_like_in_process():
    """RL's vector env runs a slow simulator one process per env (msgpack over pipes); same seeds, same actions."""
    pytest.importorskip("gym_pusht", reason=f"gym-pusht cannot be imported: {SIM_EXTRA}")
    from vlablocks.core.envs.vector import make_vector_env

    config = {"name": "pusht", "max_steps": 4}
    local, workers = make_vector_env(config, 2), make_vector_env(config, 2, workers=True)
    try:
        for a, b in zip(local.reset([0, 1]), workers.reset([0, 1])):
            assert a["images"].keys() == b["images"].keys() and a["prompt"] == b["prompt"]
            assert all(np.array_equal(a["images"][k], b["images"][k]) for k in a["images"])
        actions = {0: np.array([200.0, 200.0], np.float32), 1: np.array([300.0, 250.0], np.float32)}
        stepped_local, stepped_workers = local.step(actions), workers.step(actions)
        for i in actions:
            assert np.allclose(stepped_local[i][0]["state"], stepped_workers[i][0]["state"])
            assert stepped_local[i][1] == pytest.approx(stepped_workers[i][1])
            assert stepped_local[i][3]["success"] == stepped_workers[i][3]["success"]
    finally:
        workers.close()
        local.close()
