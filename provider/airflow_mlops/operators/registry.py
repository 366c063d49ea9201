"""Register a trained model in the MLflow registry and move its aliases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.assets import attach_outlet_extra
from airflow_mlops.links.mlflow import MlflowModelVersionLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.mlflow import MlflowHook


def evaluate_model(
    hook: MlflowHook, model_uri: str, data_path: str, features: list[str], label: str, metric: str
) -> float:
    """Score ``model_uri`` on a held-out Parquet file and return ``metric`` (from runtimes.metrics)."""
    import numpy as np
    import pandas as pd

    from airflow_mlops.runtimes import metrics

    df = pd.read_parquet(data_path, columns=[*features, label])
    model = hook.mlflow.pyfunc.load_model(model_uri)
    prob = np.asarray(model.predict(df[features].astype("float64"))).reshape(len(df), -1)[:, -1]
    return float(metrics.classification_metrics(df[label].to_numpy(), prob)[metric])


class MlflowRegisterModelOperator(MlopsBaseOperator):
    """
    Register the model of an MLflow run as a new version and point aliases at it.

    Idempotent: a retry finds the version it created from the same run and reuses it. The
    new version gets ``alias`` (``challenger``). With ``evaluation`` set, the challenger and
    the current ``champion_alias`` version are scored on the same held-out data and the
    champion alias moves to the challenger only when it is better (the first model becomes
    champion).

    :param run_id: the MLflow run holding the model (templated).
    :param model_name: registered model name (templated).
    :param artifact_path: the model's name within the run.
    :param alias: alias given to the new version.
    :param champion_alias: alias of the serving model, moved when the challenger wins.
    :param evaluation: ``{"data_path", "features", "label", "metric", "higher_is_better"}``
        (templated); None registers without promoting.
    :param version_tags: lineage tags on the version (templated): dataset version, DAG run...
    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    template_fields: Sequence[str] = ("run_id", "model_name", "evaluation", "version_tags")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#e6f5e9"

    def __init__(
        self,
        *,
        run_id: str,
        model_name: str,
        artifact_path: str = "model",
        alias: str = "challenger",
        champion_alias: str = "champion",
        evaluation: dict[str, Any] | None = None,
        version_tags: dict[str, Any] | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.model_name = model_name
        self.artifact_path = artifact_path
        self.alias = alias
        self.champion_alias = champion_alias
        self.evaluation = evaluation
        self.version_tags = version_tags or {}
        self.mlflow_conn_id = mlflow_conn_id

    def _register(self, hook: MlflowHook, context: Context) -> tuple[str, bool]:
        existing = hook.find_version_for_run(self.model_name, self.run_id)
        if existing is not None:
            self.log.info(
                "Run %s is already version %s of %s; reusing it",
                self.run_id,
                existing.version,
                self.model_name,
            )
            return str(existing.version), False
        tags = {
            "airflow.dag_id": context["ti"].dag_id,
            "airflow.run_id": context["ti"].run_id,
            **{k: str(v) for k, v in self.version_tags.items()},
        }
        mv = hook.mlflow.register_model(
            f"runs:/{self.run_id}/{self.artifact_path}", self.model_name, tags=tags
        )
        hook.wait_until_ready(self.model_name, mv.version)
        return str(mv.version), True

    def _champion_decision(self, hook: MlflowHook, version: str) -> dict[str, Any]:
        champion = hook.alias_version(self.model_name, self.champion_alias)
        if champion == version:
            return {"promote": False, "reason": f"version {version} is already {self.champion_alias}"}
        if self.evaluation is None:
            return {"promote": champion is None, "reason": "no evaluation configured"}
        ev = self.evaluation
        metric = ev.get("metric", "roc_auc")
        higher = ev.get("higher_is_better", metric != "log_loss")

        def score(v: str) -> float:
            uri = f"models:/{self.model_name}/{v}"
            return evaluate_model(hook, uri, ev["data_path"], ev["features"], ev["label"], metric)

        challenger_score = score(version)
        hook.client.set_model_version_tag(
            self.model_name, version, f"eval.{metric}", f"{challenger_score:.6f}"
        )
        if champion is None:
            return {"promote": True, "reason": "first model", metric: challenger_score}
        champion_score = score(champion)
        better = challenger_score > champion_score if higher else challenger_score < champion_score
        return {
            "promote": better,
            "reason": f"challenger {metric}={challenger_score:.4f} "
            f"vs champion v{champion} {champion_score:.4f}",
            metric: challenger_score,
            f"champion_{metric}": champion_score,
            "previous_champion": champion,
        }

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.mlflow import MlflowHook

        hook = MlflowHook(self.mlflow_conn_id)
        version, created = self._register(hook, context)
        hook.client.set_registered_model_alias(self.model_name, self.alias, version)
        decision = self._champion_decision(hook, version)
        if decision["promote"]:
            hook.client.set_registered_model_alias(self.model_name, self.champion_alias, version)
        self.log.info(
            "%s version %s: %s -> %s",
            self.model_name,
            version,
            decision["reason"],
            f"now {self.champion_alias}" if decision["promote"] else f"stays {self.alias}",
        )
        MlflowModelVersionLink.persist(context, hook.model_version_url(self.model_name, version))
        champion = hook.alias_version(self.model_name, self.champion_alias)
        attach_outlet_extra(
            context,
            self.outlets,
            {"name": self.model_name, "version": version, "champion": champion, "run_id": self.run_id},
        )
        return {
            "name": self.model_name,
            "version": version,
            "created": created,
            "aliases": sorted(hook.client.get_model_version(self.model_name, version).aliases),
            "champion_version": champion,
            "promoted": bool(decision["promote"]),
            "decision": decision,
        }
