"""The `two_stage` toy variant: "touch the A block, then the B block", scored in order, eval-only."""

from __future__ import annotations

import numpy as np
import pytest

from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_scene import INSTRUCTION_TEMPLATES
from vlablocks.tools.toy.toy_two_stage import MAX_STEPS, TEMPLATES, TwoStageLayout

SEEDS = 300


def two_stage_env(**options) -> ToyTabletopEnv:
    return ToyTabletopEnv(ToyTabletopEnv.Config(variant="two_stage", **options))


def drive(env: ToyTabletopEnv, goals: list[int]) -> tuple[list[dict], list[np.ndarray]]:
    """Straight at blocks goals[0], goals[1], ... in turn (the next once within success_radius of the current; the
    last is held) until the episode ends -> (the info, the puck position after every step). Never reads the stage."""
    infos, positions, k = [], [], 0
    while True:
        goal = env.layout.positions[goals[k]]
        _, _, done, info = env.step(env.cap(goal - env.agent), observe=False)
        infos.append(info)
        positions.append(env.agent.copy())
        if np.linalg.norm(env.agent - goal) <= env.config.success_radius and k < len(goals) - 1:
            k += 1
        if done:
            return infos, positions


def ordered_stages(env: ToyTabletopEnv, positions: list[np.ndarray]) -> list[int]:
    """Scores a trajectory independently of the env: per step, how many of (A, B) were reached so far, in order."""
    layout, radius = env.layout, env.config.success_radius
    stages, stage = [], 0
    for p in positions:
        for index in (layout.target, layout.second)[stage:]:
            if np.linalg.norm(p - layout.positions[index]) > radius:
                break
            stage += 1
        stages.append(stage)
    return stages


def test_default_max_steps_is_per_variant_and_overridable():
    assert two_stage_env().config.max_steps == MAX_STEPS == 60
    assert ToyTabletopEnv().config.max_steps == 30
    assert ToyTabletopEnv(ToyTabletopEnv.Config(variant="heights")).config.max_steps == 30
    assert two_stage_env(max_steps=25).config.max_steps == 25
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        two_stage_env(max_steps=0)
    with pytest.raises(ValueError, match="num_objects >= 2"):
        two_stage_env(num_objects=1).reset(seed=0)


def test_expert_always_succeeds_within_the_default_max_steps():
    env = two_stage_env()
    steps = []
    for seed in range(SEEDS):
        env.reset(seed=seed)
        layout = env.layout
        stages = []
        while True:
            _, reward, done, info = env.step(env.expert_action(), observe=False)
            stages.append(info["stage"])
            if done:
                break
        assert info["success"] and info["stage"] == 2 and reward == 1.0, seed
        assert info["target"] == layout.colours[layout.second] and info["reached"] == layout.colours[layout.second]
        assert stages == sorted(stages) and 1 in stages, seed  # stage 1 came first, then 2 on the last step
        steps.append(len(stages))
    assert max(steps) <= MAX_STEPS // 2  # ample room: a learned policy gets 2-3x the expert's longest episode


def test_layout_prompt_and_start():
    env = two_stage_env()
    phrasings = set()
    for seed in range(60):
        obs = env.reset(seed=seed)
        layout = env.layout
        assert isinstance(layout, TwoStageLayout)
        assert len(set(layout.colours)) == len(layout.colours) and layout.target != layout.second
        first, second = layout.colours[layout.target], layout.colours[layout.second]
        prompt = obs["prompt"]
        assert first in prompt and second in prompt and prompt.index(first) < prompt.index(second)
        assert prompt == TEMPLATES[layout.template][0].format(first=first, second=second)
        phrasings.add(layout.template)
        clearance = np.linalg.norm(layout.positions - obs["state"], axis=1).min()
        assert clearance > 2 * env.config.success_radius, seed
        stage = TEMPLATES[layout.template][1]
        assert env.stage_instructions() == (stage.format(colour=first), stage.format(colour=second))
    assert phrasings == set(range(len(TEMPLATES)))
    assert all(stage in INSTRUCTION_TEMPLATES for _, stage in TEMPLATES)  # per-stage = a training phrasing
    with pytest.raises(ValueError, match="two_stage"):
        ToyTabletopEnv().stage_instructions()


def test_wrong_instruction_swaps_the_targets():
    env = two_stage_env()
    for seed in range(40):
        obs = env.reset(seed=seed)
        layout = env.layout
        first, second = layout.colours[layout.target], layout.colours[layout.second]
        wrong = env.wrong_instruction()
        assert wrong != obs["prompt"] and wrong.index(second) < wrong.index(first)
        assert wrong == TEMPLATES[layout.template][0].format(first=second, second=first)


