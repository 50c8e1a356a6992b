"""Held-out phrasings of the toy task and `vlablocks eval --prompts`: per-phrasing success against episodes run by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vlablocks.cli.main import main as cli
from vlablocks.core.dataloader.prompt_augmentation import load_alternatives
from vlablocks.methods.language.phrasing import evaluate_phrasings
from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_phrasings import HELD_OUT_TEMPLATES, heldout_phrasings, target_colour
from vlablocks.tools.toy.toy_scene import COLOURS, INSTRUCTION_TEMPLATES

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_FILE = REPO / "configs" / "experiments" / "prompts" / "toy_heldout.yaml"


def test_colour_parser_reads_whole_words_and_synonyms_and_refuses_ambiguity():
    assert target_colour("go to the crimson block") == "red"
    assert target_colour("Move to the GREEN one.") == "green"
    assert target_colour("the red or the blue block") is None
    assert target_colour("a reddish block") is None
    assert target_colour("go somewhere") is None


def test_every_heldout_phrasing_names_its_originals_colour_and_no_training_config_uses_it():
    training = {t.format(colour=c) for t in INSTRUCTION_TEMPLATES for c in COLOURS}
    for path in (REPO / "configs" / "experiments" / "prompts").glob("*.yaml"):
        if path != HELD_OUT_FILE:
            alternatives = load_alternatives(path)
            training |= set(alternatives) | {a for values in alternatives.values() for a in values}
    phrasings = heldout_phrasings()
    assert set(phrasings) == {t.format(colour=c) for t in INSTRUCTION_TEMPLATES for c in COLOURS}
    for original, alternatives in phrasings.items():
        colour = next(c for c in COLOURS if re.search(rf"\b{c}\b", original))
        assert len(alternatives) == len(HELD_OUT_TEMPLATES)
        assert all(target_colour(a) == colour for a in alternatives), (original, alternatives)
        assert not set(alternatives) & training
    assert load_alternatives(HELD_OUT_FILE) == phrasings  # the shipped file is the set, in sync


class ColourWordPolicy:
    """A language oracle that knows only the four colour words (no synonyms): it moves straight to the block of
    the colour its instruction names, and stays put when it finds none."""

    def __init__(self, env: ToyTabletopEnv) -> None:
        self.env = env

    def infer(self, request: dict) -> dict:
        named = [c for c in COLOURS if re.search(rf"\b{c}\b", request["prompt"].lower())]
        layout = self.env.layout
        if len(named) != 1 or named[0] not in layout.colours:
            return {"actions": np.zeros((1, 2), np.float32)}
        goal = layout.positions[layout.colours.index(named[0])]
        return {"actions": self.env.cap(goal - self.env.agent).astype(np.float32)[None]}


def test_phrasing_eval_matches_episodes_run_by_hand(tmp_path):
    env = ToyTabletopEnv()
    policy = ColourWordPolicy(env)
    summary = evaluate_phrasings(env, policy, 4, 300, tmp_path, 1, heldout_phrasings(), progress=False)
    kinds = list(HELD_OUT_TEMPLATES)
    synonym = 1 + kinds.index("synonym")
    # the oracle succeeds wherever the colour word is present and fails on the synonym phrasing
    assert summary["original"]["success_rate"] == 1.0
    assert summary["per_position"][str(synonym)]["success_rate"] == 0.0
    assert all(summary["per_position"][str(p)]["success_rate"] == 1.0 for p in range(1, 6) if p != synonym)
    assert summary["alternatives"]["successes"] == 4 * (len(kinds) - 1)
    for run in summary["runs"][:12]:  # replayed by hand: same seed, same words
        obs, done = env.reset(seed=run["seed"]), False
        while not done:
            obs, _, done, info = env.step(policy.infer({**obs, "prompt": run["instruction"]})["actions"][0])
        assert info["success"] == run["success"]
    assert json.loads((tmp_path / "summary.json").read_text())["per_phrasing"] == summary["per_phrasing"]


def test_eval_cli_with_prompts_reports_per_phrasing_and_refuses_an_unlisted_instruction(tmp_path):
    args = ["eval", "--env", "toy", "--policy", "expert", "--episodes", "2", "--videos", "0"]
    assert cli([*args, "--prompts", str(HELD_OUT_FILE), "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["original"]["episodes"] == 2 and summary["alternatives"]["episodes"] == 2 * len(HELD_OUT_TEMPLATES)
    assert summary["alternatives"]["success_rate"] == 1.0  # the expert ignores the words
    partial = tmp_path / "partial.yaml"
    partial.write_text("move to the nowhere block:\n  - go nowhere\n")
    with pytest.raises(ValueError, match="no alternatives for the instruction"):
        cli(["--debug", *args, "--prompts", str(partial), "--out", str(tmp_path / "b")])
