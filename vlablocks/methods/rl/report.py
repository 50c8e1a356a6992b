"""The RL run's success-vs-iteration plot: sampled rollouts (training) and greedy evaluation on fresh seeds."""

from __future__ import annotations

from pathlib import Path


def plot_success(history: list[dict], path: Path) -> None:
    """history: the metrics.jsonl rows of `vlablocks rl` -> a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in history], [m["success_rate"] for m in history], linewidth=1, label="rollouts (sampled)")
    evaluated = [m for m in history if "eval_success" in m]
    if evaluated:
        ax.plot([m["step"] for m in evaluated], [m["eval_success"] for m in evaluated], "o-", label="eval (greedy)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
