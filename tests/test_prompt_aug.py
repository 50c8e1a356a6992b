"""Prompt augmentation: replacement rate, seeding, malformed files, unknown instructions, logging."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from vlablocks.core.dataloader.prompt_augmentation import PromptAugmenter, load_alternatives

REPO = Path(__file__).resolve().parent.parent
TABLE = {"move to the red block": ["head for the red block", "go to the red cube"], "open the door": ["open it"]}


def draws(augmenter: PromptAugmenter, n: int, epoch: int = 0, instruction: str = "move to the red block") -> list[str]:
    return [augmenter(instruction, (epoch, i)) for i in range(n)]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.75, 1.0])
def test_replacement_rate_matches_replace_prob(p):
    n = 4000
    out = draws(PromptAugmenter(TABLE, p, seed=1, log_every=0), n)
    rate = sum(o != "move to the red block" for o in out) / n
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12  # 4 standard deviations
    if p > 0:  # every alternative is used, and only alternatives
        assert {o for o in out if o != "move to the red block"} == set(TABLE["move to the red block"])


def test_same_seed_same_prompts_other_seed_or_epoch_differs():
    a = draws(PromptAugmenter(TABLE, 0.5, seed=7), 300)
    assert a == draws(PromptAugmenter(TABLE, 0.5, seed=7), 300)
    assert a != draws(PromptAugmenter(TABLE, 0.5, seed=8), 300)
    assert a != draws(PromptAugmenter(TABLE, 0.5, seed=7), 300, epoch=1)


def test_decision_depends_on_the_key_not_on_call_order():
    # What a DataLoader worker sees: its own subset of indices, in its own order.
    aug = PromptAugmenter(TABLE, 0.5, seed=3)
    reference = {i: aug("move to the red block", (0, i)) for i in range(100)}
    worker = PromptAugmenter(TABLE, 0.5, seed=3)
    assert {i: worker("move to the red block", (0, i)) for i in reversed(range(1, 100, 2))} == {
        i: reference[i] for i in range(1, 100, 2)
    }


def test_unknown_instructions_pass_through_counted_and_reported_once(caplog):
    aug = PromptAugmenter(TABLE, 1.0, seed=0)
    with caplog.at_level(logging.WARNING, logger="vlablocks.core.dataloader.prompt_augmentation"):
        out = [aug("stack the cups", (0, i)) for i in range(5)] + [aug("wipe the table", (0, 9))]
    assert out == ["stack the cups"] * 5 + ["wipe the table"]
    assert aug.unknown == {"stack the cups": 5, "wipe the table": 1}
    assert len([r for r in caplog.records if "not in the alternatives file" in r.message]) == 1


def test_logs_one_replacement_example_every_log_every(caplog):
    aug = PromptAugmenter(TABLE, 1.0, seed=0, log_every=10)
    with caplog.at_level(logging.INFO, logger="vlablocks.core.dataloader.prompt_augmentation"):
        draws(aug, 35)
    examples = [r for r in caplog.records if "prompt augmentation (" in r.message]
    assert len(examples) == 4  # the first replacement, then at samples 10, 20, 30
    assert "'move to the red block' -> " in examples[0].message


def test_the_examples_reach_stderr_once_under_the_cli_logging_and_other_libraries_info_stays_hidden():
    script = (
        "import logging\n"
        "from vlablocks.core.logs import show_project_logs\n"
        "from vlablocks.core.dataloader.prompt_augmentation import PromptAugmenter\n"
        "show_project_logs(); show_project_logs()\n"
        "logging.basicConfig(level=logging.INFO)  # what a library may do later: must not double the lines\n"
        "logging.getLogger('somelib').info('library chatter')\n"
        "logging.getLogger('somelib').warning('library warning')\n"
        f"aug = PromptAugmenter({TABLE!r}, 1.0, seed=0, log_every=10)\n"
        "[aug('move to the red block', (0, i)) for i in range(25)]\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = result.stderr.splitlines()
    assert sum("prompt augmentation (" in line for line in lines) == 3  # samples 1, 10, 20: each once
    assert "library warning" in result.stderr and "library chatter" not in result.stderr


@pytest.mark.parametrize(
    "text, key",
    [
        ("move to the red block: head for it\n", "move to the red block"),  # a string, not a list
        ("move to the red block: []\n", "move to the red block"),
        ("open the door:\n  - open it\n  - 3\n", "open the door"),
        ("3: [x]\n", "key 3 must be a non-empty instruction string"),
    ],
)
def test_malformed_yaml_is_rejected_naming_the_key(tmp_path, text, key):
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_alternatives(path)
    assert key in str(error.value)


def test_replace_prob_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"replace_prob must be in \[0, 1\], got 1.5"):
        PromptAugmenter(TABLE, 1.5, seed=0)


def test_shipped_toy_prompt_file_is_valid_and_keeps_the_colour():
    from vlablocks.tools.toy.toy_scene import COLOURS, INSTRUCTION_TEMPLATES

    table = load_alternatives(REPO / "configs/experiments/prompts/toy.yaml")
    instructions = {t.format(colour=c) for t in INSTRUCTION_TEMPLATES for c in COLOURS}
    assert set(table) == instructions
    for instruction, alternatives in table.items():
        colour = next(c for c in COLOURS if c in instruction)
        assert all(colour in a for a in alternatives), instruction
