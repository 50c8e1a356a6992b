"""Per-GPU memory of a training run under DeepSpeed ZeRO-2 / ZeRO-3, before it is launched (`vlablocks plan`).

N parameters, T of them trainable (after `trainer.freeze_modules`), G GPUs in all, L the parameters of the
largest single module, p the bytes of a 16-bit weight (2 under bf16; 4 when `trainer.mixed_precision: no`).
Model states follow the byte accounting of DeepSpeed's own estimators (deepspeed/runtime/zero/
stage_1_and_2.py and stage3.py, `estimate_zero{2,3}_model_states_mem_needs`), split by kind:

    no DeepSpeed    weights p*(N - T) + 4*T        gradients 4*T             optimizer 8*T
    (DDP, stage 0)  (trainable weights are kept in fp32 under bf16 autocast: vlablocks/core/training/precision.py;
                    DDP's reducer buckets mirror the gradients, another 4*T, when G > 1)
    ZeRO-2          weights p*N (replicated)       gradients (p + 4)*T/G     optimizer 12*T/G
    ZeRO-3          weights p*N/G + p*L            gradients 4*T/G + p*L     optimizer 12*T/G
    + offload       optimizer states, fp32 master weights and fp32 gradients live in CPU memory instead
                    (ZeRO-2: gradients 0 on the GPU; ZeRO-3: only the gathered layer's p*L gradient)

12 = fp32 master weights + AdamW's two moments; L is the module ZeRO-3 gathers whole for its forward and
backward. With every parameter trainable and p = 2 the sums are DeepSpeed's: 2N + 18N/G (ZeRO-2) and
18N/G + 4L (ZeRO-3). DeepSpeed 0.19.8 under bf16 (default `grad_accum_dtype`) actually keeps a 16-bit
gradient partition (2 bytes) and makes the fp32 copy (4 bytes) only during the optimizer step, so ZeRO-3
holds 16 bytes per parameter between steps and up to 20 at the step; the estimate's 18 is their middle.

Activations come from `vlablocks/core/training/activation_estimate.py`; buffers are the communication buckets
of the DeepSpeed JSON. A configuration fits when the total stays under `HEADROOM` of the GPU's memory (the
rest: CUDA context, allocator fragmentation, temporaries such as the loss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlablocks.core.training.activation_estimate import SequenceShape, activation_bytes
from vlablocks.core.training.param_count import ParameterCounts

GIB = 2**30
HEADROOM = 0.9  # the share of GPU memory a plan may fill
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "accelerate"
# DeepSpeed's defaults, used when configs/accelerate/ds_zero{2,3}.json is not next to the package.
DEFAULT_BUCKETS = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}


@dataclass(frozen=True)
class Cluster:
    num_gpus: int
    gpus_per_node: int

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU (and per node of CPU memory) for one ZeRO stage and micro-batch."""

    stage: int
    offload: bool
    micro_batch: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int
    deepspeed_gpu: int  # DeepSpeed's estimator: model states per GPU (it assumes every parameter trainable)
    deepspeed_cpu: int  # DeepSpeed's estimator: CPU memory per node

    @property
    def states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations + self.buffers

    def fits(self, gpu_memory_bytes: float) -> bool:
        return self.total <= HEADROOM * gpu_memory_bytes


def check_cluster(num_gpus: int, gpus_per_node: int | None) -> Cluster:
    """G GPUs as nodes of `gpus_per_node` (default: one node up to 8, else 8 per node)."""
    if num_gpus < 1:
        raise ValueError(f"--num_gpus must be at least 1, got {num_gpus}")
    per_node = gpus_per_node or min(num_gpus, 8)
    if per_node < 1 or num_gpus % per_node:
        raise ValueError(f"--num_gpus {num_gpus} is not a whole number of nodes of --gpus_per_node {per_node}")
    return Cluster(num_gpus, per_node)


def model_states(counts: ParameterCounts, stage: int, offload: bool, gpus: int, p: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per GPU: the table in the module docstring."""
    n, t, largest = counts.total, counts.trainable, counts.largest_layer
    if stage == 0:
        return p * (n - t) + 4 * t, 4 * t, 8 * t
    if stage == 2:
        weights = p * n
        gradients = 0 if offload else (p + 4) * t // gpus
    elif stage == 3:
        weights = p * n // gpus + p * largest
        gradients = p * largest + (0 if offload else 4 * t // gpus)
    else:
        raise ValueError(f"--zero must be 0 (no DeepSpeed), 2 or 3, got {stage}")
    optimizer = 0 if offload else 12 * t // gpus
    return weights, gradients, optimizer


def deepspeed_estimate(counts: ParameterCounts, stage: int, offload: bool, cluster: Cluster) -> tuple[int, int]:
    """(GPU bytes, CPU bytes per node) from DeepSpeed's own estimator functions (zero_init off, as configured)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    layout = {"num_gpus_per_node": cluster.gpus_per_node, "num_nodes": cluster.num_nodes}
    if stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(counts.total, cpu_offload=offload, **layout)
    else:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            counts.total, counts.largest_layer, cpu_offload=offload, cpu_offload_params=False, zero_init=False, **layout
        )
    return int(gpu), int(cpu)


def bucket_bytes(stage: int, p: int, config_dir: Path = ACCELERATE_CONFIGS) -> int:
    """Communication buckets of configs/accelerate/ds_zero<stage>.json (16-bit elements)."""
    path = config_dir / f"ds_zero{stage}.json"
    zero = json.loads(path.read_text())["zero_optimization"] if path.is_file() else {}
    sizes = {**DEFAULT_BUCKETS, **zero}
    keys = ["reduce_bucket_size", "allgather_bucket_size" if stage == 2 else "stage3_prefetch_bucket_size"]
    return int(p * sum(float(sizes[k]) for k in keys))


def estimate(
    counts: ParameterCounts,
    model_config,
    sequence: SequenceShape,
    stage: int,
    offload: bool,
    micro_batch: int,
    cluster: Cluster,
    p: int = 2,
    checkpointing: bool = False,
) -> MemoryEstimate:
    weights, gradients, optimizer = model_states(counts, stage, offload, cluster.num_gpus, p)
    ds_gpu, ds_cpu = deepspeed_estimate(counts, stage, offload, cluster) if stage else (0, 0)
    activations = sum(activation_bytes(model_config, sequence, micro_batch, p, checkpointing).values())
    return MemoryEstimate(
        stage,
        offload,
        micro_batch,
        weights,
        gradients,
        optimizer,
        activations,
        bucket_bytes(stage, p) if stage else (4 * counts.trainable if cluster.num_gpus > 1 else 0),
        ds_gpu,
        ds_cpu,
    )


def largest_fitting_batch(fits, limit: int = 1024) -> int:
    """The largest micro-batch b <= limit with fits(b) (doubling, then bisection); 0 when not even 1 fits."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
