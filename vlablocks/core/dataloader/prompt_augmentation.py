"""Prompt augmentation: replace a sample's `prompt` (the instruction) by an alternative phrasing with probability p.

The YAML file maps each original instruction to a list of alternatives:

    move to the red block:
      - go to the red block
      - head for the red cube

An alternative may also be a mapping with a `text` and anything else (the archive of `vlablocks qd-prompts`
writes {text, fitness, fresh_fitness, cell}): only the text is used. `replace_prob` is what OpenVLA-OFT's
QD-prompt training calls `adv_replace_prob`, `log_every` its `adv_log_examples_every`.

Every decision is a pure function of (seed, key), the key being (epoch, sample index): the same seed gives the same prompts
whatever the number of DataLoader workers or the order they run in, and workers never share one random
stream. Instructions the file does not list pass through unchanged; they are counted and the first one
is reported once (per process) through `logging`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

logger = logging.getLogger(__name__)

# Separates this stream from other users of the same (seed, epoch, index) key, e.g. the mixture.
_STREAM = 0x9E3779B1


@dataclass(frozen=True)
class PromptAugmentationConfig:
    """The `prompt_augmentation:` section of a dataset config; disabled while `path` is null."""

    path: str | None = None  # YAML: instruction -> list of alternatives
    replace_prob: float = 0.5
    log_every: int = 1000  # log one replacement example every this many samples (0: never)


def load_alternatives(path: str | Path) -> dict[str, list[str]]:
    """Reads and checks the YAML; a malformed entry is an error naming its key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt augmentation file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse prompt augmentation file {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: expected a non-empty mapping instruction -> [alternatives], got {type(data).__name__}"
        )
    alternatives = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{path}: key {key!r} must be a non-empty instruction string")
        texts = (
            [v["text"] if isinstance(v, dict) and "text" in v else v for v in value] if isinstance(value, list) else []
        )
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(
                f"{path}: entry {key!r} must map to a non-empty list of non-empty strings (or {{text: ...}} "
                f"mappings), got {value!r}"
            )
        alternatives[key] = texts
    return alternatives


class PromptAugmenter:
    """Callable: (instruction, key) -> the instruction or one of its alternatives; key = (epoch, index, ...)."""

    def __init__(
        self, alternatives: dict[str, list[str]], replace_prob: float, seed: int, log_every: int = 1000
    ) -> None:
        if not 0.0 <= replace_prob <= 1.0:
            raise ValueError(f"prompt_augmentation.replace_prob must be in [0, 1], got {replace_prob}")
        self.alternatives = alternatives
        self.replace_prob = replace_prob
        self.seed = seed
        self.log_every = log_every
        self.calls = 0
        self.replaced = 0
        self.unknown: Counter[str] = Counter()
        self._log_due = log_every > 0  # the first replacement is logged, then one per log_every samples

    @classmethod
    def from_config(cls, config: PromptAugmentationConfig, seed: int) -> PromptAugmenter | None:
        if config.path is None:
            return None
        return cls(load_alternatives(config.path), config.replace_prob, seed, config.log_every)

    def draw(self, instruction: str, key: tuple[int, ...]) -> tuple[str, bool]:
        """(the phrasing of `instruction` for `key`, whether it replaced it): what `__call__` returns, without its
        counting and logging (length-grouped batching reads every sample's prompt, lengths.py)."""
        choices = self.alternatives.get(instruction)
        rng = np.random.default_rng([self.seed, *key, _STREAM])
        if choices is None or rng.random() >= self.replace_prob:
            return instruction, False
        return choices[int(rng.integers(len(choices)))], True

    def __call__(self, instruction: str, key: tuple[int, ...]) -> str:
        self.calls += 1
        if self.log_every and self.calls % self.log_every == 0:
            self._log_due = True
        choices = self.alternatives.get(instruction)
        if choices is None:
            if not self.unknown:
                logger.warning(
                    "prompt augmentation: instruction %r is not in the alternatives file; instructions "
                    "missing from it pass through unchanged (counted in .unknown, reported once)",
                    instruction,
                )
            self.unknown[instruction] += 1
            return instruction
        result, replaced = self.draw(instruction, key)
        if not replaced:
            return instruction
        self.replaced += 1
        if self._log_due:
            self._log_due = False
            logger.info("prompt augmentation (%d samples seen): %r -> %r", self.calls, instruction, result)
        return result
