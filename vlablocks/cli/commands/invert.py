"""`vlablocks invert --ckpt C --env toy --episodes N --seed 1000 --steps 1 2 5 10 20 --out DIR`.

Rectified-flow inversion of a flow policy, closed loop (vlablocks/methods/steering/flow_inversion.py): at every
policy call a chunk is sampled, inverted to noise with S reverse Euler steps and reconstructed with S steps
under the same prompt (executed) and under an edited prompt (another block named). Writes DIR/inversion.json
(means per S: MSE normalized / over the action variance / raw, noise MSE, edit shares; the executed success
rate) and DIR/chunks.jsonl (one line per chunk: its metrics per S). Env options as `--key=value` overrides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlablocks.cli.arguments import count

NAME = "invert"
HELP = "rectified-flow inversion of a flow policy's chunks, closed loop: reconstruction MSE per step count, edits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint of a flow framework (QwenFlowMatching, ...)")
    parser.add_argument("--env", required=True, help="registered eval env with a block layout (toy)")
    parser.add_argument("--episodes", type=count(1), default=20)
    parser.add_argument("--seed", type=count(0), default=1000, help="episode i uses seed + i; seeds the noise too")
    parser.add_argument(
        "--steps", type=count(1), nargs="+", default=[1, 2, 5, 10, 20, 50], help="inversion step counts"
    )
    parser.add_argument("--execute-steps", type=count(1), default=10, help="S whose reconstruction is executed")
    parser.add_argument("--batch-size", type=count(1), default=25, help="episodes run at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/invert", help="directory for inversion.json and chunks.jsonl")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from vlablocks.core.config import merge_overrides
    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.steering.flow_inversion import InversionOptions, check_options, flow_head, run_inversion

    options = InversionOptions(
        tuple(args.steps), args.execute_steps, args.episodes, args.seed, args.batch_size
    )  # checked before the checkpoint loads
    check_options(options)
    policy = Policy.from_pretrained(args.ckpt)
    try:
        flow_head(policy.model)
    except ValueError as error:
        raise ValueError(f"{args.ckpt}: {error}") from None
    policy.to(torch.device(args.device))
    summary, records = run_inversion(policy, merge_overrides({"name": args.env}, overrides), options)
    summary["checkpoint"] = str(args.ckpt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inversion.json").write_text(json.dumps(summary, indent=1))
    (out / "chunks.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    per_steps = summary["per_steps"]
    ratios = ", ".join(f"S={s} {per_steps[str(s)]['mse_over_variance']:.2%}" for s in options.steps)
    edit = per_steps[str(options.execute_steps)]
    print(
        f"inversion -> reconstruction MSE / action variance: {ratios}; executed reconstructions (S="
        f"{options.execute_steps}) succeed {summary['executed']['success_rate']:.1%} of {options.episodes}; "
        f"edited prompt moves {edit['edit_share']:.1%} of {summary['chunks']} chunks towards its block (control "
        f"{edit['control_share']:.1%}); results: {out / 'inversion.json'}"
    )
    return 0
