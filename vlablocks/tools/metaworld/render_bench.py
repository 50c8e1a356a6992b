"""Milliseconds per corner2 frame of the `metaworld` env, MuJoCo's default scene quality against `fast_render`
(shadowsize 0, offsamples 0), per image size: the figures in docs/metaworld.md.

    python -m vlablocks.tools.metaworld.render_bench --sizes 64 128 224 --frames 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def frame_ms(task: str, size: int, fast: bool, frames: int) -> float:
    """Median wall milliseconds of one `render()` (after one warm-up frame that makes the GL context)."""
    from vlablocks.core.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(MetaWorldEnv.Config(task=task, image_size=size, fast_render=fast))
    try:
        env.reset(seed=0)
        times = []
        for _ in range(frames):
            start = time.perf_counter()
            env.render()
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args(argv)
    print("| image size | default quality, ms/frame | fast_render, ms/frame | speed-up |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        default, fast = (frame_ms(args.task, size, flag, args.frames) for flag in (False, True))
        print(f"| {size} | {default:.1f} | {fast:.1f} | {default / fast:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
