"""Quality-diversity search for the phrasings that break a policy (`vlablocks qd-prompts`).

MAP-Elites over paraphrases of the env's instructions (vlablocks/tools/toy/toy_paraphrase.py for the toy task):

    fitness f(x)    = failures / episodes of the policy in closed loop, every episode given the phrasing x
                      (`episodes` fixed scenes whose target has x's colour, the same scenes for every x)
    descriptor b(x) = (target colour x length bucket, kinds of change present)   -> one archive cell
    start           : the env's instructions (kind "none"), evaluated and inserted
    iteration i     : `batch` parents drawn uniformly from the elites, one mutation each, evaluated, inserted

`search: random` is the baseline at the same budget: each candidate is 1..max_mutations random mutations of a
random original, with no selection, inserted into the same grid. Every draw of iteration i comes from
rng(seed, i) and the policy is deterministic, so a run stopped after any iteration and resumed from its
state file ends with the same archive as one that never stopped.

The fitness the search saw is biased upwards (the elites are the maxima of noisy estimates), so `validate`
measures the elites again on fresh scenes, next to as many random paraphrases and the originals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import yaml
from tqdm import tqdm

from vlablocks.core.build import build
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.registry import EVAL_ENVS
from vlablocks.methods.language.qd_archive import Archive

_SEARCH_STREAM, _VALIDATION_STREAM = 0x51D, 0x7A1


@dataclass(frozen=True)
class QDConfig:
    search: str = "map-elites"  # or "random": random paraphrases at the same budget, no selection
    iterations: int = 40
    batch: int = 16  # candidates per iteration
    episodes: int = 16  # closed-loop episodes per candidate
    seed: int = 0
    episode_seed: int = 300_000  # the search's scenes: the first `episodes` seeds from here per colour
    validation_seed: int = 400_000  # fresh scenes for `validate`
    validation_episodes: int = 32
    max_mutations: int = 4  # random paraphrases: 1..max_mutations mutations

    def __post_init__(self) -> None:
        if self.search not in ("map-elites", "random"):
            raise ValueError(f"search must be 'map-elites' or 'random', got {self.search!r}")
        for name in ("iterations", "batch", "episodes", "validation_episodes", "max_mutations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def scenes_by_colour(env_config: dict, first_seed: int, per_colour: int, colours, parse) -> dict[str, list[int]]:
    """The first `per_colour` episode seeds from `first_seed` whose instruction names each colour (by `parse`)."""
    env, found, seed = build(EVAL_ENVS, env_config), {colour: [] for colour in colours}, first_seed
    while any(len(seeds) < per_colour for seeds in found.values()):
        colour = parse(env.reset(seed=seed)["prompt"])
        if colour in found and len(found[colour]) < per_colour:
            found[colour].append(seed)
        seed += 1
    return found


class ClosedLoopFailure:
    """[(text, colour)] -> each phrasing's failure rate over its colour's scenes, batched over a vector env."""

    def __init__(self, actor, env_config: dict, scenes: dict[str, list[int]], max_envs: int = 256) -> None:
        self.actor, self.env_config, self.scenes, self.max_envs = actor, env_config, scenes, max_envs
        self._envs = None

    def __call__(self, prompts: list[tuple[str, str]]) -> list[float]:
        seeds = [seed for _, colour in prompts for seed in self.scenes[colour]]
        instructions = [text for text, colour in prompts for _ in self.scenes[colour]]
        count = min(self.max_envs, len(seeds))  # episodes run `max_envs` at a time
        if self._envs is None or len(self._envs) < count:
            self._envs = make_vector_env(self.env_config, count=count)
        episodes = run_episodes(self._envs, seeds, self.actor, instructions=instructions, keep_calls=False)
        successes = [episode.success for episode in episodes]
        rates, start = [], 0
        for _, colour in prompts:
            count = len(self.scenes[colour])
            rates.append(1.0 - sum(successes[start : start + count]) / count)
            start += count
        return rates


def run_search(
    paraphraser: ModuleType,
    fitness: Callable[[list], list[float]],
    cfg: QDConfig,
    state_path: Path | None = None,
    progress: bool = True,
) -> tuple[Archive, dict]:
    """MAP-Elites (or the random baseline) -> (archive, state); `fitness` maps phrases to failure rates.

    With `state_path`, the state is written after every iteration and a run finds and continues it."""
    state = _load_state(state_path, cfg) if state_path is not None and state_path.exists() else None
    shape = tuple(len(labels) for labels in paraphraser.cell_labels())
    if state is None:
        state = {"config": asdict(cfg), "iteration": 0, "evaluations": 0, "archive": [], "history": []}
        archive = Archive(shape)
        _evaluate_and_insert(paraphraser, fitness, paraphraser.originals(), archive, state, iteration=0)
        _save_state(state_path, state, archive)
    archive = Archive(shape, state["archive"])
    bar = tqdm(range(state["iteration"], cfg.iterations), desc=f"qd {cfg.search}", disable=not progress)
    for iteration in bar:
        rng = np.random.default_rng([cfg.seed, iteration, _SEARCH_STREAM])
        if cfg.search == "map-elites":
            elites = archive.elites()
            parents = [
                paraphraser.Phrase.from_dict(elites[i]["genome"]) for i in rng.integers(len(elites), size=cfg.batch)
            ]
            children = [paraphraser.mutate(parent, rng) for parent in parents]
        else:
            children = _random_paraphrases(paraphraser, rng, cfg.batch, cfg.max_mutations)
        _evaluate_and_insert(paraphraser, fitness, children, archive, state, iteration + 1)
        state["iteration"] = iteration + 1
        _save_state(state_path, state, archive)
        bar.set_postfix(filled=len(archive.cells), qd_score=f"{archive.stats()['qd_score']:.1f}")
    return archive, state


def _evaluate_and_insert(paraphraser, fitness, phrases, archive: Archive, state: dict, iteration: int) -> None:
    for phrase, value in zip(phrases, fitness(phrases)):
        archive.insert(
            {
                "cell": list(paraphraser.descriptor(phrase)),
                "fitness": float(value),
                "text": paraphraser.render(phrase),
                "origin": phrase.origin,
                "colour": phrase.colour,
                "kinds": list(paraphraser.kinds(phrase)),
                "genome": phrase.to_dict(),
                "iteration": iteration,
            }
        )
    state["evaluations"] += len(phrases)
    state["history"].append({"iteration": iteration, "evaluations": state["evaluations"], **archive.stats()})


def _random_paraphrases(paraphraser, rng: np.random.Generator, count: int, max_mutations: int) -> list:
    origins = paraphraser.originals()
    return [
        paraphraser.random_paraphrase(origins[int(rng.integers(len(origins)))], rng, max_mutations)
        for _ in range(count)
    ]


def validate(paraphraser, archive: Archive, fresh: Callable[[list], list[float]], cfg: QDConfig) -> dict:
    """The archive's paraphrases (cells with a change) on fresh scenes, next to as many random paraphrases
    (rng(seed, validation)) and the originals. Writes each elite's "fresh_fitness" into the archive."""
    elites = [entry for entry in archive.elites() if entry["kinds"]]
    rng = np.random.default_rng([cfg.seed, _VALIDATION_STREAM])
    groups = {
        "archive": [paraphraser.Phrase.from_dict(entry["genome"]) for entry in elites],
        "random_paraphrases": _random_paraphrases(paraphraser, rng, len(elites), cfg.max_mutations),
        "originals": paraphraser.originals(),
    }
    summary = {}
    for name, phrases in groups.items():
        rates = fresh(phrases) if phrases else []
        summary[name] = {"prompts": len(phrases), "fresh_failure_rate": float(np.mean(rates)) if rates else 0.0}
        if name == "archive":
            for entry, rate in zip(elites, rates):
                entry["fresh_fitness"] = rate
            summary[name]["search_failure_rate"] = float(np.mean([e["fitness"] for e in elites])) if elites else 0.0
    return summary


