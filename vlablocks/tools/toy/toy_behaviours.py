"""Behaviour policies of the toy task, for mixed-quality datasets (docs/value_functions.md).

Real robot logs mix good demonstrations with slow, wrong and aimless ones. Each policy here is one such
demonstrator, a function of (env, rng, episode choice) -> action [2]:

    expert   straight at the named block at full speed (always succeeds)
    noisy    the expert's move plus Gaussian noise, std `NOISE_STD` x max_move per axis (usually succeeds, slower)
    random   a uniform random move in the disc of radius max_move every step (rarely succeeds)
    wrong    straight at another block of the scene, picked once per episode, then stays there (the failure of
             a policy that misread the instruction; it succeeds only if its path crosses the target)

Episodes run until success or `max_steps`, so failed episodes are the long ones, as in real logs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vlablocks.tools.toy.toy import ToyTabletopEnv

NOISE_STD = 0.75  # per-axis noise of the `noisy` demonstrator, in units of max_move


def expert(env: ToyTabletopEnv, rng: np.random.Generator, choice: int) -> np.ndarray:
    return env.expert_action()


def noisy(env: ToyTabletopEnv, rng: np.random.Generator, choice: int) -> np.ndarray:
    move = env.expert_action() + rng.normal(0.0, NOISE_STD * env.config.max_move, size=2)
    return env.cap(move).astype(np.float32)


def random(env: ToyTabletopEnv, rng: np.random.Generator, choice: int) -> np.ndarray:
    angle, radius = rng.uniform(0.0, 2 * np.pi), env.config.max_move * np.sqrt(rng.uniform())
    return (radius * np.array([np.cos(angle), np.sin(angle)])).astype(np.float32)


def wrong(env: ToyTabletopEnv, rng: np.random.Generator, choice: int) -> np.ndarray:
    layout = env.layout
    others = [i for i in range(len(layout.colours)) if i != layout.target]
    goal = layout.positions[others[choice % len(others)]]
    return env.cap(goal - env.agent).astype(np.float32)


BEHAVIOURS: dict[str, Callable[[ToyTabletopEnv, np.random.Generator, int], np.ndarray]] = {
    "expert": expert,
    "noisy": noisy,
    "random": random,
    "wrong": wrong,
}


def parse_mix(policies: str, mix: str | None) -> tuple[list[str], np.ndarray]:
    """`--policy a,b --mix 0.7,0.3` -> (names, probabilities); no mix: equal shares. One-line errors name the fix."""
    names = [name.strip() for name in policies.split(",") if name.strip()]
    unknown = [name for name in names if name not in BEHAVIOURS]
    if not names or unknown:
        raise ValueError(f"--policy: unknown behaviour(s) {unknown or names}; choose from {sorted(BEHAVIOURS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--policy: {names} names a behaviour twice")
    if mix is None:
        return names, np.full(len(names), 1.0 / len(names))
    try:
        shares = np.array([float(x) for x in mix.split(",")], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"--mix must be comma-separated numbers, one per --policy entry, got {mix!r}") from exc
    if shares.shape != (len(names),) or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(
            f"--mix needs {len(names)} non-negative shares (one per --policy entry), not all 0; got {mix!r}"
        )
    return names, shares / shares.sum()


def assign_behaviours(episodes: int, probabilities: np.ndarray, seed: int) -> np.ndarray:
    """The behaviour index of each episode: the largest-remainder split of `episodes` by `probabilities`,
    shuffled with `seed`, so a 1000-episode 0.4/0.6 mix has exactly 400 and 600."""
    exact = probabilities * episodes
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: episodes - counts.sum()]] += 1
    order = np.repeat(np.arange(len(probabilities)), counts)
    return np.random.default_rng([seed, 0xBE4A]).permutation(order)
