"""Model-quality metrics with numpy only, so every runtime and Airflow compute them the same way.

Runs inside the runtime environments as well as in Airflow: imports nothing but numpy.
"""

from __future__ import annotations

import numpy as np


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(y_score, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true, y_prob, eps: float = 1e-7) -> float:
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(y_prob, dtype=float), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(y_true, y_prob, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(y_prob) >= threshold) == np.asarray(y_true, dtype=bool)))


def classification_metrics(y_true, y_prob) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(y_true, y_prob),
        "log_loss": log_loss(y_true, y_prob),
        "accuracy": accuracy(y_true, y_prob),
    }
