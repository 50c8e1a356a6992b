"""`vlablocks plan --config-yaml F --num_gpus N [--zero 0|2|3] [--offload] [--gpu_memory_gb 80] [overrides]`."""

from __future__ import annotations

import argparse

from vlablocks.cli.arguments import count, real

NAME = "plan"
HELP = (
    "before launching: parameters per module (trainable/frozen) and per-GPU memory under ZeRO-2/3 "
    "(weights, gradients, optimizer, activations), and the micro-batch that fits a GPU"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", required=True, help="experiment YAML; overrides follow as --a.b=v")
    parser.add_argument("--num-gpus", type=count(1), required=True, help="GPUs in all (every node together)")
    parser.add_argument("--gpus-per-node", type=count(1), help="default: all on one node up to 8, else 8 per node")
    parser.add_argument(
        "--zero", type=int, choices=[0, 2, 3], help="one ZeRO stage, 0 for none (DDP; default: all three)"
    )
    parser.add_argument("--offload", action="store_true", help="optimizer states in CPU memory (offload_optimizer)")
    parser.add_argument(
        "--gpu-memory-gb", type=real(0, open_low=True), default=80.0, help="memory of one GPU in GiB (default 80)"
    )
    parser.add_argument(
        "--prompt-tokens",
        type=count(0),
        default=48,
        help="text tokens of a prompt before the framework's suffix: chat template + instruction (default 48)",
    )


def check(experiment) -> None:
    """The trainer sizes the plan multiplies (ranges of the flags are checked while parsing)."""
    trainer = experiment.trainer
    for name in ("batch_size", "gradient_accumulation_steps"):
        value = getattr(trainer, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"trainer.{name} must be an integer >= 1, got {value!r} (--trainer.{name}=N)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.core.config import load_config
    from vlablocks.core.training.memory_plan import check_cluster
    from vlablocks.core.training.param_count import count_parameters, meta_framework

    cluster = check_cluster(args.num_gpus, args.gpus_per_node)
    experiment = load_config(args.config_yaml, overrides)
    check(experiment)
    framework = meta_framework(experiment)
    counts = count_parameters(framework)
    print(f"{experiment.framework['name']} ({args.config_yaml}), built on the meta device:")
    print(parameter_table(counts))
    print()
    print(memory_report(experiment, framework, counts, cluster, args))
    return 0


def parameter_table(counts) -> str:
    rows = [f"{'module':<24}{'trainable':>16}{'frozen':>16}"]
    rows += [f"{m.name:<24}{m.trainable:>16,}{m.frozen:>16,}" for m in counts.modules]
    rows.append(f"{'total':<24}{counts.trainable:>16,}{counts.frozen:>16,}")
    rows.append(f"largest module (ZeRO-3 gathers it whole): {counts.largest_layer:,} parameters")
    return "\n".join(rows)


def sequence_shape(experiment, framework, prompt_tokens: int):
    """Tokens of one training sample: its views through the vision tower, then the prompt and suffix."""
    from vlablocks.core.training.activation_estimate import SequenceShape

    vlm = framework.vlm
    views = len((experiment.dataset or {}).get("camera_keys") or []) or 1
    height, width = vlm.view_size
    patches = views * (height // vlm.patch_size) * (width // vlm.patch_size)
    suffix = framework.processor_options().get("prompt_suffix", "")
    text = prompt_tokens + (len(vlm.tokenizer(suffix, add_special_tokens=False).input_ids) if suffix else 0)
    return SequenceShape(text, patches // vlm.merge_size**2, patches), views, (height, width)


def memory_report(experiment, framework, counts, cluster, args) -> str:
    from vlablocks.core.training.memory_plan import GIB, HEADROOM, estimate, largest_fitting_batch

    trainer = experiment.trainer
    p = 4 if trainer.mixed_precision == "no" else 2
    checkpointing = bool(framework.vlm.config.gradient_checkpointing)
    sequence, views, (height, width) = sequence_shape(experiment, framework, args.prompt_tokens)
    model_config = framework.vlm.model.config
    stages = [args.zero] if args.zero is not None else [0, 2, 3]
    batch = trainer.batch_size
    gpu_bytes = args.gpu_memory_gb * GIB

    def at(stage: int, micro_batch: int):
        return estimate(
            counts, model_config, sequence, stage, args.offload, micro_batch, cluster, p, checkpointing=checkpointing
        )

    plans = [at(stage, batch) for stage in stages]
    best = [largest_fitting_batch(lambda b, s=stage: at(s, b).fits(gpu_bytes)) for stage in stages]
    names = [("DDP" if s == 0 else f"ZeRO-{s}" + (" offload" if args.offload else "")) for s in stages]
    lines = [
        f"per GPU: {cluster.num_gpus} GPUs = {cluster.num_nodes} node(s) x {cluster.gpus_per_node}, "
        f"{'fp32' if p == 4 else 'bf16'}, AdamW, micro-batch {batch} (trainer.batch_size), "
        f"{views} view(s) of {height}x{width} -> {sequence.vision_tokens} vision + {sequence.text_tokens} text tokens"
        + (", gradient checkpointing" if checkpointing else ""),
        f"{'':<34}" + "".join(f"{n:>16}" for n in names),
    ]

    def row(label: str, values) -> None:
        lines.append(f"{label:<34}" + "".join(f"{v:>16}" for v in values))

    def gib(values) -> list[str]:
        return [f"{v / GIB:.2f} GiB" for v in values]

    row("weights", gib(e.weights for e in plans))
    row("gradients", gib(e.gradients for e in plans))
    row("optimizer states", gib(e.optimizer for e in plans))
    row("= model states", gib(e.states for e in plans))
    row("  DeepSpeed's estimator", gib(e.deepspeed_gpu for e in plans))
    row(f"activations (micro-batch {batch})", gib(e.activations for e in plans))
    row("communication buckets", gib(e.buffers for e in plans))
    row("total", gib(e.total for e in plans))
    row(f"fits {args.gpu_memory_gb:g} GiB (<= {HEADROOM:.0%})", ["yes" if e.fits(gpu_bytes) else "no" for e in plans])
    row("largest micro-batch that fits", [str(b) if b else "none" for b in best])
    row("CPU memory per node (DeepSpeed)", gib(e.deepspeed_cpu for e in plans))
    lines.append(
        "global batch = micro-batch x trainer.gradient_accumulation_steps x GPUs "
        f"= {batch} x {trainer.gradient_accumulation_steps} x {cluster.num_gpus} "
        f"= {batch * trainer.gradient_accumulation_steps * cluster.num_gpus}"
    )
    return "\n".join(lines)
