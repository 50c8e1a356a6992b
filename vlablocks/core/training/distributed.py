"""Multi-process setup that accelerate does not get right on its own: CPU ranks and DeepSpeed batch sizes.

Two calls around the creation of the Accelerator, one at the end (docs/distributed.md has the details):

    prepare_distributed_environment(trainer)       # before Accelerator(...)
    accelerator = Accelerator(gradient_accumulation_steps=trainer.gradient_accumulation_steps, ...)
    configure_deepspeed(accelerator, trainer)      # before accelerator.prepare(...)
    ...
    del model, optimizer; end_distributed(accelerator)

Why the first call exists (accelerate 1.15, deepspeed 0.19). Under `accelerate launch` with a DeepSpeed
config, every rank has LOCAL_RANK set and ACCELERATE_USE_DEEPSPEED=true. `PartialState` asks
`_prepare_backend` for a process-group backend, which only knows accelerator devices (nccl, hccl, ...):
on a CPU-only host it returns None. The DeepSpeed branch then calls
`deepspeed.comm.init_distributed(dist_backend=None)`; DeepSpeed picks gloo from its CPU accelerator and
the 2-rank group forms. But accelerate then reads its own `backend is None` as "not distributed" and sets
`num_processes = 1`, so the "auto" train_batch_size is filled as micro * accum * 1 and DeepSpeed's own
check (which uses the real world size) fails. `--cpu` cannot help (the launcher starts one plain process), nor can
ACCELERATE_USE_CPU (AcceleratorState then disables DeepSpeed and runs DDP). Naming the backend
explicitly (the one DeepSpeed's CPU accelerator uses) makes accelerate count the ranks. Plain torchrun
ranks without DeepSpeed (configs/accelerate/ddp.yaml on a CPU host) hit the same `backend is None` path;
for them `cpu=True` selects accelerate's MULTI_CPU (gloo DDP) mode.

Why the second call exists. The DeepSpeed JSON in configs/accelerate/ leaves batch sizes, accumulation
and clipping "auto" so they come from one place, the `trainer:` section. accelerate can fill the micro
batch only from a DataLoader passed to `prepare`, and fills "auto" clipping with a hard-coded 1.0; and
under DeepSpeed `accelerator.clip_grad_norm_` does not clip (DeepSpeed clips inside `step` with the
config value). So the values are written into the plugin's config here, before `prepare`.
"""

from __future__ import annotations

import os

from vlablocks.core.config.trainer import TrainerConfig


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _launched_multiprocess() -> bool:
    """True inside a rank started by torchrun / `accelerate launch` (which export LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1


def deepspeed_cpu_backend() -> str | None:
    """The collective backend DeepSpeed uses when its accelerator is the CPU (gloo, or ccl with oneCCL); else None."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return accelerator.communication_backend_name() if accelerator.device_name() == "cpu" else None


def prepare_distributed_environment(trainer: TrainerConfig) -> None:
    """Initializes accelerate's process state correctly for CPU ranks; call before creating the Accelerator.

    A no-op for a single plain process and on GPU hosts (accelerate picks nccl itself). Also refuses a
    launcher-exported accumulation that disagrees with `trainer.gradient_accumulation_steps`: accelerate
    silently prefers ACCELERATE_GRADIENT_ACCUMULATION_STEPS over the Accelerator argument.
    """
    exported = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if exported is not None and exported.isdigit() and int(exported) != trainer.gradient_accumulation_steps:
        raise ValueError(
            f"the accelerate config sets gradient_accumulation_steps={exported} but "
            f"trainer.gradient_accumulation_steps={trainer.gradient_accumulation_steps}; "
            "remove it from the accelerate YAML (the trainer section is the single source)"
        )
    if not _launched_multiprocess() or _flag("ACCELERATE_USE_CPU"):
        return  # one process, or --cpu: accelerate already handles these
    from accelerate import PartialState

    if _flag("ACCELERATE_USE_DEEPSPEED"):
        backend = deepspeed_cpu_backend()
        if backend is not None:
            PartialState(backend=backend)  # shared singleton state: Accelerator() reuses it
        return
    import torch

    if not torch.cuda.is_available():
        PartialState(cpu=True)


def deepspeed_batch_config(trainer: TrainerConfig, world_size: int) -> dict:
    """The DeepSpeed config values implied by the trainer section and the number of ranks.

    train_batch_size = batch_size (per rank, per micro step) * gradient_accumulation_steps * world_size;
    gradient_clipping 0.0 means off in DeepSpeed (trainer.max_grad_norm None or 0).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return {
        "train_micro_batch_size_per_gpu": trainer.batch_size,
        "gradient_accumulation_steps": trainer.gradient_accumulation_steps,
        "train_batch_size": trainer.batch_size * trainer.gradient_accumulation_steps * world_size,
        "gradient_clipping": float(trainer.max_grad_norm or 0.0),
    }


def configure_deepspeed(accelerator, trainer: TrainerConfig) -> dict | None:
    """Writes the trainer-derived values into the active DeepSpeed config; returns it (None without DeepSpeed).

    Call after `Accelerator(...)` and before `accelerator.prepare(...)`. A value the JSON hard-codes is kept
    only if it agrees; otherwise a one-line error names the key and both values.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return None
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() != accelerator.num_processes:
        raise RuntimeError(
            f"accelerate counts {accelerator.num_processes} processes but the process group has "
            f"{dist.get_world_size()}; call prepare_distributed_environment() before creating the Accelerator"
        )
    return apply_derived_values(plugin.deepspeed_config, deepspeed_batch_config(trainer, accelerator.num_processes))


def apply_derived_values(config: dict, derived: dict) -> dict:
    """Writes `derived` into a DeepSpeed config dict in place, replacing "auto"; disagreeing values are an error."""
    for key, value in derived.items():
        current = config.get(key, "auto")
        if current != "auto" and current != value:
            raise ValueError(
                f"the DeepSpeed config sets {key}={current} but the trainer section implies {value}; "
                'set it to "auto" so it is derived from trainer.batch_size / gradient_accumulation_steps / max_grad_norm'
            )
        config[key] = value
    return config


def end_distributed(accelerator) -> None:
    """Tears the process group down in an order that lets CPU (gloo) ranks exit cleanly.

    Delete your own references to the prepared model and optimizer first. A DDP wrapper that outlives
    the gloo process group (destroyed before it, or both left to interpreter teardown) made about 1 in 10
    two-rank CPU runs abort with "terminate called without an active exception"; releasing accelerate's
    references and collecting before `end_training` removed it (0 in 28).
    """
    accelerator.free_memory()  # drops accelerate's references to the wrappers and runs gc.collect()
    accelerator.end_training()  # finishes trackers, destroys the process group
