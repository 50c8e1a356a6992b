"""The text-latent steering options shared by `vlablocks eval` and `vlablocks serve` (vlablocks/methods/steering/steered_policy.py)."""

from __future__ import annotations

import argparse


def add_latent_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text-latent steering (docs/steering.md)")
    group.add_argument("--text-latent", help="a file of `vlablocks text-latent extract`: steer the policy with it")
    group.add_argument(
        "--latent-task",
        default="auto",
        help="the task whose latent is written (default auto: the observation's prompt)",
    )
    group.add_argument(
        "--latent-task-2", help="interpolate to this task's latent ('auto': the observation's second subtask)"
    )
    group.add_argument("--schedule", choices=["step", "linear"], default="step", help="interpolation weight over calls")
    group.add_argument("--switch-at", type=int, default=3, help="policy call at which task 2's latent is complete")
    group.add_argument("--latent-prompt", choices=["blank", "given"], default="blank", help="blank: filler tokens")
    group.add_argument("--latent-kind", choices=["positions", "mean"], default="positions", help="per token or mean")
    group.add_argument("--latent-mode", choices=["add", "blend"], default="add", help="add alpha*z, or blend to z")
    group.add_argument("--latent-alpha", type=float, default=1.0, help="the coefficient alpha")
    group.add_argument(
        "--latent-layers",
        type=int,
        nargs="+",
        help="residual-stream indices written: 0 = embeddings, r = output of layer r-1 (default: all)",
    )


def check_latent_arguments(args: argparse.Namespace) -> None:
    """The steering options on their own (a finite alpha, indices >= 0, a schedule that works, a latent file that
    reads): ValueError naming the option, before a checkpoint is loaded or a socket opened. What needs the
    checkpoint (a task the file lacks, an index past the VLM's) is checked when `steered` builds the policy."""
    if args.text_latent:
        from vlablocks.methods.steering.text_latent import TextLatents

        latent_options(args)
        TextLatents.load(args.text_latent)


def latent_options(args: argparse.Namespace):
    from vlablocks.methods.steering.steered_policy import LatentOptions

    return LatentOptions(
        task=args.latent_task,
        task_2=args.latent_task_2,
        schedule=args.schedule,
        switch_at=args.switch_at,
        prompt=args.latent_prompt,
        kind=args.latent_kind,
        mode=args.latent_mode,
        alpha=args.latent_alpha,
        layers=tuple(args.latent_layers) if args.latent_layers is not None else None,
    )


def steered(policy, args: argparse.Namespace):
    """`policy` wrapped in a SteeredPolicy when --text-latent is given, else unchanged."""
    if not args.text_latent:
        return policy
    from vlablocks.core.capabilities import Steerable, require
    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.steering.steered_policy import SteeredPolicy
    from vlablocks.methods.steering.text_latent import TextLatents

    if not isinstance(policy, Policy):
        raise ValueError("--text-latent steers an in-process checkpoint: use --ckpt, not a remote or baseline policy")
    require(policy.model, Steerable, "--text-latent")
    return SteeredPolicy(policy, TextLatents.load(args.text_latent), latent_options(args))
