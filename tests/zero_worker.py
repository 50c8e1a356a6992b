"""One tiny training run, launched by tests/test_zero.py (plainly or under `accelerate launch`).

It follows the structure of vlablocks/core/training/train.py (same helpers, same Accelerator calls) on a
2-layer MLP and fixed random data, and writes from rank 0 a JSON with the per-step global losses,
what accelerate and DeepSpeed saw, and each rank's peak RSS.

Rank r at micro-step k of optimizer step s takes rows
[(s * accum + k) * batch * world + r * batch, ... + batch) of the data, so every world size and
accumulation setting with the same batch * accum * world sees the same global batch each step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

import torch

from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.training.distributed import configure_deepspeed, end_distributed, prepare_distributed_environment

IN_DIM, HIDDEN = 16, 32


def fixed_data(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs: [rows, IN_DIM], targets: [rows, 1], identical in every process."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(rows, IN_DIM, generator=gen)
    y = torch.sin(x[:, :4].sum(dim=1, keepdim=True)) + 0.1 * torch.randn(rows, 1, generator=gen)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max_grad_norm", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    args = parser.parse_args()
    trainer = TrainerConfig(
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.accum,
        max_grad_norm=args.max_grad_norm or None,
        learning_rate=1e-2,
    )

    from accelerate import Accelerator

    prepare_distributed_environment(trainer)
    accelerator = Accelerator(gradient_accumulation_steps=trainer.gradient_accumulation_steps, mixed_precision="no")
    ds_config = configure_deepspeed(accelerator, trainer)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(IN_DIM, args.hidden), torch.nn.Tanh(), torch.nn.Linear(args.hidden, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.learning_rate, betas=tuple(trainer.betas))
    # Stepped by hand once per optimizer step, as in train.py.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    model, optimizer = accelerator.prepare(model, optimizer)

    world, rank, batch = accelerator.num_processes, accelerator.process_index, trainer.batch_size
    x, y = fixed_data(args.steps * batch * args.accum * world)
    losses = []
    for step in range(args.steps):
        step_loss = 0.0
        for k in range(args.accum):
            start = (step * args.accum + k) * batch * world + rank * batch
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x[start : start + batch]), y[start : start + batch])
                accelerator.backward(loss)
                step_loss += accelerator.reduce(loss.detach(), "mean").item() / args.accum
                if accelerator.sync_gradients and trainer.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(step_loss)

    # What train.py saves: under ZeRO-3 this gathers the shards (a collective: every rank calls it; only rank 0
    # receives the dict, the others get None).
    state_dict = accelerator.get_state_dict(model)
    peak_rss_kib = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], dtype=torch.float64)
    rss_per_rank = accelerator.gather(peak_rss_kib).tolist()
    node = torch.tensor([float(os.environ.get("GROUP_RANK", 0))], dtype=torch.float64)  # torchrun's node rank
    node_of_rank = [int(n) for n in accelerator.gather(node).tolist()]
    if accelerator.is_main_process:
        record = {
            "losses": losses,
            "num_processes": world,
            "distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "optimizer": type(optimizer.optimizer).__name__,
            "state_dict_numel": sum(v.numel() for v in state_dict.values()),
            "deepspeed": None if ds_config is None else {k: v for k, v in ds_config.items() if k != "steps_per_print"},
            "peak_rss_mib_per_rank": [kib / 1024 for kib in rss_per_rank],
            "node_of_rank": node_of_rank,
        }
        Path(args.out).write_text(json.dumps(record, indent=1))
    del model, optimizer
    end_distributed(accelerator)


if __name__ == "__main__":
    main()
