"""The QD prompt search: meaning-preserving mutations, the MAP-Elites archive, resumable search, closed-loop
fitness against episodes run by hand, and `vlablocks qd-prompts` whose archive trains through prompt augmentation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlablocks.cli.main import main as cli
from vlablocks.core.build import build as build_component
from vlablocks.core.config import PlatformConfig, load_config, parse_experiment
from vlablocks.core.dataloader.prompt_augmentation import load_alternatives
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.registry import DATASETS
from vlablocks.core.training.train import train
from vlablocks.methods.language.qd_archive import Archive
from vlablocks.methods.language.qd_search import (
    ClosedLoopFailure,
    QDConfig,
    run_search,
    scenes_by_colour,
    write_prompts,
)
from vlablocks.tools.toy import toy_paraphrase as paraphrase
from vlablocks.tools.toy.toy_phrasings import target_colour

REPO = Path(__file__).resolve().parents[1]
PLATFORM = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}


def test_every_mutation_keeps_the_target_colour_changes_the_words_and_never_says_a_held_out_word():
    rng = np.random.default_rng(0)
    for original in paraphrase.originals():
        assert paraphrase.render(original) == original.origin and paraphrase.kinds(original) == ()
        for kind in paraphrase.KINDS:
            assert paraphrase.kinds(paraphrase.mutate(original, rng, kind)) == (kind,)  # one kind of change each
            phrase = original
            for _ in range(15):  # a random walk of one kind of change
                child = paraphrase.mutate(phrase, rng, kind)
                text = paraphrase.render(child)
                assert target_colour(text) == original.colour, text
                assert text != paraphrase.render(phrase) and child.colour == original.colour
                assert not {w.strip(",:") for w in text.split()} & paraphrase.HELD_OUT_WORDS, text
                phrase = child
        for _ in range(20):
            text = paraphrase.render(paraphrase.random_paraphrase(original, rng))
            assert target_colour(text) == original.colour, text
    assert {"teh", "crimson", "slide"} <= paraphrase.HELD_OUT_WORDS  # the held-out set's typo, synonym and verb


def test_rendering_kinds_and_descriptor_by_hand():
    red = next(p for p in paraphrase.originals() if p.origin == "move to the red block")
    changed = replace(red, colour_word="scarlet", order=1, clause="please")
    assert paraphrase.render(changed) == "the scarlet block: move to it please"  # 7 words: the long bucket
    assert paraphrase.kinds(changed) == ("synonym", "reorder", "distractor")
    assert paraphrase.descriptor(changed) == (0 * 2 + 1, 1 + 2 + 4)
    blue = next(p for p in paraphrase.originals() if p.origin == "go to the blue square")
    typo = replace(blue, typos=((0, 0, 0),))  # slot 0 = "go" is too short: "the" (first eligible), swap at 0
    assert paraphrase.render(typo) == "go to hte blue square"
    assert paraphrase.descriptor(typo) == (2 * 2 + 0, 8)
    assert paraphrase.Phrase.from_dict(json.loads(json.dumps(typo.to_dict()))) == typo


def test_archive_keeps_the_fittest_entry_per_cell_and_the_first_of_equals():
    archive = Archive((2, 3))
    assert archive.insert({"cell": [0, 1], "fitness": 0.2, "text": "a"})
    assert not archive.insert({"cell": [0, 1], "fitness": 0.1, "text": "b"})
    assert not archive.insert({"cell": [0, 1], "fitness": 0.2, "text": "c"})  # equal: the incumbent stays
    assert archive.insert({"cell": [0, 1], "fitness": 0.5, "text": "d"})
    assert archive.insert({"cell": [1, 2], "fitness": 0.0, "text": "e"})
    assert [e["text"] for e in archive.elites()] == ["d", "e"]
    assert archive.stats() == {
        "filled": 2,
        "coverage": 2 / 6,
        "qd_score": 0.5,
        "max_fitness": 0.5,
        "mean_fitness": 0.25,
    }
    grid = archive.fitness_grid()
    assert grid[0, 1] == 0.5 and grid[1, 2] == 0.0 and np.isnan(grid[0, 0])
    with pytest.raises(ValueError, match="outside the archive's grid"):
        archive.insert({"cell": [2, 0], "fitness": 1.0})


def hand_fitness(phrase) -> float:
    """A fitness anyone can compute: 0.5 for a colour synonym, 0.1 per typo, 0.05 for a reordering (capped at 1)."""
    return min(1.0, 0.5 * (phrase.colour_word != phrase.colour) + 0.1 * len(phrase.typos) + 0.05 * (phrase.order > 0))


@pytest.mark.parametrize("search", ["map-elites", "random"])
def test_search_keeps_the_fittest_candidate_of_every_cell_and_resumes_exactly(tmp_path, search):
    seen = []

    def fitness(phrases):
        values = [hand_fitness(p) for p in phrases]
        seen.extend(zip(phrases, values))
        return values

    cfg = QDConfig(search=search, iterations=6, batch=8, seed=5)
    archive, state = run_search(paraphrase, fitness, cfg, progress=False)
    assert state["evaluations"] == len(seen) == 20 + 6 * 8
    for cell, elite in archive.cells.items():
        in_cell = [(p, f) for p, f in seen if paraphrase.descriptor(p) == cell]
        best = max(f for _, f in in_cell)
        first_best = next(p for p, f in in_cell if f == best)
        assert elite["fitness"] == best and elite["text"] == paraphrase.render(first_best)
    assert len(archive.cells) == len({paraphrase.descriptor(p) for p, _ in seen})
    # stopped after 3 iterations and resumed to 6 = never stopped
    state_path = tmp_path / "state.json"
    run_search(paraphrase, fitness, replace(cfg, iterations=3), state_path, progress=False)
    resumed, resumed_state = run_search(paraphrase, fitness, cfg, state_path, progress=False)
    assert resumed.elites() == archive.elites() and resumed_state["evaluations"] == state["evaluations"]
    with pytest.raises(ValueError, match="was made with batch=8, not 4"):
        run_search(paraphrase, fitness, replace(cfg, batch=4), state_path, progress=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_elites_finds_fitter_prompts_than_random_paraphrases_at_the_same_budget(seed):
    stats = {
        search: run_search(
            paraphrase, lambda ps: [hand_fitness(p) for p in ps], QDConfig(search, 40, 16, seed=seed), None, False
        )[0].stats()
        for search in ("map-elites", "random")
    }
    assert stats["map-elites"]["qd_score"] > stats["random"]["qd_score"]
    assert stats["map-elites"]["mean_fitness"] > stats["random"]["mean_fitness"]


def test_an_archive_written_as_prompts_round_trips_into_training_prompt_augmentation(toy_dataset, tmp_path):
    archive, _ = run_search(
        paraphrase, lambda ps: [hand_fitness(p) for p in ps], QDConfig(iterations=6, batch=8), None, False
    )
    path = tmp_path / "archive.yaml"
    write_prompts(path, paraphrase, archive, "# test archive\n")
    alternatives = load_alternatives(path)
    assert set(alternatives) == {p.origin for p in paraphrase.originals()}  # every colour has paraphrases here
    for original, texts in alternatives.items():
        expected = [e for e in archive.elites() if e["kinds"] and e["colour"] == target_colour(original)]
        assert sorted(texts) == sorted(e["text"] for e in expected)
    overrides = [f"dataset.root={toy_dataset}", f"dataset.prompt_augmentation.path={path}"]
    datasets = {
        p: build_component(DATASETS, cfg.dataset, platform=cfg.platform, seed=0)
        for p in (0.0, 1.0)
        for cfg in [
            load_config(
                REPO / "configs/datasets/toy_prompt_aug.yaml",
                [*overrides, f"dataset.prompt_augmentation.replace_prob={p}"],
            )
        ]
    }
    for i in range(0, len(datasets[0.0]), 7):
        raw, trained = datasets[0.0][i]["prompt"], datasets[1.0][i]["prompt"]
        assert trained in alternatives[raw] and target_colour(trained) == target_colour(raw)


class PromptLengthActor:
    """Drives at full speed in a direction set by the instruction's length: success depends on words and scene."""

    def __call__(self, observations, episodes):
        angles = np.array([0.9 * len(obs["prompt"]) for obs in observations])
        step = 0.2 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return np.repeat(step[:, None, :], 4, axis=1).astype(np.float32), [{} for _ in observations]


