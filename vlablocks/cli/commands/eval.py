"""`vlablocks eval --env NAME (--policy ws://HOST:PORT | --ckpt DIR | --policy expert|random) --episodes N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlablocks.core.build import build
from vlablocks.methods.steering.latent_arguments import add_latent_arguments

NAME = "eval"
HELP = "closed-loop evaluation on a registered env: success rate with a 95% CI, summary JSON and GIFs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="registered eval env (vlablocks list eval_envs)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="ws://HOST:PORT of a running server, or the baselines 'expert' / 'random'")
    source.add_argument("--ckpt", help="checkpoint directory, evaluated in-process")
    parser.add_argument("--api-key", default=None, help="API key for a server that requires one")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1000, help="episode i uses seed + i")
    parser.add_argument(
        "--open-loop",
        type=int,
        default=None,
        help="actions played per chunk (default: the policy's n_action_steps, else the whole chunk)",
    )
    parser.add_argument("--wrong-instruction", action="store_true", help="control: instruct a different object")
    parser.add_argument("--videos", type=int, default=3, help="episodes saved as GIF")
    parser.add_argument("--out", default="runs/eval", help="directory for summary.json and videos")
    parser.add_argument(
        "--prompts",
        help="YAML original -> alternative phrasings (e.g. configs/experiments/prompts/toy_heldout.yaml): run every episode under "
        "each phrasing of its instruction and report success per phrasing",
    )
    add_latent_arguments(parser)


def build_policy(args: argparse.Namespace, env):
    """-> (policy, metadata) for the requested source."""
    if args.ckpt:
        from vlablocks.core.serving.policy import load_policy
        from vlablocks.methods.steering.latent_arguments import steered

        policy = steered(load_policy(args.ckpt), args)
        return policy, policy.metadata
    if args.policy.startswith("ws://"):
        from deployment.client import PolicyClient

        host, _, port = args.policy.removeprefix("ws://").rstrip("/").rpartition(":")
        client = PolicyClient(host, int(port), api_key=args.api_key)
        return client, client.metadata
    from vlablocks.core.capabilities import ScriptedExpert
    from vlablocks.core.evaluation.rollout import ExpertPolicy, RandomPolicy, action_bounds

    metadata = {"action_horizon": 1}  # a baseline takes any observation: no camera_keys / state_dim to check
    if args.policy == "expert":
        if not isinstance(env, ScriptedExpert):
            raise ValueError(f"env {args.env!r} has no scripted expert; use --ckpt or --policy ws://HOST:PORT")
        return ExpertPolicy(env), metadata
    if args.policy == "random":
        horizon = 8
        low, high = action_bounds(env)
        return RandomPolicy(low, high, horizon, args.seed), {**metadata, "action_horizon": horizon}
    raise ValueError(f"--policy must be ws://HOST:PORT, 'expert' or 'random', got {args.policy!r}")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.core.config import merge_overrides
    from vlablocks.core.evaluation.rollout import evaluate, played_per_chunk
    from vlablocks.core.registry import EVAL_ENVS

    options = merge_overrides({"name": args.env}, overrides)  # env options as --key=value overrides
    env = build(EVAL_ENVS, options)
    if args.text_latent and not args.ckpt:
        raise ValueError("--text-latent steers an in-process checkpoint: pass --ckpt DIR (not --policy)")
    policy, metadata = build_policy(args, env)
    if args.prompts:
        return run_phrasings(args, env, policy, metadata)
    summary = evaluate(
        env,
        policy,
        args.episodes,
        args.seed,
        Path(args.out),
        open_loop_horizon=args.open_loop or played_per_chunk(metadata),
        videos=args.videos,
        wrong_instruction=args.wrong_instruction,
    )
    low, high = summary["ci95"]
    print(
        f"success rate {summary['success_rate']:.1%} ({summary['successes']}/{summary['episodes']}, "
        f"95% CI {low:.1%}-{high:.1%}); summary: {Path(args.out) / 'summary.json'}; videos: {Path(args.out)}"
    )
    return 0


def run_phrasings(args: argparse.Namespace, env, policy, metadata: dict) -> int:
    from vlablocks.core.dataloader.prompt_augmentation import load_alternatives
    from vlablocks.core.evaluation.rollout import played_per_chunk
    from vlablocks.methods.language.phrasing import evaluate_phrasings

    if args.wrong_instruction:
        raise ValueError("--prompts and --wrong-instruction exclude each other; run them separately")
    horizon = args.open_loop or played_per_chunk(metadata)
    prompts = load_alternatives(args.prompts)
    summary = evaluate_phrasings(env, policy, args.episodes, args.seed, Path(args.out), horizon, prompts)
    original, alternatives = summary["original"], summary["alternatives"]
    print(
        f"original phrasing {original['success_rate']:.1%} ({original['successes']}/{original['episodes']}), "
        f"alternatives {alternatives['success_rate']:.1%} ({alternatives['successes']}/{alternatives['episodes']}); "
        f"per phrasing: {Path(args.out) / 'summary.json'}"
    )
    return 0
