"""`vlablocks text-latent extract|decode`: a task's text latent from demonstrations, and its nearest tokens.

    vlablocks text-latent extract --ckpt C --data D --out latents.safetensors [--max-samples N]
    vlablocks text-latent decode --ckpt C --latents latents.safetensors [--layer 0] [--out prompts.yaml]

Use the latents with `vlablocks eval|serve --text-latent latents.safetensors ...` (docs/steering.md).
"""

from __future__ import annotations

import argparse

from vlablocks.cli.arguments import check_output_file, count

NAME = "text-latent"
HELP = "text latents: extract a task's mean residual stream at its instruction tokens from demonstrations, decode one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["extract", "decode"], help="extract from a dataset, or decode a file")
    parser.add_argument("--ckpt", required=True, help="policy checkpoint directory")
    parser.add_argument("--data", help="extract: LeRobot dataset directory of the demonstrations")
    parser.add_argument("--dataset-name", help="extract: which of the checkpoint's normalization stats (default: only)")
    parser.add_argument(
        "--max-samples", type=count(1), default=4000, help="extract: frames read, spread over the dataset"
    )
    parser.add_argument("--batch-size", type=count(1), default=32)
    parser.add_argument("--latents", help="decode: the text-latent file")
    parser.add_argument("--task", action="append", help="decode: a task to decode (repeatable; default: every task)")
    parser.add_argument(
        "--layer",
        type=count(0),
        default=0,
        help="decode: the residual index decoded (0 = embeddings, r = output of decoder layer r-1)",
    )
    parser.add_argument("--top-k", type=count(1), default=3, help="decode: nearest tokens shown per position")
    parser.add_argument(
        "--no-center", action="store_true", help="decode: keep the common component (default: remove every task's mean)"
    )
    parser.add_argument("--out", help="extract: the .safetensors written; decode: a prompts YAML (eval --prompts)")


def check(args: argparse.Namespace, overrides: list[str]) -> None:
    """Every option before the checkpoint is loaded or anything is written."""
    from pathlib import Path

    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    if not Path(args.ckpt).is_dir():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such checkpoint directory")
    if args.action == "extract":
        if not args.data or not args.out:
            raise ValueError(
                "text-latent extract needs --data (a LeRobot dataset directory) and --out FILE.safetensors"
            )
        check_output_file(args.out, "--out", ".safetensors")
    else:
        if not args.latents:
            raise ValueError("text-latent decode needs --latents FILE (written by text-latent extract)")
        check_output_file(args.out, "--out")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    check(args, overrides)
    import torch

    from vlablocks.core.capabilities import Steerable, require
    from vlablocks.core.policy.policy import Policy

    policy = Policy.from_pretrained(args.ckpt)
    require(policy.model, Steerable, f"vlablocks text-latent {args.action}")
    policy.eval()
    with torch.no_grad():  # scoped: `main` also runs in-process (tests, notebooks)
        if args.action == "extract":
            return run_extract(args, policy)
        return run_decode(args, policy.model)


def run_extract(args: argparse.Namespace, policy) -> int:
    import numpy as np

    from vlablocks.core.dataloader.checkpoint_dataset import checkpoint_dataset
    from vlablocks.methods.steering.text_latent import extract

    dataset = checkpoint_dataset(policy, args.data, args.dataset_name)
    count = min(args.max_samples, len(dataset))
    rows = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    batches = (
        [dataset[int(i)] for i in rows[start : start + args.batch_size]] for start in range(0, count, args.batch_size)
    )
    latents = extract(policy, batches)
    latents.save(args.out)
    print(
        f"{len(latents.tasks)} tasks from {count} frames ({min(latents.counts)}-{max(latents.counts)} each) -> {args.out}"
    )
    return 0


def run_decode(args: argparse.Namespace, framework) -> int:
    import torch
    import yaml

    from vlablocks.methods.steering.text_latent import TextLatents, decode, decoded_prompt

    latents = TextLatents.load(args.latents)
    tasks = args.task or latents.tasks
    num_layers = latents.mean[0].shape[0]
    if not 0 <= args.layer < num_layers:
        raise ValueError(f"--layer must be in 0..{num_layers - 1}, got {args.layer}")
    reference = None if args.no_center else torch.cat([positions[args.layer] for positions in latents.positions])
    prompts = {}
    for task in tasks:
        nearest = decode(framework, latents.vector(task)[args.layer], args.top_k, reference)
        prompts[task] = [decoded_prompt(framework, nearest)]
        shown = " | ".join("/".join(f"{token}:{score:.2f}" for token, score in row) for row in nearest)
        print(f"{task!r} -> {prompts[task][0]!r}   [{shown}]")
    if args.out:
        with open(args.out, "w") as handle:
            yaml.safe_dump(prompts, handle, sort_keys=False, allow_unicode=True)
        print(f"decoded prompts -> {args.out} (evaluate: vlablocks eval --prompts {args.out} ...)")
    return 0
