"""Where does a QwenFAST checkpoint go wrong? Token-level and closed-loop probes (docs/results/toy_root_causes.md).

    python -m vlablocks.tools.probes.fast_probe --ckpt runs/x/checkpoints/step_4000 --train-data data/toy_demo_1000 \
        --fresh-data data/dev_frames --episodes 50 --seed 6000

tokens      teacher-forced, per answer position k (FAST coefficient k, then the stop token): how often the argmax over
            the allowed tokens (the fitted FAST ids + stop) is the label, its mean error in bins (FAST ids are ordered
            quantized values when `fast.bpe_merges` is false), the error of the distribution's mean over the FAST ids
            (`expected_bin_error`) and the probability put on the stop token, on
            training frames and on fresh frames (a dataset of episodes never trained on).
greedy      the full greedy answer on the same frames: the first action's error (normalized units) and direction
            cosine against the expert's, and how many answers were malformed (repaired by the decoder).
closed_loop `--episodes` toy episodes from `--seed`: per failed episode the step at which the puck came closest to
            the named block, that distance, the final distance, whether it ended on another block or at the
            table's edge, and the policy calls in which its first action pointed away from the named block.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vlablocks.core.config import load_config
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.answer_tokens import answer_logits
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.components import build_train_dataset
from vlablocks.tools.toy.toy import ToyTabletopEnv


def frames(ckpt: str, root: str, count: int, seed: int) -> list[dict]:
    """`count` random frames (raw samples) of the dataset at `root`, read with the run's own dataset section."""
    run_config = Path(ckpt).resolve().parents[1] / "config.yaml"
    dataset = build_train_dataset(load_config(run_config, [f"dataset.root={root}"]))
    rng = np.random.default_rng(seed)
    return [dataset[int(i)] for i in rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)]


@torch.no_grad()
def token_stats(policy: Policy, samples: list[dict], batch_size: int = 32) -> list[dict]:
    """Per answer position: accuracy of the allowed-token argmax, mean |bin error| on FAST positions, mean P(stop)."""
    model = policy.model
    model.eval()
    per_position: dict[int, dict[str, list]] = {}
    for start in range(0, len(samples), batch_size):
        batch = policy.processor(samples[start : start + batch_size]).to(policy.device)
        allowed = torch.tensor([*model._fast_ids(batch), model.stop_token_id])
        with model._state_at_head(batch):
            inputs = model.answer_inputs(batch.vlm, batch.vlm.labels)  # as the loss sees them (parallel_decoding)
            out = model.vlm(inputs, requested_token_ids=model.auxiliary_losses.token_ids)
        logits, targets = answer_logits(model.vlm, out, batch.vlm.labels)
        probs = logits[:, allowed].softmax(-1)  # [N, K+1]
        choice = allowed[probs.argmax(-1)]
        width = (batch.vlm.labels != -100).sum(1).tolist()
        position = torch.cat([torch.arange(w) for w in width])
        order = {int(v): i for i, v in enumerate(allowed[:-1].tolist())}
        fast = probs[:, :-1] / probs[:, :-1].sum(-1, keepdim=True).clamp_min(1e-12)
        expected = (fast * torch.arange(fast.shape[1])).sum(-1)  # the mean ordered value, in bins
        rows = zip(position.tolist(), targets.tolist(), choice.tolist(), probs[:, -1], expected.tolist())
        for k, target, chosen, p_stop, mean in rows:
            row = per_position.setdefault(k, {"right": [], "bins": [], "mean_bins": [], "p_stop": []})
            row["right"].append(target == chosen)
            row["p_stop"].append(float(p_stop))
            if target in order and chosen in order:
                row["bins"].append(abs(order[target] - order[chosen]))
            if target in order:
                row["mean_bins"].append(abs(order[target] - mean))
    return [
        {
            "position": k,
            "accuracy": round(float(np.mean(r["right"])), 3),
            "bin_error": round(float(np.mean(r["bins"])), 3) if r["bins"] else None,
            "expected_bin_error": round(float(np.mean(r["mean_bins"])), 3) if r["mean_bins"] else None,
            "p_stop": round(float(np.mean(r["p_stop"])), 4),
        }
        for k, r in sorted(per_position.items())
    ]


