"""
Score registered model versions on held-out data: overall, per slice, challenger against champion.

What :class:`~airflow_mlops.operators.registry.ChampionChallengerGateOperator` and the simple
champion rule of :class:`~airflow_mlops.operators.registry.MlflowRegisterModelOperator` decide
on; the operators only orchestrate (which versions, what to record, where to branch).

* :class:`Evaluation` — how to score: a held-out Parquet file, its features and label, one metric;
* :func:`load_holdout` reads the rows once, so every model sees the same data;
* :func:`evaluate_version` scores one version, overall and for each value of each slice column;
* :func:`slice_regressions` lists the slices where the challenger loses to the champion;
* :func:`evaluate_against_champion` does all of it for a challenger and a champion.

Binary classification: the model's last output column is P(label = 1). The metrics are those of
``runtimes/metrics.py`` (numpy only), so training, this module and the drift runtime agree.
Nothing heavy at import time: pandas, numpy and MLflow are imported where they are used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from airflow_mlops.hooks.mlflow import MlflowHook

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "Comparison",
    "Evaluation",
    "Score",
    "SliceRegression",
    "VersionScores",
    "evaluate_against_champion",
    "evaluate_model",
    "evaluate_version",
    "load_holdout",
    "predict_probability",
    "score",
    "slice_regressions",
]

#: metrics of ``runtimes.metrics.classification_metrics``; the ones where lower is better
METRICS = ("roc_auc", "log_loss", "accuracy")
LOWER_IS_BETTER = frozenset({"log_loss"})


class Score(TypedDict):
    """A metric on some rows; ``value`` is None where it is undefined (``roc_auc`` of one class)."""

    value: float | None
    rows: int


class VersionScores(TypedDict):
    """One version's scores: overall, and ``slices[column][value]``."""

    version: str
    overall: Score
    slices: dict[str, dict[str, Score]]


class SliceRegression(TypedDict):
    """A slice where the challenger is worse than the champion by more than allowed."""

    slice: str
    value: str
    rows: int
    challenger: float
    champion: float
    regression: float


class Comparison(TypedDict):
    """:func:`evaluate_against_champion`'s result."""

    metric: str
    higher_is_better: bool
    data_path: str
    dataset_version: str | None
    rows: int
    challenger: VersionScores
    champion: VersionScores | None
    improvement: float | None
    beats_champion: bool
    slice_regressions: list[SliceRegression]


@dataclass(frozen=True)
class Evaluation:
    """
    How to score a model: a held-out Parquet file, its features and label, one metric.

    :param data_path: the held-out Parquet file.
    :param features: columns fed to the model, as float64, in this order.
    :param label: binary label column (1 = positive).
    :param metric: ``roc_auc``, ``log_loss`` or ``accuracy``.
    :param higher_is_better: default True except for ``log_loss``.
    :param dataset_version: version of the held-out data, recorded with the comparison.
    """

    data_path: str
    features: list[str]
    label: str
    metric: str = "roc_auc"
    higher_is_better: bool = True
    dataset_version: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], owner: str) -> Evaluation:
        """Validate an ``evaluation={...}`` argument; ``owner`` names the task in errors."""
        missing = [key for key in ("data_path", "features", "label") if not spec.get(key)]
        if missing:
            raise ValueError(f"{owner}: evaluation needs {missing}; got keys {sorted(spec)}.")
        metric = spec.get("metric", "roc_auc")
        if metric not in METRICS:
            raise ValueError(f"{owner}: evaluation metric {metric!r} is not one of {METRICS}.")
        higher = spec.get("higher_is_better")
        return cls(
            data_path=str(spec["data_path"]),
            features=list(spec["features"]),
            label=str(spec["label"]),
            metric=metric,
            higher_is_better=metric not in LOWER_IS_BETTER if higher is None else bool(higher),
            dataset_version=str(spec["dataset_version"]) if spec.get("dataset_version") else None,
        )

    def gain(self, challenger: float, champion: float) -> float:
        """How much better ``challenger`` is (negative: worse), whatever the metric's direction."""
        return challenger - champion if self.higher_is_better else champion - challenger


def load_holdout(evaluation: Evaluation, slices: Sequence[str] = ()) -> pd.DataFrame:
    """The held-out rows: features, label and slice columns, read once so every model sees the same data."""
    from airflow_mlops.datasets import load_parquet

    columns = list(dict.fromkeys([*evaluation.features, evaluation.label, *slices]))
    df = load_parquet(evaluation.data_path, columns=columns)  # a file, or an object-store URL
    if df.empty:
        raise ValueError(f"The held-out file {evaluation.data_path} has no rows: nothing to evaluate on.")
    return df


#: MLflow's advice to the author of a ``PythonModel`` whose ``predict`` has no type hints, given
#: each time such a model is loaded: not news for the task that loads it
_AUTHOR_ADVICE = "Add type hints to the `predict` method"


@contextmanager
def _author_advice_at_debug() -> Iterator[None]:
    """Log :data:`_AUTHOR_ADVICE` warnings at DEBUG, others as usual. (``mlflow.pyfunc.load_model``
    sets its own warning filters, so a filter set around it would not apply.)"""
    import logging
    import warnings

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UserWarning) and _AUTHOR_ADVICE in str(message):
            logging.getLogger("py.warnings").debug("%s", message)
            return
        shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def predict_probability(
    hook: MlflowHook, model_uri: str, df: pd.DataFrame, features: list[str]
) -> np.ndarray:
    """P(label = 1) per row: the last output column of the pyfunc model (binary classification)."""
    import numpy as np

    with _author_advice_at_debug():
        model = hook.mlflow.pyfunc.load_model(model_uri)
        predicted = model.predict(df[features].astype("float64"))
    return np.asarray(predicted).reshape(len(df), -1)[:, -1]


