"""Row: chunk latency of QwenOFT compiled (`Policy.compile`: torch.compile, CUDA graphs on a GPU, prompt-length
buckets) vs the same policy eager, batch 1, one view, and batch 32 throughput on a GPU.

Both sides are `Policy.predict` on the same example, timed in alternation after warm-up (the compiled side's
warm-up compiles it; the compile time is reported). The row checks that both return the same actions.
Goal (issue 38): QwenOFT <= 20 ms p50 at 3B on an H200.
"""

from __future__ import annotations

import time

import numpy as np

from vlablocks.tools.bench.models import bench_examples, bench_experiment, build_on_device, stats_examples
from vlablocks.tools.bench.result import Goal, Row, Side, interleaved
from vlablocks.tools.bench.settings import BenchSettings

OFT_COMPILED_GOAL_MS = 20.0  # H200, 3B, batch 1, one 224 px view (issue 38)
THROUGHPUT_BATCH = 32


def compiled_row(settings: BenchSettings) -> Row:
    _, stats = stats_examples(settings)
    example = bench_examples(settings, 1, seed=0)[0]
    device = settings.device
    experiment = bench_experiment({"name": "QwenOFT"}, settings)
    eager = build_on_device(experiment, stats, device).eval()
    compiled = build_on_device(experiment, stats, device).eval()
    compiled.model.load_state_dict(eager.model.state_dict())
    compiled.compile()
    start = time.perf_counter()
    compiled_actions = compiled.predict([example])["actions"]
    compile_s = time.perf_counter() - start
    gap = float(np.abs(compiled_actions - eager.predict([example])["actions"]).max())
    times = interleaved(
        {"compiled": lambda: compiled.predict([example]), "eager": lambda: eager.predict([example])},
        settings.warmup,
        settings.repeats,
        device,
    )
    notes = [
        f"QwenOFT (L1 head), Qwen2.5-VL arch {settings.arch}, batch 1, 1 view {settings.image_size}px;"
        f" compiled with mode {'reduce-overhead (CUDA graphs)' if device == 'cuda' else 'default'}, prompt bucket 32;"
        f" first call (compile) {compile_s:.0f} s.",
        f"Same actions on both sides: max |difference| {gap:.1e}.",
    ]
    checks = {"action_max_abs_diff": gap, "compile_s": compile_s}
    if device == "cuda":
        batch = bench_examples(settings, THROUGHPUT_BATCH, seed=1)
        compiled.predict(batch)  # compiles the batch's shapes
        batched = interleaved({"compiled": lambda: compiled.predict(batch)}, 1, settings.repeats, device)["compiled"]
        samples_per_s = THROUGHPUT_BATCH * 1e3 / float(np.median(batched))
        notes.append(f"Batch {THROUGHPUT_BATCH}, compiled: {samples_per_s:.0f} samples/s.")
        checks["batch_32_samples_per_s"] = samples_per_s
    goals = [Goal("ours", "<=", OFT_COMPILED_GOAL_MS)] if device == "cuda" and settings.arch == "3b" else []
    return Row(
        key="compiled",
        title="inference: QwenOFT compiled vs eager, chunk latency",
        unit="ms",
        ours=Side("compiled", times["compiled"]),
        baseline=Side("eager", times["eager"]),
        ratio_name="eager / compiled",
        invert=True,
        goals=goals,
        notes=notes,
        checks=checks,
    )