def rescore(prompts: dict[str, list[str]], failure: ClosedLoopFailure, parse) -> dict:
    """Every distinct phrasing of a prompt file (original -> alternatives) on the scenes of its original's colour
    -> {"prompts", "fresh_failure_rate", "per_position" (mean over the originals' lists), "per_phrasing"}."""
    colours = {original: parse(original) for original in prompts}
    unnamed = [original for original, colour in colours.items() if colour is None]
    if unnamed:
        raise ValueError(f"the prompt file's instruction {unnamed[0]!r} names no single colour; cannot pick its scenes")
    pairs = sorted({(text, colours[original]) for original, texts in prompts.items() for text in texts})
    rates = dict(zip(pairs, failure(pairs)))
    positions: dict[int, list[float]] = {}
    for original, texts in prompts.items():
        for position, text in enumerate(texts):
            positions.setdefault(position, []).append(rates[(text, colours[original])])
    return {
        "prompts": len(pairs),
        "fresh_failure_rate": float(np.mean(list(rates.values()))),
        "per_position": {str(p): float(np.mean(values)) for p, values in sorted(positions.items())},
        "per_phrasing": {text: rate for (text, _), rate in rates.items()},
    }


def write_prompts(path: Path, paraphraser, archive: Archive, header: str) -> None:
    """The archive in the prompt-augmentation YAML format: every original instruction -> the paraphrases of its
    colour, fittest first, each {text, fitness[, fresh_fitness], cell}. Training reads the texts."""
    rows, columns = paraphraser.cell_labels()
    alternatives = {}
    for original in paraphraser.originals():
        entries = [e for e in archive.elites() if e["kinds"] and e["colour"] == original.colour]
        if not entries:
            continue  # an instruction the file does not list passes through training unchanged
        alternatives[original.origin] = [
            {
                "text": e["text"],
                "fitness": round(e["fitness"], 4),
                **({"fresh_fitness": round(e["fresh_fitness"], 4)} if "fresh_fitness" in e else {}),
                "cell": f"{rows[e['cell'][0]]} / {columns[e['cell'][1]]}",
            }
            for e in sorted(entries, key=lambda e: -e["fitness"])
        ]
    _atomic_write(path, header + yaml.safe_dump(alternatives, sort_keys=False, width=200))


def _load_state(path: Path, cfg: QDConfig) -> dict:
    state = json.loads(path.read_text())
    saved, wanted = dict(state["config"]), asdict(cfg)
    saved.pop("iterations"), wanted.pop("iterations")  # more iterations continue the same search
    for name in ("validation_seed", "validation_episodes"):
        saved.pop(name, None), wanted.pop(name)  # validation comes after the search
    changed = {key: (saved.get(key), value) for key, value in wanted.items() if saved.get(key) != value}
    if changed:
        key, (old, new) = next(iter(changed.items()))
        raise ValueError(
            f"the search state {path} was made with {key}={old!r}, not {new!r}; use another --out or delete it"
        )
    return state


def _save_state(path: Path | None, state: dict, archive: Archive) -> None:
    state["archive"] = archive.elites()
    if path is not None:
        _atomic_write(path, json.dumps(state, indent=1))


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