def test_closed_loop_failure_matches_episodes_run_by_hand():
    env_config = {"name": "toy", "max_steps": 8}
    scenes = scenes_by_colour(env_config, 77, 3, ["red", "blue"], target_colour)
    envs = make_vector_env(env_config, count=1)
    for colour, seeds in scenes.items():
        assert len(seeds) == 3 and all(target_colour(envs.reset([s])[0]["prompt"]) == colour for s in seeds)
    prompts = [("the red box: go to it", "red"), ("go to the red block", "red"), ("approach the blue tile", "blue")]
    rates = ClosedLoopFailure(PromptLengthActor(), env_config, scenes, max_envs=4)(prompts)
    by_hand = [
        1 - np.mean([run_episodes(envs, [s], PromptLengthActor(), instructions=[t])[0].success for s in scenes[c]])
        for t, c in prompts
    ]
    assert rates == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="one per episode"):
        run_episodes(envs, [1], PromptLengthActor(), instructions=["a", "b"])


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("qd") / "run"
    data = synthetic_examples(
        PlatformConfig(**PLATFORM), 8, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"]
    )
    framework = {
        "name": "QwenOFT",
        "vlm": {"name": "qwen2_5_vl", "image_size": 56},
        "action_model": {"name": "l1_regression"},
    }
    trainer = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "save_every": 100}
    experiment = parse_experiment(
        {"run_dir": str(run_dir), "platform": PLATFORM, "framework": framework, "trainer": trainer}
    )
    return train(experiment, dataset=data)["checkpoint"]