def greedy_stats(policy: Policy, samples: list[dict], batch_size: int = 32) -> dict:
    """The greedy answer's first action against the label's (normalized units), and malformed answers."""
    errors, cosines, malformed = [], [], 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        out = policy.predict(chunk)
        target = policy.processor(chunk).actions.numpy()  # normalized [B, T, D]
        predicted = out["normalized_actions"]
        malformed += sum(1 for r in out.get("decode_reports", []) if r)
        first, want = predicted[:, 0], target[:, 0]
        errors.extend(np.abs(first - want).mean(-1).tolist())
        norms = np.linalg.norm(first, axis=-1) * np.linalg.norm(want, axis=-1)
        cosines.extend(((first * want).sum(-1) / np.maximum(norms, 1e-8)).tolist())
    return {
        "first_action_l1": round(float(np.mean(errors)), 4),
        "first_action_cosine": round(float(np.mean(cosines)), 4),
        "malformed_answers": malformed,
        "frames": len(samples),
    }


def closed_loop(policy: Policy, episodes: int, seed: int, played: int) -> dict:
    """Toy episodes, `played` actions per chunk; where each failure happened."""
    env = ToyTabletopEnv()
    records = []
    for episode_seed in range(seed, seed + episodes):
        obs = env.reset(seed=episode_seed)
        target = env.layout.target_position
        distances, away_calls, calls, done, info = [env.distance()], [], 0, False, {}
        while not done:
            actions = policy.infer(obs)["actions"]
            expert = target - env.agent
            if float(actions[0] @ expert) <= 0:
                away_calls.append(env.steps)
            calls += 1
            for action in actions[:played]:
                obs, _, done, info = env.step(action, observe=True)
                distances.append(env.distance())
                if done:
                    break
        closest = int(np.argmin(distances))
        at_edge = bool(np.any(np.minimum(env.agent, 1 - env.agent) < 0.01))
        records.append(
            {
                "seed": episode_seed,
                "success": bool(info.get("success")),
                "steps": env.steps,
                "target": info.get("target"),
                "start_distance": round(distances[0], 3),
                "closest_step": closest,
                "closest_distance": round(float(distances[closest]), 3),
                "final_distance": round(distances[-1], 3),
                "ended_on": info.get("reached"),
                "at_edge": at_edge,
                "away_calls": away_calls,
            }
        )
    failures = [r for r in records if not r["success"]]
    return {
        "success_rate": sum(r["success"] for r in records) / len(records),
        "failures": failures,
        "success_steps": [r["steps"] for r in records if r["success"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a checkpoint directory, run_dir/checkpoints/step_N")
    parser.add_argument("--train-data", required=True, help="the training dataset's root")
    parser.add_argument("--fresh-data", required=True, help="a dataset of episodes never trained on")
    parser.add_argument("--frames", type=int, default=320)
    parser.add_argument("--episodes", type=int, default=50, help="closed-loop episodes (0: none)")
    parser.add_argument("--seed", type=int, default=6000, help="closed loop: episode i uses seed + i")
    parser.add_argument("--played", type=int, default=4, help="actions played per chunk in the closed loop")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.from_pretrained(args.ckpt).eval()
    report = {}
    for name, root in (("train", args.train_data), ("fresh", args.fresh_data)):
        samples = frames(args.ckpt, root, args.frames, 0)
        report[name] = {"tokens": token_stats(policy, samples), "greedy": greedy_stats(policy, samples)}
    if args.episodes:
        report["closed_loop"] = closed_loop(policy, args.episodes, args.seed, args.played)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
