"""Row 3: chunk latency of QwenFAST (autoregressive, KV cache) vs QwenOFT (parallel, one pass), same VLM.

Both are `Policy.predict` on the same single example (batch 1, 1 view, an 8 x 7 LIBERO chunk).
A random-init QwenFAST never picks its stop token, so it would always emit the cap of T * D + 1 tokens,
about twice what the FAST tokenizer needs for such a chunk; that would overstate its latency. So it is
first trained on the benchmark example (its real `forward`, AdamW) until greedy decoding emits that
example's FAST sequence and the stop token: the length a trained policy emits. The row says how many
tokens it emitted against that target.
"""

from __future__ import annotations

import torch

from vlablocks.core.policy.policy import Policy
from vlablocks.core.processor.steps import IGNORE_INDEX
from vlablocks.tools.bench.models import (
    bench_examples,
    bench_experiment,
    build_on_device,
    count_calls,
    free_memory,
    stats_examples,
)
from vlablocks.tools.bench.result import Goal, Row, Side, interleaved
from vlablocks.tools.bench.settings import BenchSettings

# AdamW learning rate for fitting FAST to one chunk: the tiny model needs a large one to do it in seconds.
FIT_LR = {"tiny": 3e-3, "3b": 1e-4}
FIT_LOSS = 0.05  # mean cross-entropy under which greedy decoding is checked
OFT_GOAL_MS = 25.0  # OFT chunk latency on an H100 at 3B, 1 view, bf16


def fast_target_tokens(fast: Policy, example: dict) -> int:
    """FAST tokens of the example's own (normalized) chunk, without the stop token."""
    labels = fast.processor([example]).vlm.labels
    return int((labels != IGNORE_INDEX).sum()) - 1


def fit_fast_to_example(fast: Policy, example: dict, max_steps: int, lr: float) -> dict:
    """Trains `fast` on one example until greedy decoding emits its FAST sequence -> fit summary.

    -> {"steps", "target_tokens", "emitted_tokens"} (emitted counts FAST tokens, stop excluded).
    """
    target = fast_target_tokens(fast, example)
    optimizer = torch.optim.AdamW([p for p in fast.model.parameters() if p.requires_grad], lr=lr)
    batch = fast.processor([example]).to(fast.device)
    emitted, steps = None, 0
    for steps in range(1, max_steps + 1):
        loss = fast.model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if loss.item() < FIT_LOSS or steps == max_steps:
            emitted = emitted_tokens(fast, example)
            if emitted == target:
                break
    del optimizer
    return {"steps": steps, "target_tokens": target, "emitted_tokens": emitted}


def emitted_tokens(fast: Policy, example: dict) -> int:
    """FAST tokens `predict` emits: one call of the language model (decode calls the inner model, `vlm.model.model`)
    per generated token; the last is the stop token unless decoding hit the cap of T * D + 1."""
    cap = fast.model.platform.action_horizon * fast.model.platform.action_dim + 1
    with count_calls(fast.model.vlm.model.model) as calls:
        fast.predict([example])
    return calls[0] if calls[0] >= cap else calls[0] - 1


def inference_row(settings: BenchSettings) -> Row:
    train_examples, stats = stats_examples(settings)
    example = bench_examples(settings, 1, seed=0)[0]
    device = settings.device

    fast = build_on_device(bench_experiment({"name": "QwenFAST"}, settings), stats, device)
    fast.processor.fit(train_examples)  # fits the FAST tokenizer on the training chunks
    fit = fit_fast_to_example(fast, example, settings.fast_fit_steps, FIT_LR[settings.arch])
    free_memory(device)  # the fit's optimizer state
    oft = build_on_device(bench_experiment({"name": "QwenOFT"}, settings), stats, device)
    fast.eval(), oft.eval()

    times = interleaved(
        {"fast": lambda: fast.predict([example]), "oft": lambda: oft.predict([example])},
        settings.warmup,
        settings.repeats,
        device,
    )
    goals = [Goal("ratio", ">=", 15.0)]
    if device == "cuda" and settings.arch == "3b":
        goals.append(Goal("ours", "<=", OFT_GOAL_MS))
    params = {
        name: sum(p.numel() for p in policy.model.vlm.parameters()) for name, policy in (("fast", fast), ("oft", oft))
    }
    notes = [
        f"Batch 1, 1 view {settings.image_size}x{settings.image_size}, chunk 8 x 7, Qwen2.5-VL arch {settings.arch}"
        f" ({params['oft'] / 1e6:.1f} M VLM parameters; FAST's has {params['fast'] / 1e6:.1f} M with its 1024 added"
        " token embeddings).",
        f"QwenFAST emitted {fit['emitted_tokens']} FAST tokens + stop per chunk (the chunk's FAST encoding has"
        f" {fit['target_tokens']}; fitted to it in {fit['steps']} steps; a random-init model would emit the cap,"
        f" {fast.model.platform.action_horizon * fast.model.platform.action_dim + 1}).",
    ]
    return Row(
        key="inference",
        title="inference: chunk latency, QwenOFT (parallel) vs QwenFAST (autoregressive)",
        unit="ms",
        ours=Side("QwenOFT", times["oft"]),
        baseline=Side("QwenFAST", times["fast"]),
        ratio_name="FAST / OFT",
        invert=True,
        goals=goals,
        notes=notes,
        checks={"fast_emitted_tokens": fit["emitted_tokens"], "fast_target_tokens": fit["target_tokens"]},
    )
