"""Train a framework: `vlablocks train --config-yaml F [overrides]`, or under accelerate:

    accelerate launch --config_file configs/accelerate/<ddp|zero2|zero3>.yaml vlablocks/core/training/train.py \\
        --config-yaml F [overrides]

The loop below reads top to bottom; everything else is a small helper in this package.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from vlablocks.core.config import ExperimentConfig, load_config, to_yaml
from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.dataloader.embodiments import dataset_embodiments
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.cotraining import check_cotraining
from vlablocks.core.logs import show_project_logs
from vlablocks.core.policy.checkpoint import load_weights
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.training.batches import length_source, micro_batches
from vlablocks.core.training.checkpoint import (
    STATE_DIR,
    latest_checkpoint,
    load_training_state,
    save_training_checkpoint,
)
from vlablocks.core.training.components import (
    build_train_dataset,
    dataset_cameras,
    load_pretrained_modules,
    make_accelerator,
    make_ema,
    resolve_norm_stats,
    seed_everything,
    set_threads,
    set_worker_sharing,
)
from vlablocks.core.training.distributed import end_distributed
from vlablocks.core.training.loss_schedule import PhaseSchedule, scheduled_loss
from vlablocks.core.training.optim import build_optimizer, freeze_modules, fused_adamw, parameter_summary
from vlablocks.core.training.periodic_eval import PeriodicEval
from vlablocks.core.training.precision import keep_trainable_weights_fp32
from vlablocks.core.training.run_dir import check_run_dir, remove_stale_temporaries, truncate_metrics
from vlablocks.core.training.run_logger import RunLogger
from vlablocks.core.training.zero_init import build_context
from vlablocks.core.training.zero_state import check_all_shards, load_zero_shard, save_zero_shard


def train(experiment: ExperimentConfig, dataset=None) -> dict:
    """Runs training from a validated experiment; returns {"losses", "checkpoint", "run_dir"}.

    `dataset` (any map-style dataset of raw sample dicts) replaces the config's `dataset:` section.
    Data flow: dataset (raw dicts) -> processor (collate, in the DataLoader workers) -> Batch -> model.
    """
    trainer: TrainerConfig = experiment.trainer
    run_dir = Path(experiment.run_dir)
    accelerator = make_accelerator(trainer)
    set_threads(trainer.torch_threads)
    set_worker_sharing(trainer)
    seed_everything(experiment.seed)
    main = accelerator.is_main_process
    check_run_dir(run_dir, experiment)  # every rank, before anything is written: no run is clobbered silently
    accelerator.wait_for_everyone()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        (run_dir / "config.yaml").write_text(to_yaml(experiment.to_dict()))

    dataset = dataset if dataset is not None else build_train_dataset(experiment)
    norm_stats = resolve_norm_stats(experiment, dataset, run_dir)
    embodiments = dataset_embodiments(dataset, experiment.platform)  # None unless robots of different sizes mix
    policy = build_policy(
        experiment,
        norm_stats,
        camera_keys=dataset_cameras(dataset),
        embodiments=embodiments,
        build_in=build_context(accelerator),  # built where it trains; under ZeRO-3 partitioned while built
    )
    framework, processor = policy.model, policy.processor  # processor: raw samples -> Batch, in the DataLoader workers
    cotraining = check_cotraining(framework, dataset)  # VL samples in the data: a framework that trains on them
    processor.fit(dataset)
    load_pretrained_modules(framework, trainer.pretrained_checkpoint, trainer.reload_modules)
    freeze_modules(framework, trainer.freeze_modules)
    deepspeed = accelerator.state.deepspeed_plugin is not None
    keep_trainable_weights_fp32(framework, trainer, deepspeed=deepspeed)
    if main:
        print(parameter_summary(framework))
    optimizer, scheduler = build_optimizer(framework, trainer, fused=fused_adamw(framework, deepspeed))

    start_step, losses = 0, []
    sharded = deepspeed  # ZeRO: each rank holds part of the optimizer
    resume_from = latest_checkpoint(run_dir) if trainer.resume else None
    if resume_from is not None:
        load_weights(framework, resume_from)
        record = load_training_state(resume_from, None if sharded else optimizer, scheduler)
        start_step, losses = record["step"], record["losses"]
        if main:
            truncate_metrics(run_dir, start_step)
            print(f"resumed from {resume_from} at step {start_step}")

    # The scheduler is stepped by hand once per optimizer step: accelerate would step it per process.
    model, optimizer = accelerator.prepare(framework, optimizer)
    if resume_from is not None and sharded:
        load_zero_shard(resume_from / STATE_DIR, optimizer, accelerator.process_index, accelerator.num_processes)
    ema = make_ema(framework, trainer, accelerator)  # after prepare: on the weights' device
    if ema is not None and resume_from is not None:
        ema.load(resume_from)
    accum = trainer.gradient_accumulation_steps
    options = trainer.loss_schedule
    schedule = PhaseSchedule(options.phase_a_steps, options.ramp_steps, options.order)
    batches = micro_batches(
        dataset,
        trainer.batch_size,
        experiment.seed,
        accelerator.process_index,
        accelerator.num_processes,
        start_micro_step=start_step * accum,
        num_workers=trainer.num_workers,
        collate_fn=processor,
        lengths=length_source(trainer, dataset, processor),  # trainer.group_by_length
        mega_batches=trainer.group_by_length_mega_batches,
    )
    logger = RunLogger(run_dir, trainer.max_steps, start_step, main, trainer.wandb_project, trainer.log_every)
    periodic_eval = PeriodicEval(trainer, run_dir) if trainer.eval_every and main else None
    last_checkpoint = resume_from
    model.train()
    for step in range(start_step + 1, trainer.max_steps + 1):
        step_loss, data_wait, logged = 0.0, 0.0, {}
        for _ in range(accum):
            with accelerator.accumulate(model):
                fetch_start = time.perf_counter()  # waiting for the processor (the hand-over, with workers)
                batch = next(batches)
                data_wait += time.perf_counter() - fetch_start
                if cotraining:  # the share of vision-language samples this step drew
                    logged["vl_share"] = (
                        logged.get("vl_share", 0.0) + (1 - batch.is_robot.float().mean().item()) / accum
                    )
                outputs = model(batch.to(accelerator.device))
                loss = scheduled_loss(outputs, schedule, step)  # trainer.loss_schedule (a pure function of the step)
                accelerator.backward(loss)
                step_loss += accelerator.reduce(loss.detach(), "mean").item() / accum
                for key, value in outputs.get("log", {}).items():  # loss terms: this rank's, mean over micro-batches
                    logged[key] = logged.get(key, 0.0) + float(value) / accum
                if accelerator.sync_gradients and trainer.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None and accelerator.sync_gradients:
                    ema.update(framework)
                del batch, outputs  # freed here, not while the next batch is awaited
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        if not math.isfinite(step_loss):
            logger.close(losses)
            raise FloatingPointError(
                f"non-finite loss ({step_loss}) at step {step}; stopped without saving. "
                f"Last good checkpoint: {last_checkpoint or 'none'}. Lower trainer.learning_rate or check the data."
            )
        losses.append(step_loss)
        samples = trainer.batch_size * accum * accelerator.num_processes
        metrics = {"loss": step_loss, "lr": lr, "data_ms": 1e3 * data_wait, **logged}
        if schedule.active:
            metrics["weight_action"] = schedule.action_weight(step)
            metrics["weight_auxiliary"] = schedule.auxiliary_weight(step)
        if periodic_eval is not None and step % trainer.eval_every == 0:
            metrics["eval_success"] = periodic_eval(policy, step)
        logger.log(step, metrics, samples)
        if step % trainer.save_every == 0 or step == trainer.max_steps:
            last_checkpoint = _save(
                accelerator, model, policy, run_dir, step, optimizer, scheduler, losses, trainer, ema
            )
    logger.close(losses)
    del model, optimizer
    end_distributed(accelerator)
    return {"losses": losses, "checkpoint": last_checkpoint, "run_dir": run_dir}


def _save(accelerator, model, policy, run_dir, step, optimizer, scheduler, losses, trainer, ema) -> Path:
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 shards; collective on every rank
    path = Path(run_dir) / "checkpoints" / f"step_{step}"
    shard_dir = None
    if accelerator.state.deepspeed_plugin is not None:  # every rank writes its optimizer partition
        shard_dir = Path(run_dir) / "checkpoints" / f".step_{step}.tmp-zero"
        save_zero_shard(shard_dir, optimizer, accelerator.process_index, accelerator.num_processes)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if shard_dir is not None:
            check_all_shards(shard_dir, accelerator.num_processes)  # a run_dir the nodes do not share fails here
        optimizer_state = None if shard_dir else optimizer.optimizer
        record = {"losses": losses}
        save_training_checkpoint(
            run_dir, step, policy, optimizer_state, scheduler, record, trainer.keep_last, state_dict, ema, shard_dir
        )
    accelerator.wait_for_everyone()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-yaml", required=True)
    args, overrides = parser.parse_known_args(argv)
    show_project_logs()
    train(load_config(args.config_yaml, overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
