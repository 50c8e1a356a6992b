"""Argument types with their ranges, so each command refuses nonsense while parsing, before anything is written.

`add_argument("--episodes", type=count(1))` refuses `-3` with "argument --episodes: must be an integer >= 1, got
'-3'" (argparse's own one-line error, exit status 2); `real(0, open_low=True)` refuses 0, NaN and inf. A command's
checks that need more than one value, or the config its overrides build, live in its `check(...)` function, called
first in its `run`, before any output path is created.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def count(low: int = 0, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (high None: unbounded)."""
    span = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: float = -math.inf, high: float = math.inf, open_low: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (`open_low`: low itself excluded); NaN and inf are refused."""
    bounds = [f"> {low:g}" if open_low else f">= {low:g}"] if low > -math.inf else []
    bounds += [f"<= {high:g}"] if high < math.inf else []
    span = " and ".join(["finite", *bounds])

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number ({span}), got {text!r}") from None
        below = value <= low if open_low else value < low
        if not math.isfinite(value) or below or value > high:
            raise argparse.ArgumentTypeError(f"must be a number ({span}), got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def check_output_file(path: str | None, flag: str, suffix: str | None = None) -> None:
    """ValueError unless `path` can be written as a file: not a directory, its folder creatable, the suffix given."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(
            f"{flag} {path} is a directory; name the file to write (e.g. {target / ('out' + (suffix or ''))})"
        )
    if suffix and target.suffix != suffix:
        raise ValueError(f"{flag} {path}: the file written is {suffix}; name it FILE{suffix}")
    existing = next((p for p in target.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """The command's output folder: when the command fails and the folder did not exist before, it is removed if
    still holds no file, so a refused run leaves no empty folder behind (a folder that already held results is kept)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {path} is a file; name a folder")
    created = not target.exists()
    try:
        yield target
    except BaseException:
        if created and target.is_dir() and not any(p.is_file() for p in target.rglob("*")):
            shutil.rmtree(target, ignore_errors=True)
        raise
