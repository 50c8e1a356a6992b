"""`vlablocks eval-vqa --ckpt RUN/checkpoints/step_N --data data/toy_vqa_heldout [--out DIR]`: VQA accuracy of a
co-trained checkpoint on a vision-language dataset (vlablocks/methods/cotraining/vqa_eval.py): greedy answers, exact match of
the normalized answer, per question kind. Prints the summary; --out also writes DIR/vqa_summary.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlablocks.cli.arguments import count

NAME = "eval-vqa"
HELP = "VQA accuracy of a co-trained checkpoint on a JSONL + PNG vision-language dataset (greedy, exact match)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory (RUN/checkpoints/step_N)")
    parser.add_argument("--data", required=True, help="VQA dataset directory (e.g. from `vlablocks make-toy-vqa`)")
    parser.add_argument("--out", help="directory for vqa_summary.json (default: print only)")
    parser.add_argument("--limit", type=count(1), help="evaluate the first LIMIT questions only")
    parser.add_argument("--batch-size", type=count(1), default=32)
    parser.add_argument("--torch-threads", type=count(1), default=1, help="CPU threads (default 1)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    import torch

    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.cotraining.vqa_dataset import VQADataset
    from vlablocks.methods.cotraining.vqa_eval import vqa_accuracy

    torch.set_num_threads(args.torch_threads)
    policy = Policy.from_pretrained(args.ckpt)
    cameras = list(policy.processor.config.camera_keys)
    dataset = VQADataset(VQADataset.Config(root=args.data, camera_keys=cameras), platform=policy.model.platform)
    summary = {
        "ckpt": str(args.ckpt),
        "data": str(args.data),
        **vqa_accuracy(policy, dataset, args.batch_size, args.limit),
    }
    per_kind = ", ".join(f"{kind} {value:.3f}" for kind, value in summary["per_kind"].items())
    print(f"VQA accuracy {summary['accuracy']:.3f} ({summary['correct']}/{summary['total']}; {per_kind})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vqa_summary.json").write_text(json.dumps(summary, indent=1))
    return 0
