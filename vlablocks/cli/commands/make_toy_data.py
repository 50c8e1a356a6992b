"""`vlablocks make-toy-data --out DIR --episodes N --seed S [--variant colours|heights] [--policy ... --mix ...]
[--embodiment toy|toy_arm3]`:
record toy-task episodes (the scripted expert, or a mix of behaviour policies) as a LeRobot v3 dataset."""

from __future__ import annotations

import argparse
import time

from vlablocks.cli.arguments import count

NAME = "make-toy-data"
HELP = (
    "write toy tabletop episodes (scripted expert, or a mix of behaviour policies with success flags) "
    "as a local LeRobot v3.0 dataset"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--episodes", type=count(1), default=50, help="number of episodes (default 50)")
    parser.add_argument("--seed", type=count(0), default=0, help="episode i uses env seed SEED + i (default 0)")
    parser.add_argument("--image-size", type=count(8), default=112, help="pixels per image side (default 112)")
    parser.add_argument("--num-objects", type=count(1), default=3, help="blocks per scene (default 3)")
    parser.add_argument(
        "--variant",
        default="colours",
        choices=["colours", "heights", "two_stage"],
        help="colours: reach the named colour; heights: the tallest / shortest of identical-looking blocks (depth only); "
        "two_stage is eval-only (refused)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--policy",
        default="expert",
        help="comma-separated behaviour policies recording the episodes: expert, noisy, random, wrong (default expert)",
    )
    parser.add_argument("--mix", help="their shares of the episodes, e.g. 0.4,0.2,0.2,0.2 (default: equal)")
    parser.add_argument(
        "--embodiment",
        default="toy",
        choices=["toy", "toy_arm3"],
        help="toy: state [x, y], action [dx, dy]; toy_arm3: a synthetic arm recorded on the same episodes, state "
        "[x, y, z], action [dx, dy, dz] with dz a function of z (a second robot for cross-embodiment mixtures)",
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    from vlablocks.tools.toy.toy import ToyTabletopEnv
    from vlablocks.tools.toy.toy_behaviours import parse_mix
    from vlablocks.tools.toy.toy_dataset import write_toy_dataset

    behaviours, mix = parse_mix(args.policy, args.mix)
    config = ToyTabletopEnv.Config(image_size=args.image_size, num_objects=args.num_objects, variant=args.variant)
    start = time.perf_counter()
    out = write_toy_dataset(
        args.out,
        args.episodes,
        args.seed,
        config,
        args.overwrite,
        behaviours=behaviours,
        mix=mix,
        embodiment=args.embodiment,
    )
    seconds = time.perf_counter() - start
    print(f"wrote {args.episodes} {args.embodiment} ({args.variant}) episodes to {out} in {seconds:.1f} s")
    return 0
