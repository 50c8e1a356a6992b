"""The real training loop on synthetic data, launched by tests/test_zero_train.py (plainly or under accelerate).

Prints the per-step losses as JSON on the last line of stdout (rank 0). `--kill_after_save K` SIGKILLs
every rank once the step-K checkpoint is complete (a crash between saves); `--resume` continues the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.training import train as train_module
from vlablocks.core.training.train import train

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save_every", type=int, default=1000)
    parser.add_argument("--kill_after_save", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.kill_after_save:
        save = train_module._save

        def save_then_die(accelerator, model, policy, run_dir, step, *rest):
            path = save(accelerator, model, policy, run_dir, step, *rest)
            if step == args.kill_after_save:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        train_module._save = save_then_die
    torch.set_num_threads(1)
    experiment = parse_experiment(
        {
            "run_dir": args.run_dir,
            "seed": 5,
            "platform": PLATFORM,
            "framework": {
                "name": "QwenOFT",
                "vlm": {"name": "qwen2_5_vl", "image_size": 56},
                "action_model": {"name": "l1_regression", "hidden_dim": 32, "num_blocks": 1},
            },
            "trainer": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": 1e-3,
                "save_every": args.save_every,
                "max_grad_norm": 1.0,
                "resume": args.resume,
            },
        },
    )
    # No padded chunk steps: a masked mean per rank then equals the global masked mean.
    data = synthetic_examples(PlatformConfig(**PLATFORM), 32, image_size=56, seed=11)
    result = train(experiment, dataset=data)
    print(json.dumps(result["losses"]))


if __name__ == "__main__":
    main()
