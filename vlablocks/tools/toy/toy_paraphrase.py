"""Meaning-preserving paraphrases of the toy task's instructions: the genome and mutations of the prompt search.

A `Phrase` is an instruction in parts; `render` writes it out:

    order 0   "{verb} the {colour_word} {noun}"               (the env's templates are all of this shape)
    order 1   "the {colour_word} {noun}: {verb} it"
    order 2   "your target: the {colour_word} {noun}, {verb} it"
    order 3   "{colour_word} {noun} - {verb} it"
    + an optional clause before ("please, ...") or after ("... at once"), then typos in the other words.

Mutations, one kind of change each, keep the target by construction: `synonym` swaps the colour word for
another word of the same colour (SEARCH_SYNONYMS) or the verb / the noun for another from the vocabulary
below; `reorder` picks another order; `distractor` adds, moves, replaces or drops a clause that names no
colour; `typo` swaps, drops or doubles a letter of a word that is not the colour word. Every rendering
is checked with the env's parser (`target_colour`): a mutation whose text would not name exactly its
colour is drawn again, and so is one that would say a word of HELD_OUT_WORDS (what the held-out phrasings of
configs/experiments/prompts/toy_heldout.yaml say that the env never does, "teh" included), so the held-out set stays held
out from anything trained on the search.

The search's descriptor of a phrase (`descriptor`) is (target colour x length bucket, kinds of change present):
8 rows x 16 columns. The colour is part of it so that every target keeps its own elites (without it, the
descendants of whichever colour first filled a cell take the whole archive) and training on the archive
sees every colour rephrased.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from vlablocks.tools.toy.toy_phrasings import SEARCH_SYNONYMS, heldout_phrasings, target_colour
from vlablocks.tools.toy.toy_scene import COLOURS, INSTRUCTION_TEMPLATES

ORDERS = (
    "{verb} the {colour} {noun}",
    "the {colour} {noun}: {verb} it",
    "your target: the {colour} {noun}, {verb} it",
    "{colour} {noun} - {verb} it",
)
_ORIGINAL_PARTS = [template.split(" the {colour} ") for template in INSTRUCTION_TEMPLATES]
VERBS = tuple(dict.fromkeys([verb for verb, _ in _ORIGINAL_PARTS] + ["approach", "get to", "make your way to"]))
NOUNS = tuple(dict.fromkeys([noun for _, noun in _ORIGINAL_PARTS] + ["box", "tile", "brick", "piece"]))
CLAUSES = ("please", "carefully", "right now", "at once", "if possible", "with care", "then stop", "thanks")
KINDS = ("synonym", "reorder", "distractor", "typo")
LENGTH_BUCKETS = ((1, 6), (7, 99))  # words, inclusive
_TYPO_KINDS = ("swap", "drop", "double")
_ENV_WORDS = {word for template in INSTRUCTION_TEMPLATES for word in template.split()} | set(COLOURS)
HELD_OUT_WORDS = frozenset(
    word.strip(",")
    for alternatives in heldout_phrasings().values()
    for text in alternatives
    for word in text.split()
    if word.strip(",") not in _ENV_WORDS
)  # what the held-out set says that the env never does ("slide", "crimson", "teh", ...): never generated


@dataclass(frozen=True)
class Phrase:
    """An instruction in parts. typos: (word slot, kind index into _TYPO_KINDS, letter position) each."""

    origin: str  # the env instruction it descends from (an entry of the prompt-augmentation YAML)
    colour: str  # the target: never changed by a mutation
    colour_word: str
    verb: str
    noun: str
    order: int = 0
    clause: str | None = None
    clause_first: bool = False
    typos: tuple[tuple[int, int, int], ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready (typos as lists), so a saved and reloaded archive equals the one in memory."""
        return {**asdict(self), "typos": [list(typo) for typo in self.typos]}

    @classmethod
    def from_dict(cls, data: dict) -> Phrase:
        return cls(**{**data, "typos": tuple(tuple(int(v) for v in typo) for typo in data["typos"])})


def originals() -> list[Phrase]:
    """Every instruction the env gives, as a phrase whose rendering is that instruction."""
    return [
        Phrase(template.format(colour=colour), colour, colour, verb, noun)
        for colour in COLOURS
        for template, (verb, noun) in zip(INSTRUCTION_TEMPLATES, _ORIGINAL_PARTS)
    ]


def render(phrase: Phrase) -> str:
    body = ORDERS[phrase.order].format(verb=phrase.verb, colour=phrase.colour_word, noun=phrase.noun)
    if phrase.clause is not None:
        body = f"{phrase.clause}, {body}" if phrase.clause_first else f"{body} {phrase.clause}"
    words = body.split(" ")
    eligible = [i for i, word in enumerate(words) if len(word.strip(",:")) >= 3 and word != phrase.colour_word]
    for slot, kind, position in phrase.typos:
        i = eligible[slot % len(eligible)] if eligible else None
        if i is not None and len(words[i].rstrip(",:")) >= 3:  # a word already shortened by typos is left alone
            words[i] = _typo(words[i], _TYPO_KINDS[kind], position)
    return " ".join(words)


