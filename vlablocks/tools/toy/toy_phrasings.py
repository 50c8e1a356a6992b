"""Held-out phrasings of the toy task's instructions, and the parser that says which colour a phrasing names.

The training phrasings are the env's templates (toy_scene.INSTRUCTION_TEMPLATES) and the hand-written
alternatives of configs/experiments/prompts/toy.yaml. The held-out set below (configs/experiments/prompts/toy_heldout.yaml is written
from it by `write_heldout_prompts`) uses what no training config does, one kind of change per template:

    verb        new verbs:                      "slide over to the {c} block"
    order       the object first:               "the {c} block is where you should go"
    filler      an irrelevant clause:           "when you are ready, drive to the {c} block and stay there"
    synonym     another word for the colour:    "go to the {synonym} block"  (crimson, emerald, azure, golden)
    typo        misspelt words (not the colour): "moev to teh {c} blcok"

`target_colour(text)` reads the colour a phrasing names (colour words, the held-out synonyms above and the
prompt search's own synonyms SEARCH_SYNONYMS, whole words); every held-out phrasing must name exactly the colour
of its original, and so must every paraphrase the search makes (tests/test_phrasings.py, tests/test_qd_prompts.py).
The search's vocabulary (vlablocks/tools/toy/toy_paraphrase.py) shares no word with the held-out set's new words.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vlablocks.tools.toy.toy_scene import COLOURS, INSTRUCTION_TEMPLATES

SYNONYMS: dict[str, str] = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden"}
SEARCH_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("scarlet", "ruby", "cherry"),
    "green": ("jade", "lime", "mint"),
    "blue": ("cobalt", "navy", "sapphire"),
    "yellow": ("lemon", "amber", "canary"),
}
HELD_OUT_TEMPLATES: dict[str, str] = {
    "verb": "slide over to the {colour} block",
    "order": "the {colour} block is where you should go",
    "filler": "when you are ready, drive to the {colour} block and stay there",
    "synonym": "go to the {synonym} block",
    "typo": "moev to teh {colour} blcok",
}
_WORDS = {word: colour for colour in COLOURS for word in (colour, SYNONYMS[colour], *SEARCH_SYNONYMS[colour])}


def target_colour(text: str) -> str | None:
    """The one colour `text` names (a colour word or its synonym), or None when it names none or several."""
    named = {_WORDS[word] for word in re.findall(r"[a-z]+", text.lower()) if word in _WORDS}
    return named.pop() if len(named) == 1 else None


def heldout_phrasings() -> dict[str, list[str]]:
    """Every instruction the env can give -> its held-out phrasings, in HELD_OUT_TEMPLATES order."""
    return {
        template.format(colour=colour): [
            held_out.format(colour=colour, synonym=SYNONYMS[colour]) for held_out in HELD_OUT_TEMPLATES.values()
        ]
        for colour in COLOURS
        for template in INSTRUCTION_TEMPLATES
    }


def write_heldout_prompts(path: str | Path) -> Path:
    """Writes the held-out set in the prompt-augmentation YAML format (original -> alternatives)."""
    path = Path(path)
    header = "# Held-out phrasings of the toy instructions (vlablocks/tools/toy/toy_phrasings.py); no training config uses them.\n"
    path.write_text(header + yaml.safe_dump(heldout_phrasings(), sort_keys=False, width=200))
    return path
