"""The toy tabletop env: determinism, expert success, language necessity, geometry of images and depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, load_yaml, to_dataclass
from vlablocks.core.dataloader.sample import validate_sample
from vlablocks.core.registry import EVAL_ENVS
from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_scene import AGENT_HEIGHT, AGENT_RGB, BLOCK_HEIGHT, COLOURS

REPO = Path(__file__).resolve().parent.parent
TOY = to_dataclass(PlatformConfig, load_yaml(REPO / "configs/platforms/toy.yaml")["platform"])


def run_expert(env: ToyTabletopEnv, seed: int, instruction_override: np.ndarray | None = None) -> tuple[bool, int]:
    env.reset(seed=seed)
    for steps in range(1, env.config.max_steps + 1):
        action = env.expert_action() if instruction_override is None else env.cap(instruction_override - env.agent)
        _, _, done, info = env.step(action)
        if done:
            return info["success"], steps
    raise AssertionError("the env never ended the episode")


def test_registered_and_built_from_options():
    env = build(EVAL_ENVS, {"name": "toy", "cameras": ["top", "wrist"], "num_objects": 2})
    assert isinstance(env, ToyTabletopEnv)
    obs = env.reset(seed=0)
    assert list(obs["images"]) == ["top", "wrist"] and len(env.layout.colours) == 2


def test_observation_keeps_the_sample_contract_and_platform_dims():
    env = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["top", "wrist"]))
    obs = env.reset(seed=3)
    validate_sample(obs, camera_keys=["top", "wrist"], state_dim=TOY.state_dim)
    assert obs["images"]["top"].shape == (112, 112, 3) and obs["intrinsics"]["wrist"].shape == (3, 3)
    assert list(obs["depth"]) == list(obs["intrinsics"]) == ["top", "wrist"]
    assert env.action_dim == TOY.action_dim and env.state_dim == TOY.state_dim


def test_same_seed_same_episode_different_seed_different_layout():
    a, b = ToyTabletopEnv(), ToyTabletopEnv()
    oa, ob = a.reset(seed=11), b.reset(seed=11)
    np.testing.assert_array_equal(oa["images"]["top"], ob["images"]["top"])
    assert oa["prompt"] == ob["prompt"] and np.array_equal(oa["state"], ob["state"])
    starts = {(tuple(a.reset(seed=s)["state"]), a.layout.colours, tuple(a.layout.positions.ravel())) for s in range(20)}
    assert len(starts) == 20


def test_expert_always_succeeds_quickly():
    env = ToyTabletopEnv()
    results = [run_expert(env, seed) for seed in range(100)]
    assert all(success for success, _ in results)
    assert max(steps for _, steps in results) <= 14  # at most ~1.25 table widths at 0.1 per step


def test_language_is_necessary_reaching_another_block_fails():
    env = ToyTabletopEnv()
    for seed in range(30):
        env.reset(seed=seed)
        wrong = env.layout.positions[(env.layout.target + 1) % len(env.layout.colours)]
        success, _ = run_expert(env, seed, instruction_override=wrong)
        assert not success, seed
        assert env.layout.colours[env.layout.target] in env.layout.instruction
        assert env.layout.colours[env.layout.target] not in env.wrong_instruction()


def test_info_names_the_block_the_puck_reached():
    env = ToyTabletopEnv()
    env.reset(seed=3)
    layout = env.layout
    wrong = (layout.target + 1) % len(layout.colours)
    env.agent = layout.positions[wrong].copy()
    _, _, done, info = env.step(np.zeros(2))
    assert info["reached"] == layout.colours[wrong] and not info["success"] and not done
    env.agent = layout.positions[layout.target].copy()
    assert env.step(np.zeros(2))[3]["reached"] == layout.colours[layout.target]
    far = max(
        ((x, y) for x in np.linspace(0, 1, 11) for y in np.linspace(0, 1, 11)),
        key=lambda p: np.linalg.norm(layout.positions - np.array(p), axis=1).min(),
    )
    env.agent = np.array(far)
    assert env.step(np.zeros(2))[3]["reached"] is None


def test_image_shows_each_block_colour_at_its_projected_centre_and_the_puck():
    env = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["top"]))
    obs = env.reset(seed=5)
    image, k = obs["images"]["top"], obs["intrinsics"]["top"]
    for (x, y), colour in zip(env.layout.positions, env.layout.colours):
        # Top camera at (0.5, 0.5, 1.5) looking down, y_cam = -y_world.
        depth = 1.5 - BLOCK_HEIGHT
        u = k[0, 0] * (x - 0.5) / depth + k[0, 2]
        v = k[1, 1] * (0.5 - y) / depth + k[1, 2]
        assert tuple(image[int(v), int(u)]) == COLOURS[colour]
    u = k[0, 0] * (env.agent[0] - 0.5) / (1.5 - AGENT_HEIGHT) + k[0, 2]
    v = k[1, 1] * (0.5 - env.agent[1]) / (1.5 - AGENT_HEIGHT) + k[1, 2]
    assert tuple(image[int(v), int(u)]) == AGENT_RGB


@pytest.mark.parametrize("camera", ["top", "wrist"])
def test_depth_back_projects_onto_the_scene_surfaces(camera):
    env = ToyTabletopEnv(ToyTabletopEnv.Config(cameras=[camera]))
    obs = env.reset(seed=8)
    depth, k = obs["depth"][camera], obs["intrinsics"][camera]
    height = 1.5 if camera == "top" else 0.45
    eye = np.array([0.5, 0.5]) if camera == "top" else env.agent
    for x, y in env.layout.positions:
        u = k[0, 0] * (x - eye[0]) / (height - BLOCK_HEIGHT) + k[0, 2]
        v = k[1, 1] * (eye[1] - y) / (height - BLOCK_HEIGHT) + k[1, 2]
        if 0 <= u < 112 and 0 <= v < 112:
            z = depth[int(v), int(u)]
            assert z == pytest.approx(height - BLOCK_HEIGHT)
            # Back-projection of that pixel's centre lands inside the block top.
            px = eye[0] + (int(u) + 0.5 - k[0, 2]) * z / k[0, 0]
            py = eye[1] - (int(v) + 0.5 - k[1, 2]) * z / k[1, 1]
            assert abs(px - x) <= env.config.block_half and abs(py - y) <= env.config.block_half
    assert depth.max() == pytest.approx(height) or depth.max() == pytest.approx(height + 0.5)  # table or floor


def test_actions_are_capped_and_bad_actions_rejected():
    env = ToyTabletopEnv()
    env.reset(seed=0)
    start = env.agent.copy()
    env.step(np.array([5.0, 0.0]))
    assert np.linalg.norm(env.agent - start) <= env.config.max_move + 1e-9
    with pytest.raises(ValueError, match=r"toy env action must be 2 finite numbers, got \[1.0, 2.0, 3.0\]"):
        env.step(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="cameras must be a non-empty subset"):
        ToyTabletopEnv(ToyTabletopEnv.Config(cameras=["side"]))


def test_a_step_without_observing_moves_the_same_and_renders_nothing():
    seen, blind = ToyTabletopEnv(), ToyTabletopEnv()
    seen.reset(seed=3), blind.reset(seed=3)
    for _ in range(3):
        action = seen.expert_action()
        obs_seen, reward_seen, done_seen, info_seen = seen.step(action)
        obs_blind, reward_blind, done_blind, info_blind = blind.step(action, observe=False)
        assert obs_blind is None and obs_seen is not None
        assert (reward_seen, done_seen, info_seen["distance"]) == (reward_blind, done_blind, info_blind["distance"])
    assert np.array_equal(blind.observation()["images"]["top"], obs_seen["images"]["top"])
