"""Row 9: chunk latency of QwenPI05 (the prompt through the VLM once, then the action expert integrates) vs
QwenFAST decoding the same chunk token by token, same VLM.

Both are `Policy.predict` on the same single example (batch 1, 1 view, an 8 x 7 LIBERO chunk). QwenFAST is
first fitted to the example until greedy decoding emits that chunk's FAST sequence and the stop token, the
length a trained policy emits (as in the inference row, inference.py). QwenPI05's cost does not depend on
its training: one VLM pass over its prompt (which also holds the state tokens) and `NUM_STEPS` Euler steps of
the expert, the flow row's DiT; it decodes no token (the row checks one VLM pass per chunk).
"""

from __future__ import annotations

from vlablocks.tools.bench.flow import NUM_STEPS, head_options
from vlablocks.tools.bench.inference import FIT_LR, fit_fast_to_example
from vlablocks.tools.bench.models import (
    bench_examples,
    bench_experiment,
    build_on_device,
    count_calls,
    free_memory,
    stats_examples,
)
from vlablocks.tools.bench.result import Row, Side, interleaved
from vlablocks.tools.bench.settings import BenchSettings


def prompt_tokens(model, example: dict) -> int:
    """Tokens of the example's inference prompt (views, instruction and, for QwenPI05, the state)."""
    return int(model.processor([example], targets=False).vlm.attention_mask.sum())


def pi05_row(settings: BenchSettings) -> Row:
    train_examples, stats = stats_examples(settings)
    example = bench_examples(settings, 1, seed=0)[0]
    device = settings.device

    fast = build_on_device(bench_experiment({"name": "QwenFAST"}, settings), stats, device)
    fast.processor.fit(train_examples)
    fit = fit_fast_to_example(fast, example, settings.fast_fit_steps, FIT_LR[settings.arch])
    free_memory(device)  # the fit's optimizer state
    experiment = bench_experiment({"name": "QwenPI05", "action_model": head_options(settings)}, settings)
    pi05 = build_on_device(experiment, stats, device)
    pi05.processor.fit(train_examples)  # its FAST tokenizer makes training targets only; the processor wants it
    fast.eval(), pi05.eval()
    with count_calls(pi05.model.vlm.model.model) as calls:
        pi05.predict([example])

    times = interleaved(
        {"fast": lambda: fast.predict([example]), "pi05": lambda: pi05.predict([example])},
        settings.warmup,
        settings.repeats,
        device,
    )
    expert = pi05.model.action_model
    vlm_params = sum(p.numel() for p in pi05.model.vlm.parameters())
    expert_params = sum(p.numel() for p in expert.parameters())
    notes = [
        f"Batch 1, 1 view {settings.image_size}x{settings.image_size}, chunk 8 x 7, Qwen2.5-VL arch {settings.arch}"
        f" ({vlm_params / 1e6:.2f} M with QwenPI05's FAST token embeddings); QwenPI05's expert: DiT"
        f" {expert.config.hidden_dim} wide x {expert.config.num_layers} blocks ({expert_params / 1e6:.2f} M),"
        f" {NUM_STEPS} Euler steps, {calls[0]} VLM pass per chunk.",
        f"QwenFAST emitted {fit['emitted_tokens']} FAST tokens + stop per chunk (the chunk's FAST encoding has"
        f" {fit['target_tokens']}; fitted to it in {fit['steps']} steps).",
        f"Prompt tokens: QwenPI05 {prompt_tokens(pi05, example)} (with the state's {len(example['state'])} bins),"
        f" QwenFAST {prompt_tokens(fast, example)}.",
    ]
    return Row(
        key="pi05",
        title="pi0.5 inference: chunk latency, QwenPI05 (prefix + expert) vs QwenFAST (decoding)",
        unit="ms",
        ours=Side("QwenPI05", times["pi05"]),
        baseline=Side("QwenFAST", times["fast"]),
        ratio_name="FAST / PI05",
        invert=True,
        notes=notes,
        checks={
            "fast_emitted_tokens": fit["emitted_tokens"],
            "fast_target_tokens": fit["target_tokens"],
            "pi05_vlm_passes": calls[0],
        },
    )
