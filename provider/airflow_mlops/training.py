"""Helpers for training DAGs: hyperparameter search spaces and checkpoint keys.

Pure Python and cheap to import: ``param_grid`` and ``random_samples`` run when the DAG file is
parsed, to build the list that ``HorovodTrainOperator.partial(...).expand(hyperparameters=...)``
maps over (one task instance, one MLflow run, per entry)::

    train = HorovodTrainOperator.partial(task_id="train", training_script=..., inputs=...).expand(
        hyperparameters=param_grid({"lr": [1e-3, 3e-3], "hidden": [16, 32], "epochs": [4]})
    )
    best = SelectBestRunOperator(task_id="best", runs=train.output, metric="holdout_roc_auc")
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IntUniform", "LogUniform", "Uniform", "checkpoint_key", "param_grid", "random_samples"]


def _choices(name: str, values: Any) -> list[Any]:
    """The candidate values of one parameter: a list/tuple as is, anything else as a fixed value."""
    if isinstance(values, (list, tuple)):
        if not values:
            raise ValueError(f"Parameter {name!r} has an empty list of values: give at least one value.")
        return list(values)
    return [values]


def param_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    Every combination of the values of ``grid`` (a Cartesian product), in a stable order.

    :param grid: parameter name -> list of values; a value that is not a list or tuple is fixed
        (the same in every combination), e.g. ``{"lr": [1e-3, 1e-2], "hidden": [16, 32], "epochs": 5}``.
    :return: one dict per combination, the last parameter varying fastest.
    :raises ValueError: when a parameter has an empty list.
    """
    names = list(grid)
    choices = [_choices(name, grid[name]) for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform needs low <= high, got {self.low} > {self.high}.")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform:
    """A float whose logarithm is uniform on ``[log(low), log(high)]`` (learning rates, decays)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"LogUniform needs 0 < low <= high, got low={self.low}, high={self.high}.")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform:
    """An integer drawn uniformly from ``low..high``, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"IntUniform needs low <= high, got {self.low} > {self.high}.")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


def _draw(name: str, spec: Any, rng: random.Random) -> Any:
    if isinstance(spec, (Uniform, LogUniform, IntUniform)):
        return spec.sample(rng)
    return rng.choice(_choices(name, spec))


def random_samples(space: Mapping[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """
    ``n`` random points of ``space``, the same ones for the same ``seed`` (so a DAG parses stably).

    :param space: parameter name -> a list of values (one is chosen uniformly), a ``Uniform``,
        ``LogUniform`` or ``IntUniform`` distribution, or a fixed value.
    :param n: number of samples (>= 1).
    :param seed: seed of the generator; the samples must not change between two parses of the
        DAG file, or the mapped task instances would change under a running DAG run.
    :return: ``n`` dicts, JSON-serialisable when the values are.
    """
    if n < 1:
        raise ValueError(f"random_samples needs n >= 1, got {n}.")
    rng = random.Random(seed)
    names = sorted(space)  # a stable draw order whatever the dict's insertion order
    return [{name: _draw(name, space[name], rng) for name in names} for _ in range(n)]


def checkpoint_key(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """
    The checkpoint key of a task instance: the same for every try of it, different otherwise.

    The try number is left out on purpose: a retry finds the checkpoints of the try it replaces.
    """
    raw = "\x1f".join((dag_id, run_id, task_id, str(map_index)))
    return hashlib.sha256(raw.encode()).hexdigest()[:24]