def test_teleports_score_in_order_only():
    env = two_stage_env()
    env.reset(seed=7)
    layout = env.layout
    a, b = layout.positions[layout.target], layout.positions[layout.second]
    name_a, name_b = layout.colours[layout.target], layout.colours[layout.second]

    def visit(position: np.ndarray) -> tuple[bool, dict]:
        env.agent = position.copy()
        _, _, done, info = env.step(np.zeros(2), observe=False)
        return done, info

    done, info = visit(b)  # B before A: nothing
    assert (info["stage"], info["success"], done, info["target"]) == (0, False, False, name_a)
    assert info["reached"] == name_b
    done, info = visit(a)
    assert (info["stage"], info["success"], done, info["target"]) == (1, False, False, name_b)
    done, info = visit(a)  # A again: nothing
    assert (info["stage"], info["success"], done) == (1, False, False)
    assert info["distance"] == pytest.approx(float(np.linalg.norm(a - b)))
    done, info = visit(b)
    assert (info["stage"], info["success"], done, info["target"]) == (2, True, True, name_b)


def test_a_then_b_succeeds_with_stages_step_by_step():
    env = two_stage_env()
    for seed in range(SEEDS):
        env.reset(seed=seed)
        infos, positions = drive(env, [env.layout.target, env.layout.second])
        stages = ordered_stages(env, positions)
        assert [info["stage"] for info in infos] == stages, seed
        assert stages[-1] == 2 and stages.count(2) == 1 and 1 in stages, seed
        assert infos[-1]["success"] and not any(info["success"] for info in infos[:-1]), seed
        names = [info["target"] for info in infos]
        assert names == [env.layout.colours[env.layout.target if s == 0 else env.layout.second] for s in stages]


def test_b_then_a_does_not_succeed():
    env = two_stage_env()
    clean = 0
    for seed in range(SEEDS):
        env.reset(seed=seed)
        a, b = env.layout.positions[env.layout.target], env.layout.positions[env.layout.second]
        infos, positions = drive(env, [env.layout.second, env.layout.target])
        assert [info["stage"] for info in infos] == ordered_stages(env, positions), seed
        at_b = next(t for t, p in enumerate(positions) if np.linalg.norm(p - b) <= env.config.success_radius)
        if any(np.linalg.norm(p - a) <= env.config.success_radius for p in positions[:at_b]):
            continue  # the way to B crossed A first: A then B, a legitimate success
        clean += 1
        assert infos[at_b]["stage"] == 0 and not infos[at_b]["success"], seed
        assert len(infos) == MAX_STEPS and not infos[-1]["success"] and infos[-1]["stage"] == 1, seed
    assert clean >= 0.8 * SEEDS


def test_reaching_only_a_fails_at_stage_1():
    env = two_stage_env()
    for seed in range(40):
        env.reset(seed=seed)
        infos, _ = drive(env, [env.layout.target])
        assert len(infos) == MAX_STEPS and not infos[-1]["success"], seed
        assert infos[-1]["stage"] == 1 and infos[-1]["target"] == env.layout.colours[env.layout.second]


def test_batched_rollouts_run_both_stages_and_the_swapped_control():
    from vlablocks.core.envs.vector import make_vector_env
    from vlablocks.core.evaluation.rollout import run_episodes

    envs = make_vector_env({"name": "toy", "variant": "two_stage"}, count=6)
    seen: set[tuple[int, str]] = set()  # (env index, prompt the policy was given)

    def expert_actor(requests: list[dict], episodes: list) -> tuple[np.ndarray, list[dict]]:
        """The expert of the env whose puck is where the request's state says (chunks of 2)."""
        chunks = []
        for request in requests:
            i = next(i for i, e in enumerate(envs.envs) if np.array_equal(e.agent.astype(np.float32), request["state"]))
            env = envs.envs[i]
            seen.add((i, request["prompt"]))
            first = env.expert_action()
            chunks.append([first, env.cap(env.layout.positions[env.current_target()] - (env.agent + first))])
        return np.asarray(chunks, np.float32), [{} for _ in requests]

    seeds = list(range(100, 106))
    episodes = run_episodes(envs, seeds, expert_actor, open_loop_horizon=1)
    assert all(e.success for e in episodes) and all(e.steps > 1 for e in episodes)
    assert seen == {(i, env.layout.instruction) for i, env in enumerate(envs.envs)}
    seen.clear()
    run_episodes(envs, seeds, expert_actor, open_loop_horizon=1, wrong_instruction=True)
    assert seen == {(i, env.wrong_instruction()) for i, env in enumerate(envs.envs)}


def test_make_toy_data_refuses_two_stage(tmp_path, capsys):
    from vlablocks.cli.main import main
    from vlablocks.tools.toy.toy_dataset import write_toy_dataset

    out = tmp_path / "d"
    assert main(["make-toy-data", "--out", str(out), "--episodes", "2", "--variant", "two_stage"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "eval-only" in err and "colours" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="eval-only"):
        write_toy_dataset(out, 1, config=ToyTabletopEnv.Config(variant="two_stage"))
