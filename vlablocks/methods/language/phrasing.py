"""Robustness to phrasing: every episode run under its original instruction and each alternative phrasing of it.

    prompts = load_alternatives("configs/experiments/prompts/toy_heldout.yaml")   # original -> alternatives
    summary = evaluate_phrasings(env, policy, episodes=50, seed=1000, out_dir=..., open_loop_horizon=4, prompts=prompts)

Episode i (seed + i) is run once as the env phrases it and once per alternative of that instruction (same
scene, same start: only the words differ), through the rollout engine (an env, or a vector env running that many
runs at once). Reported: success on the originals, on all alternatives, per alternative position (one kind of
change per position in the held-out file) and per phrasing.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlablocks.core.evaluation.rollout import Actor, InferencePolicy, as_actor, as_vector, run_episodes
from vlablocks.core.evaluation.summary import success_summary


def evaluate_phrasings(
    envs,
    policy: InferencePolicy | Actor,
    episodes: int,
    seed: int,
    out_dir: Path,
    open_loop_horizon: int,
    prompts: dict[str, list[str]],
    progress: bool = True,
) -> dict:
    """-> summary (also written to out_dir/summary.json); an instruction the file does not list is an error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    envs = as_vector(envs)
    seeds, positions, texts = [], [], []
    for episode_seed in range(seed, seed + episodes):
        original = envs.reset([episode_seed])[0]["prompt"]
        if original not in prompts:
            raise ValueError(
                f"the prompts file has no alternatives for the instruction {original!r} (episode seed {episode_seed}); "
                "list every instruction the env gives"
            )
        for position, text in enumerate([original, *prompts[original]]):
            seeds.append(episode_seed)
            positions.append(position)
            texts.append(text)
    results = run_episodes(
        envs,
        seeds,
        as_actor(policy),
        open_loop_horizon,
        instructions=texts,
        keep_calls=False,
        progress="eval phrasings" if progress else None,
    )
    runs = [
        {"seed": r.seed, "position": position, "instruction": r.given, "success": r.success}
        for r, position in zip(results, positions)
    ]
    originals = [r for r in runs if r["position"] == 0]
    alternatives = [r for r in runs if r["position"] > 0]
    summary = {
        "episodes": episodes,
        "original": success_summary(sum(r["success"] for r in originals), len(originals)),
        "alternatives": success_summary(sum(r["success"] for r in alternatives), len(alternatives)),
        "per_position": {
            str(p): success_summary(
                sum(r["success"] for r in runs if r["position"] == p), sum(r["position"] == p for r in runs)
            )
            for p in sorted({r["position"] for r in runs})
        },
        "per_phrasing": {
            text: success_summary(
                sum(r["success"] for r in runs if r["instruction"] == text), sum(r["instruction"] == text for r in runs)
            )
            for text in sorted({r["instruction"] for r in runs})
        },
        "runs": runs,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
