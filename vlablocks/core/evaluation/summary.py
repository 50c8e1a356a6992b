"""The one success summary of every closed-loop figure: successes out of trials with a 95% Wilson interval."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (well-behaved at 0% and 100%, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def success_summary(successes: int, trials: int) -> dict:
    """{"episodes", "successes", "success_rate", "ci95": Wilson 95% interval} of `successes` in `trials`."""
    low, high = wilson_interval(successes, trials)
    return {"episodes": trials, "successes": successes, "success_rate": successes / max(trials, 1), "ci95": [low, high]}
