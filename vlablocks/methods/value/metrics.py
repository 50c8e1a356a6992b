"""How good a value model is: ROC AUC of values against 0/1 outcomes, and a calibration table and plot.

ROC AUC is the probability that a random positive outranks a random negative (ties count one half), the
Mann-Whitney U statistic normalized:

    AUC = (R_+ - n_+ (n_+ + 1) / 2) / (n_+ n_-)

with R_+ the sum of the positives' ranks among all scores (tied scores get their average rank).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """scores: [N] float, labels: [N] 0/1 -> ROC AUC; ValueError unless both classes occur."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"ROC AUC needs both outcomes; got {positives} successes and {negatives} failures")
    ranks = rankdata(scores)  # 1-based, tied scores share their average rank
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibration_table(values: np.ndarray, targets: np.ndarray, bins: int = 10) -> list[dict]:
    """Predicted values grouped into `bins` equal-width bins over their range -> per bin the mean prediction,
    the mean target (return) and the count (empty bins left out)."""
    values, targets = np.asarray(values, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    edges = np.linspace(values.min(), values.max() + 1e-12, bins + 1)
    which = np.clip(np.digitize(values, edges) - 1, 0, bins - 1)
    return [
        {"predicted": float(values[which == b].mean()), "observed": float(targets[which == b].mean()), "count": int(n)}
        for b in range(bins)
        if (n := int((which == b).sum())) > 0
    ]


def plot_calibration(path: Path, table: list[dict], first_values: np.ndarray, success: np.ndarray, auc: float) -> None:
    """Two panels: predicted vs observed return per value bin; first-frame values of successful vs failed episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    predicted = [row["predicted"] for row in table]
    left.plot(predicted, [row["observed"] for row in table], "o-", label="observed mean return")
    low, high = min(predicted), max(predicted)
    left.plot([low, high], [low, high], "k--", linewidth=0.8, label="perfect calibration")
    left.set(xlabel="predicted value", ylabel="Monte-Carlo return", title="calibration (all frames)")
    left.legend(fontsize=8)
    success = np.asarray(success, dtype=bool)
    edges = np.linspace(min(first_values.min(), 0.0), max(first_values.max(), 1.0), 30)
    right.hist(first_values[success], bins=edges, alpha=0.6, label=f"success ({success.sum()})")
    right.hist(first_values[~success], bins=edges, alpha=0.6, label=f"failure ({(~success).sum()})")
    right.set(xlabel="value of the first frame", ylabel="episodes", title=f"first frame vs outcome: AUC {auc:.3f}")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
