"""What RL's rollouts see from a starting checkpoint: `python -m vlablocks.methods.rl.probe --ckpt DIR [--temperature T]`.

On B initial states x G sampled episodes (the GRPO groups, at the rollout temperature) and the same B states played
greedily, it measures (docs/rl.md, "Why RL stays flat from a weak start"):

    greedy_success, sampled_success      the served policy and the rollout policy on the same states
    groups_all_failed / _all_succeeded   groups that carry no GRPO signal (A = 0; dynamic sampling drops them)
    entropy, entropy_fraction            mean entropy of the tempered per-choice distribution, and its share of the
                                         maximum log K (K = the choices' vocabulary, e.g. bins)
    differs_from_greedy                  share of sampled choices (action scalars / tokens) unlike the greedy one
    log_prob_mismatch                    max |log-prob stored at rollout - log-prob the update recomputes|

The greedy choice of a call is the sample at a vanishing temperature (1e-4): the argmax, for any StochasticPolicy.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from vlablocks.core.capabilities import StochasticPolicy, require
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.actors import GreedyActor, SamplingActor
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.flags import FlagParser
from vlablocks.core.policy.policy import Policy

GREEDY_TEMPERATURE = 1e-4


def exploration_stats(
    policy, envs, seeds: list[int], group_size: int, temperature: float, vocabulary: int, seed: int = 0
) -> dict:
    """B = len(seeds) states x `group_size` episodes at `temperature` (+ the same states greedily) -> the figures above.

    vocabulary: K, the number of values one choice can take (the binned head's num_bins), for `entropy_fraction`."""
    model = policy.model
    require(model, StochasticPolicy, "the exploration probe")
    greedy = run_episodes(envs, seeds, GreedyActor(policy), keep_calls=False)
    generator = torch.Generator(model.device).manual_seed(seed)
    episodes = run_episodes(envs, np.repeat(seeds, group_size).tolist(), SamplingActor(policy, temperature, generator))
    successes = np.array([e.success for e in episodes], dtype=float).reshape(len(seeds), group_size).sum(1)
    calls = [call for episode in episodes for call in episode.calls]
    entropy, differs, mismatch, count = 0.0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(calls), 64):
            part = calls[start : start + 64]
            batch = policy.processor([c.observation for c in part], targets=False).to(model.device)
            choices = torch.stack([c.record["choices"] for c in part]).to(model.device)
            mask = torch.stack([c.record["mask"] for c in part]).to(model.device).float()
            stored = torch.stack([c.record["log_probs"] for c in part]).to(model.device)
            now = model.choice_log_probs(batch, choices, temperature)
            argmax = model.sample_with_log_probs(batch, GREEDY_TEMPERATURE, generator)["choices"]
            entropy += float((now["entropy"] * mask).sum())
            differs += float(((choices != argmax).float() * mask).sum())
            mismatch = max(mismatch, float(((now["log_probs"] - stored).abs() * mask).max()))
            count += float(mask.sum())
    count = max(count, 1.0)
    return {
        "states": len(seeds),
        "group_size": group_size,
        "temperature": temperature,
        "greedy_success": float(np.mean([e.success for e in greedy])),
        "sampled_success": float(successes.sum() / successes.size / group_size),
        "groups_all_failed": int((successes == 0).sum()),
        "groups_all_succeeded": int((successes == group_size).sum()),
        "entropy": entropy / count,
        "entropy_fraction": entropy / count / math.log(vocabulary),
        "differs_from_greedy": differs / count,
        "log_prob_mismatch": mismatch,
        "policy_calls": len(calls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--env", default="toy", help="registered eval env")
    parser.add_argument("--seed", type=int, default=6000, help="initial states seed .. seed + states - 1")
    parser.add_argument("--states", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.6)
    args = parser.parse_args(argv)
    policy = Policy.from_pretrained(args.ckpt)
    vocabulary = int(policy.model.config.action_model.get("num_bins", 256))
    envs = make_vector_env({"name": args.env}, min(64, args.states * args.group_size))
    try:
        seeds = list(range(args.seed, args.seed + args.states))
        print(json.dumps(exploration_stats(policy, envs, seeds, args.group_size, args.temperature, vocabulary)))
    finally:
        envs.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
