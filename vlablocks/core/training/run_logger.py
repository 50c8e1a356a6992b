"""Training-run logging: progress bar, metrics.jsonl, tensorboard, optional wandb, and a loss-curve PNG.

`metrics.jsonl` is the run's complete record: one line per step (sweeps, resumes and the bench read it). The
dashboards (tensorboard, wandb) and the progress bar's figures get one point every `trainer.log_every` steps:
the mean of each metric over the steps since the last point (and always at the last step and at an evaluation).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm


class RunLogger:
    """Writes every step to `metrics.jsonl`; every `log_every` steps the window's means to tensorboard, wandb and the
    progress bar (loss, lr, samples/s); active on the main process only."""

    def __init__(
        self,
        run_dir: Path,
        max_steps: int,
        start_step: int,
        enabled: bool,
        wandb_project: str | None = None,
        log_every: int = 1,
    ):
        if log_every < 1:
            raise ValueError(f"trainer.log_every must be >= 1 (steps between dashboard points), got {log_every}")
        self.run_dir = run_dir
        self.enabled = enabled
        self.log_every = log_every
        self.max_steps = max_steps
        self._window: list[dict[str, float]] = []
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not enabled, dynamic_ncols=True, desc="train")
        self.tensorboard = None
        self.wandb = None
        self._last_time = time.perf_counter()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise ValueError("trainer.wandb_project is set but wandb is not installed: pip install wandb") from exc
            self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), name=run_dir.name)

    def log(self, step: int, metrics: dict[str, float], samples: int) -> None:
        now = time.perf_counter()
        metrics = {**metrics, "samples_per_s": samples / max(now - self._last_time, 1e-9)}
        self._last_time = now
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._window.append(metrics)
        if step % self.log_every == 0 or step == self.max_steps or "eval_success" in metrics:
            point = window_mean(self._window)
            self._window = []
            for key, value in point.items():
                self.tensorboard.add_scalar(f"train/{key}", value, step)
            if self.wandb is not None:
                self.wandb.log(point, step=step)
            self.bar.set_postfix(
                loss=f"{point['loss']:.4f}", lr=f"{point['lr']:.2e}", sps=f"{point['samples_per_s']:.1f}"
            )
        self.bar.update(step - self.bar.n)

    def close(self, losses: list[float]) -> None:
        self.bar.close()
        if not self.enabled:
            return
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        if losses:
            plot_loss_curve(losses, self.run_dir / "loss_curve.png")


def window_mean(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the rows that have it (a loss term logged only on some steps averages over
    those)."""
    keys = {key for row in rows for key in row}
    return {key: sum(row[key] for row in rows if key in row) / sum(key in row for row in rows) for key in sorted(keys)}


def plot_loss_curve(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