def _typo(word: str, kind: str, position: int) -> str:
    """One misspelling of the letters of `word` (trailing punctuation kept)."""
    core = word.rstrip(",:")
    tail = word[len(core) :]
    p = position % (len(core) - 1)
    if kind == "swap":
        core = core[:p] + core[p + 1] + core[p] + core[p + 2 :]
    elif kind == "drop":
        core = core[:p] + core[p + 1 :]
    else:
        core = core[: p + 1] + core[p:]
    return core + tail


def kinds(phrase: Phrase) -> tuple[str, ...]:
    """The kinds of change from its origin that `phrase` carries, in KINDS order."""
    original = next(p for p in originals() if p.origin == phrase.origin)
    present = {
        "synonym": (phrase.colour_word, phrase.verb, phrase.noun)
        != (original.colour_word, original.verb, original.noun),
        "reorder": phrase.order != 0,
        "distractor": phrase.clause is not None,
        "typo": render(phrase) != render(replace(phrase, typos=())),
    }
    return tuple(kind for kind in KINDS if present[kind])


def length_bucket(text: str) -> int:
    words = len(text.split())
    return next(i for i, (low, high) in enumerate(LENGTH_BUCKETS) if low <= words <= high)


def descriptor(phrase: Phrase) -> tuple[int, int]:
    """(colour x length bucket, bitmask of the kinds of change present): the archive cell of `phrase`."""
    present = kinds(phrase)
    row = list(COLOURS).index(phrase.colour) * len(LENGTH_BUCKETS) + length_bucket(render(phrase))
    return row, sum(1 << i for i, kind in enumerate(KINDS) if kind in present)


def cell_labels() -> tuple[list[str], list[str]]:
    """Names of the descriptor grid's rows (colour x length bucket) and columns (kind bitmasks), for the heat map."""
    lengths = [f"{low}-{high} words" if high < 99 else f">={low} words" for low, high in LENGTH_BUCKETS]
    rows = [f"{colour}, {length}" for colour in COLOURS for length in lengths]
    columns = ["+".join(k[:4] for i, k in enumerate(KINDS) if mask >> i & 1) or "none" for mask in range(1 << 4)]
    return rows, columns


def mutate(phrase: Phrase, rng: np.random.Generator, kind: str | None = None) -> Phrase:
    """One meaning-preserving change (of `kind`, or a random one) -> a new phrase naming the same colour."""
    for _ in range(50):
        chosen = kind or KINDS[int(rng.integers(len(KINDS)))]
        child = _MUTATIONS[chosen](phrase, rng)
        text = render(child)
        if text != render(phrase) and target_colour(text) == phrase.colour and not HELD_OUT_WORDS & _words(text):
            return child
    raise RuntimeError(f"no {kind or 'meaning-preserving'} mutation of {render(phrase)!r} found in 50 draws")


def _words(text: str) -> set[str]:
    return {word.strip(",:") for word in text.split()}


def random_paraphrase(origin: Phrase, rng: np.random.Generator, max_mutations: int = 4) -> Phrase:
    """1..max_mutations random mutations of `origin`, without selection: the search's baseline."""
    phrase = origin
    for _ in range(int(rng.integers(1, max_mutations + 1))):
        phrase = mutate(phrase, rng)
    return phrase


def _pick(rng: np.random.Generator, options, current):
    others = [option for option in options if option != current]
    return others[int(rng.integers(len(others)))]


def _synonym(phrase: Phrase, rng: np.random.Generator) -> Phrase:
    slot = ("colour_word", "verb", "noun")[int(rng.integers(3))]
    options = {"colour_word": (phrase.colour, *SEARCH_SYNONYMS[phrase.colour]), "verb": VERBS, "noun": NOUNS}[slot]
    return replace(phrase, **{slot: _pick(rng, options, getattr(phrase, slot))})


def _reorder(phrase: Phrase, rng: np.random.Generator) -> Phrase:
    return replace(phrase, order=_pick(rng, range(len(ORDERS)), phrase.order))


def _distractor(phrase: Phrase, rng: np.random.Generator) -> Phrase:
    if phrase.clause is not None and rng.random() < 0.25:
        return replace(phrase, clause=None, clause_first=False)
    return replace(phrase, clause=_pick(rng, CLAUSES, phrase.clause), clause_first=bool(rng.random() < 0.5))


def _typo_mutation(phrase: Phrase, rng: np.random.Generator) -> Phrase:
    if phrase.typos and rng.random() < 0.25:
        drop = int(rng.integers(len(phrase.typos)))
        return replace(phrase, typos=phrase.typos[:drop] + phrase.typos[drop + 1 :])
    typo = (int(rng.integers(16)), int(rng.integers(len(_TYPO_KINDS))), int(rng.integers(16)))
    return replace(phrase, typos=(*phrase.typos, typo))


_MUTATIONS = {"synonym": _synonym, "reorder": _reorder, "distractor": _distractor, "typo": _typo_mutation}
