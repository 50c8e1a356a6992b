"""`vlablocks make-toy-vqa --out DIR --scenes N --seed S`: questions about toy scenes (count, colour of a cell,
is there a colour) with their answers, as a JSONL + PNG vision-language dataset (vlablocks/methods/cotraining/vqa_dataset.py).
"""

from __future__ import annotations

import argparse
import time

from vlablocks.cli.arguments import count, real

NAME = "make-toy-vqa"
HELP = "write image-question-answer samples about toy scenes (co-training data) as JSONL + PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--scenes", type=count(1), default=1000, help="number of scenes (default 1000)")
    parser.add_argument(
        "--questions", type=count(1), default=3, help="questions per scene (default 3: one of each kind)"
    )
    parser.add_argument("--seed", type=count(0), default=10000, help="scene i is the toy env reset with seed SEED + i")
    parser.add_argument(
        "--max-objects", type=count(1), default=4, help="scenes hold 1 .. MAX_OBJECTS blocks (default 4)"
    )
    parser.add_argument("--image-size", type=count(8), default=112, help="pixels per image side (default 112)")
    parser.add_argument(
        "--kinds", nargs="+", default=["count", "colour", "exists"], help="question kinds asked in turn (default all)"
    )
    parser.add_argument(
        "--occupied-share",
        type=real(0, 1),
        default=0.5,
        help="probability that a colour question names an occupied cell (default 0.5; held-out sets keep 0.5)",
    )
    parser.add_argument("--dataset-name", default="toy_vqa", help="the dataset_name of its samples")
    parser.add_argument("--overwrite", action="store_true", help="replace files in --out if it exists")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    from vlablocks.methods.cotraining.vqa_dataset import write_vqa_dataset
    from vlablocks.tools.toy.toy_vqa import make_toy_vqa

    start = time.perf_counter()
    scenes, records = make_toy_vqa(
        args.scenes,
        args.seed,
        args.questions,
        args.max_objects,
        args.image_size,
        tuple(args.kinds),
        args.occupied_share,
    )
    out = write_vqa_dataset(args.out, scenes, records, args.dataset_name, overwrite=args.overwrite)
    print(
        f"wrote {len(records)} questions about {len(scenes)} toy scenes to {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0