def test_qd_prompts_cli_writes_an_archive_that_trains_through_prompt_augmentation(tiny_policy, toy_dataset, tmp_path):
    out = tmp_path / "qd" / "prompts.yaml"
    args = ["qd-prompts", "--ckpt", str(tiny_policy), "--env", "toy", "--out", str(out), "--iterations", "2"]
    small = ["--batch", "4", "--episodes", "2", "--validation-episodes", "2", "--max_steps=6"]
    assert cli([*args, *small]) == 0
    summary = json.loads(out.with_name("prompts.summary.json").read_text())
    state = json.loads(out.with_name("prompts.state.json").read_text())
    assert summary["evaluations"] == state["evaluations"] == 20 + 2 * 4 and out.with_suffix(".png").stat().st_size > 0
    assert summary["validation"]["originals"]["prompts"] == 20
    assert summary["validation"]["random_paraphrases"]["prompts"] == summary["validation"]["archive"]["prompts"]
    alternatives = load_alternatives(out)
    paraphrases = [e for e in state["archive"] if e["kinds"]]
    assert {t for texts in alternatives.values() for t in texts} == {e["text"] for e in paraphrases}
    for original, texts in alternatives.items():
        assert all(target_colour(text) == target_colour(original) for text in texts)
    # rescoring the archive on the same fresh scenes gives back the validation's per-prompt failure rates
    assert cli([*args, *small, "--rescore", str(out), "--out", str(tmp_path / "rescored.yaml")]) == 0
    rescored = json.loads((tmp_path / "rescored.summary.json").read_text())
    fresh = {e["text"]: e["fresh_fitness"] for entries in yaml.safe_load(out.read_text()).values() for e in entries}
    assert rescored["prompts"] == len(fresh) and rescored["per_phrasing"] == pytest.approx(fresh)
    # a second run with more iterations continues the first (20 + 3 x 4 prompts), and the inputs are checked
    assert cli([*args[:-1], "3", *small]) == 0
    assert json.loads(out.with_name("prompts.summary.json").read_text())["evaluations"] == 20 + 3 * 4
    with pytest.raises(ValueError, match="no paraphrase vocabulary"):
        cli(["--debug", "qd-prompts", "--ckpt", str(tiny_policy), "--env", "pusht", "--out", str(out)])
    with pytest.raises(ValueError, match="must name a .yaml file"):
        cli(["--debug", "qd-prompts", "--ckpt", str(tiny_policy), "--env", "toy", "--out", str(tmp_path / "p.txt")])
