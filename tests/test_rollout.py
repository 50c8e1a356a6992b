"""The rollout engine: one episode at a time and batched over a vector env give the same episodes; videos, records
and the policy adapter (chunk-broker semantics) behave as `vlablocks eval` needs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlablocks.core.envs.vector import InProcessEnvs, make_vector_env
from vlablocks.core.evaluation.rollout import PolicyActor, evaluate, run_episodes
from vlablocks.tools.toy.toy import ToyTabletopEnv

TOY = {"name": "toy", "max_steps": 20}


class HeadingPolicy:
    """Deterministic, from the request alone: full speed along a heading set by the instruction's length and the
    puck's position (a deterministic wander) -> chunks [3, 2]; succeeds on some scenes, not on others."""

    def __init__(self) -> None:
        self.resets = 0
        self.prompts: list[str] = []

    def infer(self, request: dict) -> dict:
        self.prompts.append(request["prompt"])
        angle = 0.7 * len(request["prompt"]) + 25.0 * float(request["state"][0]) + 17.0 * float(request["state"][1])
        step = 0.2 * np.array([np.cos(angle), np.sin(angle)], np.float32)
        return {"actions": np.repeat(step[None], 3, axis=0)}

    def reset(self) -> None:
        self.resets += 1


def outcomes(episodes) -> list[tuple]:
    return [(e.seed, e.success, e.steps, e.given, e.info["distance"], e.info["reached"]) for e in episodes]


def test_one_env_at_a_time_and_batched_give_the_same_episodes():
    seeds = list(range(40, 63))  # 23: the last batch of 5 is partial
    single = run_episodes(make_vector_env(TOY, 1), seeds, PolicyActor(HeadingPolicy()), 2)
    batched = run_episodes(make_vector_env(TOY, 5), seeds, PolicyActor(HeadingPolicy()), 2)
    assert outcomes(single) == outcomes(batched)
    assert 0 < sum(e.success for e in single) < len(seeds)  # both outcomes occur: the comparison means something
    # the control too, and the number of policy calls (every chunk re-queried after 2 of its 3 actions)
    single = run_episodes(make_vector_env(TOY, 1), seeds[:6], PolicyActor(HeadingPolicy()), 2, wrong_instruction=True)
    batched = run_episodes(make_vector_env(TOY, 6), seeds[:6], PolicyActor(HeadingPolicy()), 2, wrong_instruction=True)
    assert outcomes(single) == outcomes(batched)
    assert all(e.given != e.instruction for e in batched)
    assert [e.policy_calls for e in single] == [e.policy_calls for e in batched] == [-(-e.steps // 2) for e in single]


def test_evaluate_summaries_match_between_one_env_and_a_vector_env(tmp_path):
    one = evaluate(ToyTabletopEnv(ToyTabletopEnv.Config(max_steps=20)), HeadingPolicy(), 9, 40, tmp_path / "a", 3,
                   videos=2, progress=False)  # fmt: skip
    four = evaluate(make_vector_env(TOY, 4), HeadingPolicy(), 9, 40, tmp_path / "b", 3, videos=2, progress=False)

    def without_timing(summary: dict) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "infer_ms"} for e in summary["per_episode"]]

    assert without_timing(one) == without_timing(four)
    assert (one["successes"], one["ci95"]) == (four["successes"], four["ci95"])
    assert 0 < one["successes"] < 9
    assert [p.split("/")[-1] for p in one["videos"]] == [p.split("/")[-1] for p in four["videos"]]
    assert len(four["videos"]) == 2
    saved = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [e["seed"] for e in saved["per_episode"]] == list(range(40, 49))


def test_recorded_episodes_keep_a_frame_per_step_the_others_none():
    episodes = run_episodes(make_vector_env(TOY, 3), [1, 2, 3, 4], PolicyActor(HeadingPolicy()), 3, videos=2)
    assert [len(e.frames) for e in episodes[:2]] == [e.steps + 1 for e in episodes[:2]]
    assert all(not e.frames for e in episodes[2:]) and all(e.calls for e in episodes)
    quiet = run_episodes(make_vector_env(TOY, 3), [1, 2], PolicyActor(HeadingPolicy()), 3, keep_calls=False)
    assert all(e.calls == [] and e.policy_calls > 0 for e in quiet)


def test_the_policy_adapter_resets_per_episode_and_refuses_a_horizon_past_the_chunk():
    policy = HeadingPolicy()
    episodes = run_episodes(InProcessEnvs.wrap([ToyTabletopEnv()]), [5, 6, 7], PolicyActor(policy), 1)
    assert policy.resets == 3 and len(policy.prompts) == sum(e.steps for e in episodes)
    with pytest.raises(ValueError, match="longer than the policy's chunk of 3"):
        run_episodes(make_vector_env(TOY, 2), [1, 2], PolicyActor(HeadingPolicy()), 4)
    with pytest.raises(ValueError, match="one seed per env to reset"):
        make_vector_env(TOY, 2).reset([1, 2, 3])


class FakeLibero:
    """LIBERO's env interface (reset, set_init_state, step): the goal is reached when the summed x action reaches
    the initial state's number; counts the no-op settle steps."""

    def __init__(self) -> None:
        self.noops = 0

    def reset(self) -> None:
        self.total = 0.0

    def set_init_state(self, state: float) -> dict:
        self.goal = state
        return self.obs()

    def step(self, action: list[float]):
        if action == [0.0] * 6 + [-1.0]:
            self.noops += 1
        self.total += action[0]
        return self.obs(), 0.0, self.total >= self.goal, {}

    def obs(self) -> dict:
        return {"agentview_image": np.full((8, 8, 3), 9, np.uint8), "robot0_eye_in_hand_image": np.zeros((8, 8, 3), np.uint8),
                "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.zeros(2)}  # fmt: skip


class UnitPolicy:
    metadata = {"camera_keys": ["image"], "image_size": 8, "state_dim": 8, "action_horizon": 4}

    def infer(self, request: dict) -> dict:
        return {"actions": np.tile(np.array([1.0, 0, 0, 0, 0, 0, 1.0], np.float32), (4, 1))}


def test_the_libero_example_runs_its_task_adapter_through_the_engine():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "libero" / "main.py"
    spec = importlib.util.spec_from_file_location("libero_main", path)
    libero = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(libero)
    fake = FakeLibero()
    task = libero.LiberoTaskEnv(fake, [3.0, 50.0], "put the bowl on the plate", UnitPolicy.metadata, 10, 2, True)
    episodes = run_episodes(InProcessEnvs.wrap([task]), [0, 1], PolicyActor(UnitPolicy()), 3, videos=2)
    assert [(e.success, e.steps) for e in episodes] == [(True, 3), (False, 10)]  # goal reached / step budget out
    assert fake.noops == 4 and episodes[0].given == "put the bowl on the plate"
    assert [len(e.frames) for e in episodes] == [4, 11] and episodes[0].frames[0].shape == (8, 8, 3)
