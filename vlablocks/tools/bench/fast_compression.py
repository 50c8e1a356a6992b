"""FAST compression vs naive per-value binning, side by side on the same held-out chunks.

For each DCT scale: fit the FAST tokenizer on training chunks, encode held-out chunks, and print
tokens per chunk against the naive 256-bin tokenization (one token per action value, T x D tokens per
chunk, as RT-2 / OpenVLA), with the round-trip error of both as a percentage of each dimension's range.
Naive bins cover [-1, 1] and clip values outside it (which the synthetic chunks sometimes reach: that
is its max error column).

    python -m vlablocks.tools.bench.fast_compression                      # synthetic smooth chunks, several shapes
    python -m vlablocks.tools.bench.fast_compression --chunks chunks.npy  # your normalized chunks [N, T, D]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vlablocks.core.dataloader.synthetic_chunks import smooth_chunks
from vlablocks.core.flags import FlagParser
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer


def naive_binning_error(chunks: np.ndarray, bins: int = 256) -> np.ndarray:
    """Absolute round-trip error [N, T, D] of uniform per-value binning over [-1, 1] (values clipped)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    index = np.clip(np.digitize(chunks, edges) - 1, 0, bins - 1)
    return np.abs(centres[index] - chunks)


def percent_of_range(error: np.ndarray, chunks: np.ndarray) -> tuple[float, float]:
    """(worst-dimension mean error, worst max error), each as % of that dimension's range."""
    span = chunks.max(axis=(0, 1)) - chunks.min(axis=(0, 1))
    return 100 * float((error.mean(axis=(0, 1)) / span).max()), 100 * float((error.max(axis=(0, 1)) / span).max())


def run(train: np.ndarray, test: np.ndarray, scales: list[float], vocab_size: int) -> None:
    horizon, dim = train.shape[1:]
    naive_mean, naive_max = percent_of_range(naive_binning_error(test), test)
    print(f"\nT={horizon} D={dim}: fit on {len(train)} chunks, {len(test)} held out")
    print(
        f"  {'tokenizer':<18}{'vocab':>7}{'tokens/chunk':>14}{'max':>6}{'ratio':>8}{'mean err %':>12}{'max err %':>11}"
    )
    print(
        f"  {'naive 256-bin':<18}{256:>7}{horizon * dim:>14.1f}{horizon * dim:>6}{1.0:>8.2f}"
        f"{naive_mean:>12.3f}{naive_max:>11.3f}"
    )
    for scale in scales:
        config = FASTTokenizer.Config(scale=scale, vocab_size=vocab_size)
        tokenizer = FASTTokenizer(config, action_horizon=horizon, action_dim=dim).fit(train)
        start = time.perf_counter()
        ids = tokenizer.encode_batch(test)
        encode_ms = 1000 * (time.perf_counter() - start) / len(test)
        decoded = np.stack([tokenizer.decode(row).actions for row in ids])
        mean_err, max_err = percent_of_range(np.abs(decoded - test), test)
        lengths = np.array([len(row) for row in ids])
        label = f"FAST scale={scale:g}"
        print(
            f"  {label:<18}{tokenizer.vocab_size:>7}{lengths.mean():>14.1f}{lengths.max():>6}"
            f"{horizon * dim / lengths.mean():>8.2f}{mean_err:>12.3f}{max_err:>11.3f}   ({encode_ms:.2f} ms/chunk)"
        )


def main() -> None:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", help="a .npy file of normalized chunks [N, T, D] (loaded without pickle)")
    parser.add_argument("--scales", default="5,10,20,50", help="comma-separated DCT scales")
    parser.add_argument("--vocab-size", type=int, default=FASTTokenizer.Config.vocab_size)
    parser.add_argument("--train", type=int, default=2000, help="synthetic training chunks")
    parser.add_argument("--test", type=int, default=200, help="synthetic held-out chunks")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    print(f"default scale: {FASTTokenizer.Config.scale:g}; ratio = naive tokens / FAST tokens; errors in % of range")
    if args.chunks:
        chunks = np.load(args.chunks, allow_pickle=False).astype(np.float64)
        if chunks.ndim != 3:
            raise SystemExit(f"--chunks must hold [N, T, D], got shape {list(chunks.shape)}")
        order = np.random.default_rng(0).permutation(len(chunks))
        held_out = max(1, len(chunks) // 10)
        run(chunks[order[held_out:]], chunks[order[:held_out]], scales, args.vocab_size)
        return
    for horizon, dim in ((8, 7), (16, 7), (50, 14)):
        train = smooth_chunks(args.train, horizon, dim, seed=0)
        test = smooth_chunks(args.test, horizon, dim, seed=1)
        run(train, test, scales, args.vocab_size)


if __name__ == "__main__":
    main()