def score(y_true: Any, probability: Any, metric: str) -> float | None:
    """``metric`` of the predictions; None when undefined (``roc_auc`` of a one-class slice)."""
    import math

    from airflow_mlops.runtimes import metrics

    value = float(metrics.classification_metrics(y_true, probability)[metric])
    return None if math.isnan(value) else value


def evaluate_version(
    hook: MlflowHook,
    model_name: str,
    version: str,
    df: pd.DataFrame,
    evaluation: Evaluation,
    slices: Sequence[str] = (),
) -> VersionScores:
    """Score ``models:/<model_name>/<version>`` on ``df``: overall and for each value of each slice column."""
    probability = predict_probability(hook, f"models:/{model_name}/{version}", df, evaluation.features)
    y = df[evaluation.label].to_numpy()
    result: VersionScores = {
        "version": str(version),
        "overall": {"value": score(y, probability, evaluation.metric), "rows": len(df)},
        "slices": {},
    }
    for column in slices:
        groups = df.groupby(df[column].astype(str), sort=True).indices
        result["slices"][column] = {
            value: {"value": score(y[rows], probability[rows], evaluation.metric), "rows": len(rows)}
            for value, rows in groups.items()
        }
    return result


def evaluate_model(
    hook: MlflowHook, model_uri: str, data_path: str, features: list[str], label: str, metric: str
) -> float:
    """Score ``model_uri`` on a held-out Parquet file and return ``metric`` (NaN where undefined)."""
    evaluation = Evaluation(data_path=data_path, features=list(features), label=label, metric=metric)
    df = load_holdout(evaluation)
    value = score(df[label].to_numpy(), predict_probability(hook, model_uri, df, evaluation.features), metric)
    return float("nan") if value is None else value


def slice_regressions(
    evaluation: Evaluation,
    challenger: VersionScores,
    champion: VersionScores,
    max_regression: float,
    min_rows: int,
) -> list[SliceRegression]:
    """
    The slices where the challenger is worse than the champion by more than ``max_regression``,
    worst first.

    Only slices with at least ``min_rows`` held-out rows and a defined metric are judged: a
    metric on a handful of rows is noise.
    """
    found: list[SliceRegression] = []
    for column, values in challenger["slices"].items():
        for value, ours in values.items():
            theirs = champion["slices"].get(column, {}).get(value)
            if theirs is None or ours["rows"] < min_rows:
                continue
            if ours["value"] is None or theirs["value"] is None:
                continue
            regression = -evaluation.gain(ours["value"], theirs["value"])
            if regression > max_regression:
                found.append(
                    {
                        "slice": column,
                        "value": value,
                        "rows": ours["rows"],
                        "challenger": ours["value"],
                        "champion": theirs["value"],
                        "regression": regression,
                    }
                )
    return sorted(found, key=lambda r: -r["regression"])


def evaluate_against_champion(
    hook: MlflowHook,
    model_name: str,
    challenger: str,
    champion: str | None,
    evaluation: Evaluation,
    *,
    slices: Sequence[str] = (),
    min_improvement: float = 0.0,
    max_slice_regression: float | None = None,
    min_slice_rows: int = 200,
) -> Comparison:
    """
    Score the challenger (and the champion, when there is one) on the **same** held-out rows and compare.

    The challenger beats the champion when its overall metric is better by more than
    ``min_improvement``; with ``max_slice_regression`` set, the slices where it is worse by
    more than that are listed. The challenger's score is also tagged ``eval.<metric>`` on
    its version.

    :return: ``champion`` and ``improvement`` are None (and ``beats_champion`` True) without a
        champion.
    """
    df = load_holdout(evaluation, slices)
    ours = evaluate_version(hook, model_name, challenger, df, evaluation, slices)
    metric = evaluation.metric
    if ours["overall"]["value"] is not None:
        hook.set_version_tags(model_name, challenger, {f"eval.{metric}": f"{ours['overall']['value']:.6f}"})
    result: Comparison = {
        "metric": metric,
        "higher_is_better": evaluation.higher_is_better,
        "data_path": evaluation.data_path,
        "dataset_version": evaluation.dataset_version,
        "rows": len(df),
        "challenger": ours,
        "champion": None,
        "improvement": None,
        "beats_champion": True,
        "slice_regressions": [],
    }
    if champion is None:
        return result
    theirs = evaluate_version(hook, model_name, champion, df, evaluation, slices)
    if ours["overall"]["value"] is None or theirs["overall"]["value"] is None:
        raise ValueError(
            f"{metric} is undefined on {evaluation.data_path} (one class only?): "
            "evaluate on a held-out set holding both labels."
        )
    improvement = evaluation.gain(ours["overall"]["value"], theirs["overall"]["value"])
    result.update(champion=theirs, improvement=improvement, beats_champion=improvement > min_improvement)
    if max_slice_regression is not None:
        result["slice_regressions"] = slice_regressions(
            evaluation, ours, theirs, max_slice_regression, min_slice_rows
        )
    return result
