"""Robustness to phrasing: every episode run under its original instruction and each alternative phrasing of it.

    prompts = load_alternatives("configs/experiments/prompts/toy_heldout.yaml")   # original -> alternatives
    summary = evaluate_phrasings(env, policy, episodes=50, seed=1000, out_dir=..., open_loop_horizon=4, prompts=prompts)

Episode i (seed + i) is run once as the env phrases it and once per alternative of that instruction (same
scene, same start: only the words differ). Reported: success on the originals, on all alternatives, per
alternative position (one kind of change per position in the held-out file) and per phrasing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from vlablocks.core.evaluation.rollout import ActionChunkBroker, run_episode, success_summary


def evaluate_phrasings(
    env,
    policy,
    episodes: int,
    seed: int,
    out_dir: Path,
    open_loop_horizon: int,
    prompts: dict[str, list[str]],
    progress: bool = True,
) -> dict:
    """-> summary (also written to out_dir/summary.json); an instruction the file does not list is an error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    broker = ActionChunkBroker(policy, open_loop_horizon)
    runs = []
    for i in tqdm(range(episodes), desc="eval phrasings", disable=not progress, dynamic_ncols=True):
        original = env.reset(seed=seed + i)["prompt"]
        if original not in prompts:
            raise ValueError(
                f"the prompts file has no alternatives for the instruction {original!r} (episode seed {seed + i}); "
                "list every instruction the env gives"
            )
        for position, text in enumerate([original, *prompts[original]]):
            result, _, _, given = run_episode(env, broker, seed + i, False, False, instruction=text)
            runs.append({"seed": seed + i, "position": position, "instruction": given, "success": result.success})
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
