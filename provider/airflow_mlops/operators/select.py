"""Pick the best of several MLflow runs (the end of a hyperparameter search)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.links.mlflow import MlflowParentRunLink, MlflowRunLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.mlflow import MlflowHook

#: tag written on the winning run: which DAG run it won
BEST_OF_TAG = "best_of"


class SelectBestRunOperator(MlopsBaseOperator):
    """
    Read ``metric`` of each candidate MLflow run and return the best one.

    Meant after a mapped ``HorovodTrainOperator`` (a hyperparameter search)::

        train = HorovodTrainOperator.partial(task_id="train", ...).expand(
            hyperparameters=param_grid({"lr": [1e-3, 3e-3], "hidden": [16, 32]})
        )
        best = SelectBestRunOperator(task_id="best", runs=train.output, metric="holdout_roc_auc")
        register = MlflowRegisterModelOperator(task_id="register", run_id=best.output["run_id"], ...)

    The metric is read from MLflow (its latest value), not from the training tasks' XCom, so
    runs from anywhere can compete. Runs that are not FINISHED or lack the metric (or have a NaN)
    are left out, with a warning. The winner is tagged ``best_of=<dag_id>/<run_id>`` (and
    ``best_of.metric``); the result is shaped like a training result, plus the ranking.

    :param metric: the metric to compare, e.g. ``holdout_roc_auc`` (templated).
    :param mode: ``max`` (higher is better) or ``min`` (e.g. a loss).
    :param run_ids: MLflow run ids (templated).
    :param runs: training results: dicts with a ``run_id`` key, e.g. ``train.output`` of a mapped
        ``HorovodTrainOperator`` (templated). ``run_ids`` and ``runs`` may be combined.
    :param tag_best: write the ``best_of`` tags on the winning run.
    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    template_fields: Sequence[str] = ("metric", "run_ids", "runs")
    operator_extra_links = (MlflowRunLink(), MlflowParentRunLink())
    ui_color = "#fff4d6"

    def __init__(
        self,
        *,
        metric: str,
        mode: str = "max",
        run_ids: Sequence[str] | None = None,
        runs: Sequence[dict[str, Any]] | None = None,
        tag_best: bool = True,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("max", "min"):
            raise ValueError(f"{self.task_id}: mode must be 'max' or 'min', got {mode!r}.")
        if run_ids is None and runs is None:
            raise ValueError(f"{self.task_id}: give run_ids, runs (e.g. train.output), or both.")
        self.metric = metric
        self.mode = mode
        self.run_ids = run_ids
        self.runs = runs
        self.tag_best = tag_best
        self.mlflow_conn_id = mlflow_conn_id

    def candidate_ids(self) -> list[str]:
        """The run ids to compare, in the order given, without duplicates."""
        ids = [str(r) for r in _iterate(self.run_ids, "run_ids")]
        for item in _iterate(self.runs, "runs"):
            if item is None:  # a mapped instance that returned nothing (e.g. skipped)
                continue
            if isinstance(item, str):
                ids.append(item)
            elif isinstance(item, dict) and item.get("run_id"):
                ids.append(str(item["run_id"]))
            else:
                raise TypeError(
                    f"{self.task_id}: each item of runs must be a training result with a 'run_id' key "
                    f"(or a run id); got {item!r}."
                )
        return list(dict.fromkeys(ids))

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.mlflow import MlflowHook

        ids = self.candidate_ids()
        if not ids:
            raise ValueError(f"{self.task_id}: no candidate runs (run_ids and runs are empty).")
        hook = MlflowHook(self.mlflow_conn_id)
        left_out: list[str] = []  # logged after the summary line
        ranking = self._score(hook, ids, left_out)
        if not ranking:
            raise ValueError(
                f"{self.task_id}: none of the {len(ids)} runs is FINISHED with a value for metric "
                f"{self.metric!r}; check the metric name against the runs' metrics in MLflow. "
                + " ".join(left_out)
            )
        ranking.sort(key=lambda item: item[1], reverse=self.mode == "max")  # stable: ties keep order
        best, value = ranking[0]
        if self.tag_best:
            ti = context["ti"]
            hook.client.set_tag(best.info.run_id, BEST_OF_TAG, f"{ti.dag_id}/{ti.run_id}")
            hook.client.set_tag(best.info.run_id, f"{BEST_OF_TAG}.metric", f"{self.mode} {self.metric}")
        url = hook.run_url(best.info.run_id, best.info.experiment_id)
        MlflowRunLink.persist(context, url)
        # the first line of the task's log: what was picked, by which number
        self.log.info(
            "Selected run %s: best of %d run(s) by %s %s = %s",
            best.info.run_id,
            len(ranking),
            self.mode,
            self.metric,
            value,
        )
        for note in left_out:
            self.log.warning(note)
        self.log.info("MLflow run: %s", url)
        parent, record = self._record(hook, context, best, value, ranking, left_out)
        self.log.info("Selection recorded in MLflow run %s (DAG run's parent run %s)", record, parent)
        return {
            "run_id": best.info.run_id,
            "experiment_id": best.info.experiment_id,
            "model_uri": f"runs:/{best.info.run_id}/model",
            "artifact_path": "model",
            "metric": self.metric,
            "mode": self.mode,
            "value": value,
            "metrics": dict(best.data.metrics),
            "params": dict(best.data.params),
            "ranking": [{"run_id": run.info.run_id, "value": v} for run, v in ranking],
            "parent_run_id": parent,
            "mlflow_run_id": record,
        }

    def _record(
        self,
        hook: MlflowHook,
        context: Context,
        best: Any,
        value: float,
        ranking: list[tuple[Any, float]],
        left_out: list[str],
    ) -> tuple[str, str]:
        """The choice as this task's run in the DAG run's tree (the winner's experiment):
        ``(parent run id, this task's run id)``."""
        from airflow_mlops.runtimes.run_tree import TaskRef, task_run_name

        task = TaskRef.from_ti(context["ti"])
        experiment_id = best.info.experiment_id
        parent = hook.dag_run_parent(experiment_id, task)
        MlflowParentRunLink.persist(context, hook.run_url(parent, experiment_id))
        record = hook.log_record_run(
            experiment_id,
            task_run_name(task.task_id, task.run_id, task.map_index),
            metrics={self.metric: value, "candidates": float(len(ranking))},
            tags={
                "mlops.kind": "select_best",
                "selected_run_id": best.info.run_id,
                "metric": self.metric,
                "mode": self.mode,
            },
            record={
                "selected_run_id": best.info.run_id,
                "metric": self.metric,
                "mode": self.mode,
                "value": value,
                "ranking": [{"run_id": run.info.run_id, "value": v} for run, v in ranking],
                "left_out": left_out,
            },
            artifact_file="selection.json",
            task=task,
            parent_run_id=parent,
        )
        return parent, record

    def _score(self, hook: MlflowHook, ids: list[str], left_out: list[str]) -> list[tuple[Any, float]]:
        """(run, metric value) of every usable candidate; why the others are left out goes to ``left_out``."""
        scored = []
        for run_id in ids:
            run = hook.client.get_run(run_id)
            value = run.data.metrics.get(self.metric)
            if run.info.status != "FINISHED":
                left_out.append(f"Left out run {run_id}: it is {run.info.status}, not FINISHED.")
            elif value is None or math.isnan(value):
                left_out.append(
                    f"Left out run {run_id}: no value for {self.metric!r} "
                    f"(it has {sorted(run.data.metrics)})."
                )
            else:
                scored.append((run, float(value)))
        return scored

    # --- OpenLineage ------------------------------------------------------------------------

    def openlineage(self, stage: str) -> Any:
        """Every candidate run's model in; the winner's model out (with its metrics): what gets registered."""
        from airflow_mlops import lineage

        tracking, _ = lineage.mlflow_uris(self.mlflow_conn_id)
        try:
            candidates = self.candidate_ids()
        except TypeError:
            candidates = []
        inputs = [lineage.input_dataset(lineage.run_model_dataset(tracking, run_id)) for run_id in candidates]
        result = self._lineage_result if stage == "complete" else None
        outputs = [lineage.run_model_output(self.mlflow_conn_id, result)] if result else []
        return lineage.operator_lineage(inputs, outputs)


def _iterate(value: Any, name: str) -> Iterable[Any]:
    """A rendered ``run_ids``/``runs``: None, one item, or any iterable (a mapped task's lazy XCom)."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list, got {type(value).__name__}: {value!r}") from None
