"""`vlablocks eval --env NAME (--policy ws://HOST:PORT | --ckpt DIR | --policy expert|random) --episodes N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlablocks.cli.arguments import count, output_dir
from vlablocks.methods.steering.latent_arguments import add_latent_arguments

NAME = "eval"
HELP = "closed-loop evaluation on a registered env: success rate with a 95% CI, summary JSON and GIFs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="registered eval env (vlablocks list eval_envs)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--policy",
        help="ws://HOST:PORT of a running server, the baselines 'expert' / 'random', or lerobot:DIR (a LeRobot checkpoint)",
    )
    source.add_argument("--ckpt", help="checkpoint directory, evaluated in-process")
    parser.add_argument("--api-key", default=None, help="API key for a server that requires one")
    parser.add_argument("--episodes", type=count(1), default=50)
    parser.add_argument("--seed", type=count(0), default=1000, help="episode i uses seed + i")
    parser.add_argument(
        "--open-loop",
        type=count(1),
        default=None,
        help="actions played per chunk (default: the policy's n_action_steps, else the whole chunk)",
    )
    parser.add_argument("--wrong-instruction", action="store_true", help="control: instruct a different object")
    parser.add_argument("--videos", type=count(0), default=3, help="episodes saved as GIF")
    parser.add_argument(
        "--num-envs",
        type=count(1),
        default=1,
        help="episodes run at once, one env each: a --ckpt checkpoint serves them in one batched call, a server or "
        "the random baseline is queried per env (default 1: one episode after another)",
    )
    parser.add_argument("--out", default="runs/eval", help="directory for summary.json and videos")
    parser.add_argument(
        "--prompts",
        help="YAML original -> alternative phrasings (e.g. configs/experiments/prompts/toy_heldout.yaml): run every episode under "
        "each phrasing of its instruction and report success per phrasing",
    )
    parser.add_argument(
        "--tasks", help="a task suite, run task by task: mt10, mt50, a difficulty group or task names (--env metaworld)"
    )
    parser.add_argument("--episodes-per-task", type=count(1), default=10, help="with --tasks: episodes per task")
    parser.add_argument("--no-control", action="store_true", help="with --tasks: skip the wrong-instruction control")
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
    if args.policy.startswith("lerobot:"):  # a LeRobot peer (ACT, Diffusion Policy) run by the same rollout engine
        from vlablocks.tools.metaworld.lerobot_peer import LeRobotPolicyAdapter

        peer = LeRobotPolicyAdapter(args.policy.removeprefix("lerobot:"))
        return peer, peer.metadata
    from vlablocks.core.capabilities import ScriptedExpert
    from vlablocks.core.evaluation.baselines import ExpertPolicy, RandomPolicy, action_bounds

    metadata = {"action_horizon": 1}  # a baseline takes any observation: no camera_keys / state_dim to check
    if args.policy == "expert":
        if not isinstance(env, ScriptedExpert):
            raise ValueError(f"env {args.env!r} has no scripted expert; use --ckpt or --policy ws://HOST:PORT")
        return ExpertPolicy(env), metadata
    if args.policy == "random":
        horizon = 8
        low, high = action_bounds(env)
        return RandomPolicy(low, high, horizon, args.seed), {**metadata, "action_horizon": horizon}
    raise ValueError(f"--policy must be ws://HOST:PORT, 'expert', 'random' or lerobot:DIR, got {args.policy!r}")


def rollout_actor(args: argparse.Namespace, policy):
    """The policy as the rollout engine runs it: over several envs a checkpoint is one batched framework call,
    anything else is queried per env (`PolicyActor`); over one env the policy itself, as it is served."""
    if args.num_envs == 1:
        return policy
    if args.policy == "expert":
        raise ValueError("the scripted expert drives one env: use --num-envs 1")
    if args.ckpt:
        from vlablocks.core.evaluation.actors import GreedyActor

        return GreedyActor(policy)
    return policy


def check(args: argparse.Namespace) -> None:
    """Every option that can be checked without the env or the policy, before anything is built or written."""
    from vlablocks.methods.steering.latent_arguments import check_latent_arguments

    if args.text_latent and not args.ckpt:
        raise ValueError("--text-latent steers an in-process checkpoint: pass --ckpt DIR (not --policy)")
    if args.text_latent and args.num_envs > 1:
        raise ValueError("--text-latent steers per episode (its schedule counts calls): use --num-envs 1")
    if args.prompts and args.wrong_instruction:
        raise ValueError("--prompts and --wrong-instruction exclude each other; run them separately")
    if args.ckpt and not Path(args.ckpt).is_dir():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such checkpoint directory")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; name a folder for summary.json and the videos")
    check_latent_arguments(args)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.core.config import merge_overrides
    from vlablocks.core.envs.vector import make_vector_env
    from vlablocks.core.evaluation.rollout import evaluate, played_per_chunk

    check(args)
    options = merge_overrides({"name": args.env}, overrides)  # env options as --key=value overrides
    if args.tasks:
        return run_suite(args, options)
    envs = make_vector_env(options, args.num_envs)
    policy, metadata = build_policy(args, envs.envs[0])
    actor = rollout_actor(args, policy)
    with output_dir(args.out):  # a run that fails leaves no empty --out folder behind
        if args.prompts:
            return run_phrasings(args, envs, actor, metadata)
        summary = evaluate(
            envs,
            actor,
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


def run_phrasings(args: argparse.Namespace, envs, policy, metadata: dict) -> int:
    from vlablocks.core.dataloader.prompt_augmentation import load_alternatives
    from vlablocks.core.evaluation.rollout import played_per_chunk
    from vlablocks.methods.language.phrasing import evaluate_phrasings

    horizon = args.open_loop or played_per_chunk(metadata)
    prompts = load_alternatives(args.prompts)
    summary = evaluate_phrasings(envs, policy, args.episodes, args.seed, Path(args.out), horizon, prompts)
    original, alternatives = summary["original"], summary["alternatives"]
    print(
        f"original phrasing {original['success_rate']:.1%} ({original['successes']}/{original['episodes']}), "
        f"alternatives {alternatives['success_rate']:.1%} ({alternatives['successes']}/{alternatives['episodes']}); "
        f"per phrasing: {Path(args.out) / 'summary.json'}"
    )
    return 0


def run_suite(args: argparse.Namespace, options: dict) -> int:
    """`--tasks`: every task of the suite through the rollout engine -> summary.json, report.html, printed table."""
    from vlablocks.core.envs.metaworld_tasks import DIFFICULTIES, difficulty, next_task, resolve_tasks
    from vlablocks.core.envs.vector import make_vector_env
    from vlablocks.core.evaluation.report_page import write_report_page
    from vlablocks.core.evaluation.rollout import played_per_chunk
    from vlablocks.core.evaluation.suite import evaluate_suite, suite_lines

    if args.env != "metaworld":
        raise ValueError(f"--tasks runs a Meta-World suite: use --env metaworld (got --env {args.env})")
    if args.prompts or args.wrong_instruction or args.text_latent:
        raise ValueError(
            "--tasks runs the wrong-instruction control itself; drop --prompts/--wrong-instruction/--text-latent"
        )
    tasks = resolve_tasks(args.tasks)
    built: dict = {}

    def envs_for(task: str):
        return make_vector_env({**options, "task": task, "wrong_task": next_task(task, tasks)}, args.num_envs)

    def actor_for(envs):
        if not built or args.policy == "expert":  # a checkpoint or server is loaded once; the expert is per env
            built["policy"], built["metadata"] = build_policy(args, envs.envs[0])
        return rollout_actor(args, built["policy"]), args.open_loop or played_per_chunk(built["metadata"])

    out = Path(args.out)
    groups = {task: difficulty(task) for task in tasks}
    summary = evaluate_suite(
        tasks,
        groups,
        envs_for,
        actor_for,
        args.episodes_per_task,
        args.seed,
        out,
        not args.no_control,
        options,
        group_order=DIFFICULTIES,
    )
    source = args.ckpt or args.policy
    page = write_report_page(summary, out / "report.html", f"Meta-World {args.tasks}: {source}")
    print("\n".join(suite_lines(summary)))
    print(f"summary: {out / 'summary.json'}; report: {page}")
    return 0
