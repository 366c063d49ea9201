"""Where the MLOps view's data comes from: MLflow's REST API, the provider's files, Airflow's DB.

Everything here runs inside a request of Airflow's API server, so it stays light: MLflow is
read over its REST API with ``httpx`` (``import mlflow`` alone costs ~8 s), the files the
operators write are read as JSON, and DAG runs, XComs and asset events come from Airflow's
metadata database through the API server's own session (the server already holds it; a
request back to its own REST API would need a second credential and a second hop).

Each reader returns plain JSON-ready dicts and never raises for a missing or unreachable
source: the view shows what it can and says what it could not read (``errors``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from airflow_mlops.serving.state import DeploymentState

#: how many registered models / versions / dataset versions / XComs one request reads at most
MAX_MODELS = 50
MAX_VERSIONS = 50
MAX_DATASET_VERSIONS = 100
MAX_XCOMS = 2000
HEALTH_TIMEOUT_S = 1.0
#: seconds a Kubernetes API server has to answer a status read of the deployments list
KUBERNETES_TIMEOUT_S = 3.0
MLFLOW_TIMEOUT_S = 10.0


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int | float):  # MLflow's epoch milliseconds
        return datetime.fromtimestamp(value / 1000, UTC).isoformat()
    return str(value)


def dag_run_url(dag_id: str, run_id: str) -> str:
    """Path of a DAG run's page in Airflow's UI (same origin as the view)."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def drift_report_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Path of a task instance's drift report page served by the plugin (same origin as the view)."""
    from airflow_mlops.links.drift import drift_report_path as path

    return path(dag_id, run_id, task_id, map_index)


# --------------------------------------------------------------------------- MLflow (REST)


class MlflowRest:
    """
    A minimal MLflow REST client for read-only registry calls.

    :param tracking_uri: the tracking server, e.g. ``http://127.0.0.1:5000``.
    :param auth: ``(username, password)`` for basic auth, if the server needs it.
    :param token: a bearer token, if the server needs one instead.
    """

    def __init__(self, tracking_uri: str, auth: tuple[str, str] | None = None, token: str | None = None):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.auth = auth
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_connection(cls, conn_id: str = "mlflow_default") -> MlflowRest:
        """The client for an Airflow connection of type ``mlflow`` (host = tracking URI)."""
        from airflow.models.connection import Connection

        conn = Connection.get_connection_from_secrets(conn_id)
        host = (conn.host or "").rstrip("/")
        if not host:
            raise ValueError(f"Connection {conn_id!r} has no host: set it to the MLflow tracking URI.")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}{f':{conn.port}' if conn.port else ''}"
        if conn.login:
            return cls(host, auth=(conn.login, conn.password or ""))
        return cls(host, token=conn.password or None)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        import httpx

        response = httpx.get(
            f"{self.tracking_uri}/api/2.0/mlflow/{path}",
            params=params,
            auth=self.auth,
            headers=self.headers,
            timeout=MLFLOW_TIMEOUT_S,
        )
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        return response.json()

    def registered_models(self) -> list[dict[str, Any]]:
        return self.get("registered-models/search", max_results=MAX_MODELS).get("registered_models", [])

    def versions(self, name: str) -> list[dict[str, Any]]:
        from airflow_mlops.hooks.mlflow import filter_value

        found = self.get(
            "model-versions/search",
            filter=f"name={filter_value(name)}",
            max_results=MAX_VERSIONS,
            order_by="version_number DESC",
        ).get("model_versions", [])
        return sorted(found, key=lambda v: int(v["version"]), reverse=True)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.get("runs/get", run_id=run_id).get("run", {})

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, name: str, version: str) -> str:
        return f"{self.tracking_uri}/#/models/{quote(name, safe='')}/versions/{version}"


def _tags(entity: dict[str, Any]) -> dict[str, str]:
    tags = entity.get("tags") or []
    return {t["key"]: t.get("value", "") for t in tags} if isinstance(tags, list) else dict(tags)


def model_versions(client: MlflowRest, model: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The versions of one registered model (newest first) with their aliases and MLflow lineage.

    :param client: the MLflow client.
    :param model: the registered model as MLflow's REST API returns it.
    """
    aliases: dict[str, list[str]] = {}
    for alias in model.get("aliases") or []:
        aliases.setdefault(str(alias["version"]), []).append(alias["alias"])
    out = []
    for v in client.versions(model["name"]):
        tags = _tags(v)
        mlflow_run = client.run(v["run_id"]) if v.get("run_id") else {}
        info = mlflow_run.get("info", {})
        metrics = {m["key"]: m["value"] for m in mlflow_run.get("data", {}).get("metrics", []) or []}
        out.append(
            {
                "version": str(v["version"]),
                "aliases": sorted(aliases.get(str(v["version"]), [])),
                "status": v.get("status"),
                "created_at": _iso(v.get("creation_timestamp")),
                "mlflow_run_id": v.get("run_id"),
                "mlflow_run_url": client.run_url(info["experiment_id"], v["run_id"]) if info else None,
                "mlflow_version_url": client.version_url(model["name"], str(v["version"])),
                "dataset_version": tags.get("dataset_version"),
                "evaluation": {k[len("eval.") :]: val for k, val in tags.items() if k.startswith("eval.")},
                "metrics": metrics,
                "dag_id": tags.get("airflow.dag_id"),
                "dag_run_id": tags.get("airflow.run_id"),
                "dag_run": None,
                "validation": None,
            }
        )
    return out


def attach_lineage(
    versions: list[dict[str, Any]],
    dag_ids: set[str],
    runs: dict[tuple[str, str], dict[str, Any]],
    validations: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    """
    Give each version the DAG run that trained it and that run's validation results.

    :param versions: from :func:`model_versions`.
    :param dag_ids: the DAGs the caller may read; other DAGs' run ids are hidden.
    :param runs: DAG runs by ``(dag_id, run_id)`` (see :func:`dag_runs`).
    :param validations: validation summaries by ``(dag_id, run_id)`` (see :func:`validations_by_run`).
    """
    for v in versions:
        if v["dag_id"] not in dag_ids:
            v["dag_run_id"] = None
            continue
        key = (v["dag_id"], v["dag_run_id"])
        v["dag_run"] = runs.get(key)
        v["validation"] = validations.get(key) or None


# --------------------------------------------------------------------------- Airflow's DB


def _deserialize(row: Any) -> Any:
    from airflow.models.xcom import XComModel

    try:
        return XComModel.deserialize_value(row)
    except Exception:  # a value another serializer wrote: show nothing rather than fail
        return None


def xcoms(dag_ids: Iterable[str], key: str, limit: int = MAX_XCOMS) -> list[dict[str, Any]]:
    """The latest XCom values under ``key`` of the given DAGs, newest first."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_ids = list(dag_ids)
    if not dag_ids:
        return []
    with create_session() as session:
        rows = session.execute(
            select(XComModel)
            .where(XComModel.key == key, XComModel.dag_id.in_(dag_ids))
            .order_by(XComModel.timestamp.desc())
            .limit(limit)
        ).scalars()
        return [
            {
                "dag_id": r.dag_id,
                "run_id": r.run_id,
                "task_id": r.task_id,
                "map_index": r.map_index,
                "timestamp": _iso(r.timestamp),
                "value": _deserialize(r),
            }
            for r in rows
        ]


def dag_runs(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """State and UI link of the given ``(dag_id, run_id)`` runs that exist."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    keys = list(set(keys))
    if not keys:
        return {}
    with create_session() as session:
        rows = session.execute(select(DagRun).where(tuple_(DagRun.dag_id, DagRun.run_id).in_(keys))).scalars()
        return {(r.dag_id, r.run_id): _run_dict(r) for r in rows}


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "state": str(run.state) if run.state is not None else None,
        "run_type": str(run.run_type),
        "start_date": _iso(run.start_date),
        "end_date": _iso(run.end_date),
        "url": dag_run_url(run.dag_id, run.run_id),
    }


def validation_summary(xcom: dict[str, Any]) -> dict[str, Any] | None:
    """The parts of a GreatExpectationsValidateOperator summary (XCom ``validation``) the view shows."""
    value = xcom["value"]
    if not isinstance(value, dict) or "success" not in value:
        return None
    stats = value.get("statistics") or {}
    return {
        "dag_id": xcom["dag_id"],
        "run_id": xcom["run_id"],
        "task_id": xcom["task_id"],
        "success": bool(value["success"]),
        "suite": value.get("suite"),
        "evaluated": stats.get("evaluated_expectations"),
        "successful": stats.get("successful_expectations"),
        "failures": list(value.get("failures") or [])[:5],
        "data_path": value.get("data_path"),
        "rows": value.get("rows"),
        "quarantined_rows": value.get("quarantined_rows"),
        "data_docs_url": value.get("data_docs_url"),
    }


def validations(dag_ids: Iterable[str]) -> list[dict[str, Any]]:
    return [s for x in xcoms(dag_ids, "validation") if (s := validation_summary(x))]


def validations_by_run(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        by_run.setdefault((s["dag_id"], s["run_id"]), []).append(s)
    return by_run


def latest_task_instance(tasks: Iterable[tuple[str, str]]) -> dict[str, Any] | None:
    """The latest started try among the ``(dag_id, task_id)`` tasks: its state, run, start and end."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    tasks = list(set(tasks))
    if not tasks:
        return None
    with create_session() as session:
        ti = session.execute(
            select(TaskInstance)
            .where(tuple_(TaskInstance.dag_id, TaskInstance.task_id).in_(tasks))
            .order_by(TaskInstance.start_date.desc().nulls_last())
            .limit(1)
        ).scalar_one_or_none()
        if ti is None:
            return None
        return {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "try_number": ti.try_number,
            "state": str(ti.state) if ti.state is not None else None,
            "start_date": _iso(ti.start_date),
            "end_date": _iso(ti.end_date),
            "url": dag_run_url(ti.dag_id, ti.run_id),
        }


def task_outcome(dag_id: str, task_id: str) -> dict[str, Any] | None:
    """The latest try of ``task_id`` in ``dag_id``: its state, run and end."""
    return latest_task_instance([(dag_id, task_id)])


def triggered_runs(dag_id: str, run_id: str, report: str) -> list[dict[str, Any]]:
    """The DAG runs created by the asset events that the drift check ``report`` announced."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    with create_session() as session:
        events = session.execute(
            select(AssetEvent)
            .where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
            .options(selectinload(AssetEvent.created_dagruns))
        ).scalars()
        return [
            _run_dict(run)
            for event in events
            if (event.extra or {}).get("report") in (None, report)
            for run in event.created_dagruns
        ]


# --------------------------------------------------------------------------- serialized DAGs

#: the operators the page's buttons look for in the DAGs (by class name, as serialized)
REGISTER_OPERATOR = "MlflowRegisterModelOperator"
ROLLBACK_OPERATOR = "SeldonRollbackOperator"
#: the module of the operators that roll a deployment out (deploy, rollback, promote)
DEPLOY_MODULE = "airflow_mlops.operators.deploy"
#: the task attributes kept from the serialized DAG (only strings: a templated one stays a template)
_TASK_FIELDS = ("model_name", "deployment_name", "namespace")


def _plain(value: Any) -> Any:
    """A value of a serialized DAG without the serializer's ``{"__type", "__var"}`` envelopes."""
    if isinstance(value, dict):
        if "__type" in value and "__var" in value:
            kind, var = value["__type"], value["__var"]
            if kind == "datetime" and isinstance(var, int | float):
                return datetime.fromtimestamp(var, UTC).isoformat()
            return _plain(var)
        if value.get("__type") == "arg_not_set":
            return None
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dag_params(dag: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The DAG-level params of a serialized DAG, in their order, as Airflow's trigger form shows
    them: ``name``, ``default``, ``description`` and the JSON ``schema`` (``type``, ``enum``,
    ``values_display``, ``minimum``...).
    """
    raw = dag.get("params") or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out = []
    for name, param in pairs:
        if isinstance(param, dict) and "__class" in param:
            default, description, schema = param.get("default"), param.get("description"), param.get("schema")
        else:  # a bare value (old serialization): a param without schema
            default, description, schema = param, None, {}
        schema = _plain(schema)
        out.append(
            {
                "name": str(name),
                "default": _plain(default),
                "description": _plain(description) or (schema or {}).get("description_md"),
                "schema": schema if isinstance(schema, dict) else {},
            }
        )
    return out


def _task_summary(task: dict[str, Any]) -> dict[str, Any]:
    task = task.get("__var", task)
    summary = {
        "task_id": task.get("task_id"),
        "task_type": task.get("task_type") or task.get("_task_type"),
        "module": task.get("_task_module"),
    }
    for field in _TASK_FIELDS:
        if isinstance(task.get(field), str):
            summary[field] = task[field]
    return summary


def dag_catalog(dag_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """
    What the page needs of each given DAG, from its latest serialized version in Airflow's DB:
    ``dag_id``, ``is_paused``, ``params`` (:func:`dag_params`) and ``tasks`` (id, class name,
    module and the string arguments the buttons match on: ``model_name``, ``deployment_name``).

    DAGs whose file is gone (stale) are left out.
    """
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_ids = list(dag_ids)
    if not dag_ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        paused = dict(
            session.execute(
                select(DagModel.dag_id, DagModel.is_paused).where(
                    DagModel.dag_id.in_(dag_ids), DagModel.is_stale.is_(False)
                )
            ).all()
        )
        if not paused:
            return {}
        for row in SerializedDagModel.get_latest_serialized_dags(dag_ids=list(paused), session=session):
            try:
                out[row.dag_id] = catalog_entry(row.dag_id, row.data or {}, bool(paused.get(row.dag_id)))
            except Exception:  # a DAG serialized in a format this reader does not know: skip it
                continue
    return out


def catalog_entry(dag_id: str, data: dict[str, Any], is_paused: bool = False) -> dict[str, Any]:
    """One DAG of :func:`dag_catalog` from its serialized form (``{"dag": {...}}``)."""
    dag = data.get("dag") or {}
    return {
        "dag_id": dag_id,
        "is_paused": is_paused,
        "params": dag_params(dag),
        "tasks": [_task_summary(t) for t in dag.get("tasks") or [] if isinstance(t, dict)],
    }


def tasks_of(catalog: dict[str, dict[str, Any]], task_type: str, **fields: str) -> list[dict[str, Any]]:
    """The tasks of class ``task_type`` whose arguments equal ``fields``, with their ``dag_id``."""
    return [
        {**task, "dag_id": dag_id}
        for dag_id, dag in sorted(catalog.items())
        for task in dag["tasks"]
        if task.get("task_type") == task_type and all(task.get(k) == v for k, v in fields.items())
    ]


def deploy_tasks(catalog: dict[str, dict[str, Any]], deployment: str) -> list[dict[str, Any]]:
    """The deploy-family tasks (deploy, rollback, promote) that roll out ``deployment``."""
    return [
        {**task, "dag_id": dag_id}
        for dag_id, dag in catalog.items()
        for task in dag["tasks"]
        if task.get("module") == DEPLOY_MODULE and task.get("deployment_name") == deployment
    ]


def _target_dag(catalog: dict[str, dict[str, Any]], dag_id: str, why: str, **extra: Any) -> dict[str, Any]:
    dag = catalog[dag_id]
    return {
        "dag_id": dag_id,
        "is_paused": dag["is_paused"],
        "params": dag["params"],
        "why": why,
        "url": f"/dags/{quote(dag_id, safe='')}",
        **extra,
    }


def _configured(catalog: dict[str, dict[str, Any]], dag_id: str, setting: str) -> tuple[list, str | None]:
    if dag_id in catalog:
        return [_target_dag(catalog, dag_id, f"set by {setting}")], None
    return [], (
        f"DAG {dag_id!r} (set by {setting}) does not exist, is no longer in a DAG file, or you "
        "may not read it."
    )


def retrain_target(
    model: str,
    catalog: dict[str, dict[str, Any]],
    trained_champion: str | None = None,
    configured: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """
    The DAGs the *Retrain* button of ``model`` may trigger: ``{"dags", "default", "reason"}``.

    :param model: the registered model's name.
    :param catalog: the readable DAGs (:func:`dag_catalog`).
    :param trained_champion: the DAG that trained the champion (its ``airflow.dag_id`` tag): the
        default among several, and the only candidate when no DAG registers ``model`` by name.
    :param configured: ``(dag_id, setting)`` from ``[mlops] ui_retrain_dag_id`` or ``?retrain_dag=``:
        then that DAG only.
    """
    if configured:
        dags, reason = _configured(catalog, *configured)
    else:
        registering = tasks_of(catalog, REGISTER_OPERATOR, model_name=model)
        ids = sorted({t["dag_id"] for t in registering})
        dags = [
            _target_dag(
                catalog,
                d,
                f"registers {model} ({', '.join(t['task_id'] for t in registering if t['dag_id'] == d)})",
            )
            for d in ids
        ]
        if not dags and trained_champion in catalog:
            dags = [_target_dag(catalog, trained_champion, "trained the champion (its airflow.dag_id tag)")]
        reason = None
        if not dags:
            reason = (
                f"No DAG you may read registers {model!r}: add a DAG with "
                f"MlflowRegisterModelOperator(model_name={model!r}) (see docs/registry.md), or name the "
                "DAG in [mlops] ui_retrain_dag_id."
            )
    ids = [d["dag_id"] for d in dags]
    default = trained_champion if trained_champion in ids else (ids[0] if ids else None)
    return {"dags": dags, "default": default, "reason": reason}


def rollback_target(
    deployment: dict[str, Any],
    catalog: dict[str, dict[str, Any]],
    configured: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """
    What the *Roll back* button of one deployment triggers: the deployment (name, mode, version
    served, previous version, versions served before) with ``dags`` (the DAGs with a
    ``SeldonRollbackOperator`` whose ``deployment_name`` is this deployment), ``default`` and
    ``reason`` (why there is none).

    :param deployment: from :func:`deployments` or :func:`kubernetes_deployments`.
    :param configured: ``(dag_id, setting)`` from ``[mlops] ui_rollback_dag_id`` or ``?rollback_dag=``.
    """
    name = deployment["name"]
    if configured:
        dags, reason = _configured(catalog, *configured)
    else:
        tasks = tasks_of(catalog, ROLLBACK_OPERATOR, deployment_name=name)
        ids = sorted({t["dag_id"] for t in tasks})
        dags = [
            _target_dag(
                catalog,
                d,
                f"rolls back {name}",
                task_id=next(t["task_id"] for t in tasks if t["dag_id"] == d),
            )
            for d in ids
        ]
        reason = None
        if not dags:
            reason = (
                f"No DAG you may read rolls back {name!r}: add a DAG with "
                f"SeldonRollbackOperator(deployment_name={name!r}) (see docs/serving.md), or name the "
                "DAG in [mlops] ui_rollback_dag_id."
            )
    return {
        "deployment": name,
        "namespace": deployment.get("namespace"),
        "mode": deployment.get("mode"),
        "version": deployment.get("version"),
        "previous_version": deployment.get("previous_version"),
        "served_before": deployment.get("served_before") or [],
        "dags": dags,
        "default": dags[0]["dag_id"] if dags else None,
        "reason": reason,
    }


# --------------------------------------------------------------------------- files


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def endpoint_health(state: DeploymentState, processes: bool = True) -> str:
    """``healthy``, ``unhealthy`` (answers badly or not at all) or ``stopped`` (no process runs).

    :param processes: whether this host runs the deployment's processes (it can tell ``stopped``);
        a deployment published by another host is judged by its endpoint alone.
    """
    import httpx

    if processes and not state.any_alive():
        return "stopped"
    try:
        ok = httpx.get(f"{state.endpoint}/health/ping", timeout=HEALTH_TIMEOUT_S).is_success
    except httpx.HTTPError:
        ok = False
    return "healthy" if ok else "unhealthy"


def _deployment(state: DeploymentState, name: str, health: str | None, here: bool) -> dict[str, Any]:
    """What the MLOps page shows of a local deployment (``here``: its processes run on this host)."""
    main = state.main or {}
    traffic = [
        {"version": str(p.get("version")), "percent": p.get("traffic", 0)}
        | ({} if p.get("role") == "main" else {"role": p.get("role")})
        for p in state.predictors
    ]
    if state.shadow:
        traffic.append({"version": str(state.shadow.get("version")), "percent": 0, "role": "shadow"})
    return {
        "name": state.name or name,
        "namespace": None,
        "model_name": main.get("model_name"),
        "mode": "local",
        "version": state.version,
        "previous_version": state.previous_version,
        # what a rollback can go back to: the versions served before, newest first
        "served_before": state.served_before,
        "endpoint": state.endpoint,
        "health": health,
        "traffic": traffic,
        "started_at": _iso(datetime.fromtimestamp(main["started_at"], UTC))
        if main.get("started_at")
        else None,
        "last_rollout": None,
        # recorded by the deploy itself: a failed rollout leaves the old version serving
        "rollout_outcome": state.last_rollout,
        # each process (supervisor, router, every model server replica): live or dead, and how
        # often its supervisor restarted it; another host's are not seen from here
        "processes": state.health() if here else [],
        "restarts": state.restarts,
        "supervised": state.supervised if here else None,
        # the host serving it, for a deployment published by another host (serving/publish.py)
        "served_on": None if here else state.raw.get("served_on"),
    }


def deployments(data_dir: Path, health: bool = True) -> list[dict[str, Any]]:
    """
    The local Seldon deployments, read through :mod:`airflow_mlops.serving.state`; with an
    object-store ``[mlops] data_dir`` also those other hosts serve, as their supervisors publish
    them (:mod:`airflow_mlops.serving.publish`).

    :param health: ask each endpoint whether it answers (else ``health`` is None).
    """
    from airflow_mlops.serving.state import CorruptState, DeploymentStore, deployment_names

    out = []
    for name in deployment_names(data_dir):
        try:
            state = DeploymentStore.of(data_dir, name).read()
        except (OSError, CorruptState):
            continue
        if state is None or state.main is None:
            continue
        out.append(_deployment(state, name, endpoint_health(state) if health else None, here=True))
    here = {d["name"] for d in out}
    for name, state in published_deployments():
        if name not in here and state.main is not None:
            out.append(
                _deployment(state, name, endpoint_health(state, False) if health else None, here=False)
            )
    return out


def published_deployments() -> list[tuple[str, DeploymentState]]:
    """``(name, routing)`` of each deployment published to an object-store ``[mlops] data_dir``
    (none for a local one); unreadable records are left out."""
    from airflow_mlops import storage
    from airflow_mlops.serving.state import CURRENT, DeploymentState

    if not storage.data_root_is_remote():
        return []
    found = []
    for path in (storage.data_root() / "deployments").glob(f"*/{CURRENT}"):
        raw = _read_json(path)
        if raw:
            found.append((path.parent.name, DeploymentState(raw)))
    return sorted(found, key=lambda item: item[0])


def kubernetes_health(value: dict[str, Any]) -> tuple[str, str]:
    """``(health, message)`` of a SeldonDeployment from its live status on the cluster.

    ``healthy`` (Available), ``creating``, ``unhealthy`` (Failed), ``stopped`` (deleted) or
    ``unknown`` (the cluster did not answer: the message says why).
    """
    from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook
    from airflow_mlops.kubernetes.seldon import deployment_state

    conn_id = value.get("kubernetes_conn_id") or "kubernetes_default"
    hook = SeldonDeploymentHook(conn_id, value.get("namespace"))
    try:
        live = hook.get(value["deployment"], request_timeout=KUBERNETES_TIMEOUT_S)
    except Exception as err:  # any client or connection error: the page still lists the others
        return "unknown", f"the Kubernetes API did not answer: {type(err).__name__}: {str(err)[:200]}"
    if live is None:
        return "stopped", "the SeldonDeployment no longer exists"
    state, message = deployment_state(live)
    return {"Available": "healthy", "Failed": "unhealthy"}.get(state, "creating"), message


def _kubernetes_traffic(predictors: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The version the main predictor serves (most traffic) and the split, shaped like a local one's."""
    serving = [p for p in predictors if not p.get("shadow")]
    main = max(serving, key=lambda p: p.get("traffic", 0)) if serving else None
    out = []
    for p in predictors:
        share = {"version": str(p.get("version")), "percent": p.get("traffic", 0)}
        if p is not main:
            share["role"] = "shadow" if p.get("shadow") else "canary"
        out.append(share)
    return (str(main.get("version")) if main else None), out


def kubernetes_deployments(deploy_xcoms: list[dict[str, Any]], health: bool = True) -> list[dict[str, Any]]:
    """
    The SeldonDeployments rolled out on Kubernetes, from the deploy tasks' results (XComs, newest
    first: the newest of each deployment says what it serves), with their live status.

    :param health: read each object's status from its cluster (else ``health`` is None).
    """
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}
    models: dict[tuple[Any, ...], str] = {}
    for xcom in deploy_xcoms:
        value = xcom["value"]
        if not isinstance(value, dict) or value.get("mode") != "kubernetes" or not value.get("deployment"):
            continue
        key = (value.get("kubernetes_conn_id"), value.get("namespace"), value["deployment"])
        newest.setdefault(key, xcom)
        if value.get("model_name"):
            models.setdefault(key, value["model_name"])
    out = []
    for key, xcom in newest.items():
        value = xcom["value"]
        status, message = kubernetes_health(value) if health else (None, None)
        served, traffic = _kubernetes_traffic(value.get("predictors") or [])
        out.append(
            {
                "name": value["deployment"],
                "namespace": value.get("namespace"),
                "model_name": models.get(key),
                "mode": "kubernetes",
                "version": served or str(value.get("version")),
                "previous_version": value.get("previous_version"),
                "served_before": [str(value["previous_version"])] if value.get("previous_version") else [],
                "endpoint": value.get("endpoint"),
                "health": status,
                "health_message": message,
                "traffic": traffic,
                "started_at": xcom.get("timestamp"),
                "last_rollout": None,
                "rollout_outcome": None,
            }
        )
    return out


#: seconds of clock difference allowed between the task's start/end and the outcome's ``at``
OUTCOME_SLACK_S = 5.0


def outcome_of_run(rollout: dict[str, Any], outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """
    ``outcome`` (the deployment's ``last_rollout`` record) if the task try ``rollout`` wrote it.

    The record names the task try that wrote it (``made_by``); a record written before it did
    carries only its time (``at``) and belongs to the try when that time lies between the try's
    start and end (now while it runs). A try that failed before recording anything must not be
    shown with the previous rollout's outcome.
    """
    if not outcome:
        return None
    made_by = outcome.get("made_by")
    if made_by:
        keys = ("dag_id", "run_id", "task_id")
        same = all(made_by.get(k) == rollout.get(k) for k in keys)
        if same and rollout.get("try_number") is not None and made_by.get("try_number") is not None:
            same = int(made_by["try_number"]) == int(rollout["try_number"])
        return outcome if same else None
    if outcome.get("at") is None or not rollout.get("start_date"):
        return None
    start = datetime.fromisoformat(rollout["start_date"]).timestamp()
    end = datetime.fromisoformat(rollout["end_date"]).timestamp() if rollout.get("end_date") else None
    at = float(outcome["at"])
    if at < start - OUTCOME_SLACK_S or (end is not None and at > end + OUTCOME_SLACK_S):
        return None
    return outcome


def attach_rollouts(
    found: list[dict[str, Any]],
    deploy_xcoms: list[dict[str, Any]],
    catalog: dict[str, dict[str, Any]] | None = None,
) -> None:
    """
    Set each deployment's ``last_rollout``: the latest try of a task that rolls it out.

    Those tasks are the ones whose result names the deployment (XComs) and the deploy-family
    tasks of the readable DAGs whose ``deployment_name`` is the deployment (``catalog``, see
    :func:`dag_catalog`): a try that failed before returning anything counts too. The try gets
    the outcome the deployment recorded only when that try recorded it (:func:`outcome_of_run`).
    """
    for deployment in found:
        mine = [
            x
            for x in deploy_xcoms
            if isinstance(x["value"], dict)
            and x["value"].get("deployment") == deployment["name"]
            and x["value"].get("mode", "local") == deployment["mode"]
            and x["value"].get("namespace") == deployment.get("namespace")
        ]
        tasks = {(x["dag_id"], x["task_id"]) for x in mine}
        tasks |= {(t["dag_id"], t["task_id"]) for t in deploy_tasks(catalog or {}, deployment["name"])}
        outcome = latest_task_instance(tasks)
        if outcome is None:
            continue
        result = next(
            (
                x
                for x in mine
                if (x["dag_id"], x["run_id"], x["task_id"])
                == tuple(outcome[k] for k in ("dag_id", "run_id", "task_id"))
            ),
            None,
        )
        if result is not None:
            outcome["changed"] = result["value"].get("changed")
            outcome["version"] = result["value"].get("version")
        outcome["outcome"] = outcome_of_run(outcome, deployment.get("rollout_outcome"))
        deployment["last_rollout"] = outcome


def _min_p(report: dict[str, Any]) -> float | None:
    values = [f.get("p_val") for f in (report.get("features") or {}).values()]
    if report.get("prediction"):
        values.append(report["prediction"].get("p_val"))
    values = [v for v in values if v is not None]
    return min(values) if values else None


def _drift_point(report: dict[str, Any], path: Any) -> dict[str, Any]:
    """What the timeline shows of one drift report (a file, or an object of the store), whoever wrote it."""
    from airflow_mlops import storage

    return {
        "report": storage.location(path),
        "is_drift": bool(report.get("is_drift")),
        "drift_score": report.get("drift_score"),
        "min_p_value": _min_p(report),
        # the per-test cut-off after the multiple-test correction, else the significance level
        "threshold": report.get("effective_threshold") or report.get("threshold"),
        "p_val": report.get("threshold"),
        "correction": report.get("correction"),
        "drifted_features": report.get("drifted_features") or [],
        "n_reference": report.get("n_reference"),
        "n_current": report.get("n_current"),
        "checked_at": _iso(datetime.fromtimestamp(path.stat().st_mtime, UTC)),
        "triggered_runs": [],
    }


#: where ``DriftDetectOperator`` leaves its reports under ``drift/``: a task instance's folder
#: (:mod:`airflow_mlops.task_outputs`), or a run's (before task instances had their own)
DRIFT_REPORT_GLOBS = ("*/*/*/report.json", "*/*/*/map_index=*/report.json", "*/*/report.json")
#: the watchers' folder under ``drift/``: not a DAG's
WATCHERS = "watchers"


def drift_reports(data_root: Any, dag_ids: set[str]) -> list[dict[str, Any]]:
    """
    The drift checks of readable DAGs (``drift/<dag_id>/<run>/<task_id>[/map_index=<n>]/report.json``,
    written by ``DriftDetectOperator``; ``drift/<dag_id>/<run>/report.json`` by earlier versions),
    oldest first; :func:`attach_drift_runs` adds their task instances and runs.

    :param data_root: ``[mlops] data_dir`` as a path object (:func:`airflow_mlops.storage.data_root`):
        a folder, or a prefix of the object store.
    """
    from airflow_mlops import storage

    root = data_root / "drift"
    prefix = storage.location(root).rstrip("/") + "/"
    points = []
    for pattern in DRIFT_REPORT_GLOBS:
        for path in root.glob(pattern):
            # the key below drift/, the same for a folder and a store (whose paths have no relative_to)
            parts = PurePosixPath(storage.location(path).removeprefix(prefix)).parts
            dag_id = parts[0]
            if dag_id == WATCHERS or dag_id not in dag_ids:
                continue
            report = _read_json(path)
            if not report:
                continue
            points.append(
                _drift_point(report, path)
                | {"source": "check", "dag_id": dag_id, "window": None}
                | {"folder": PurePosixPath(*parts[1:-1]).as_posix()}
                | {"run_id": None, "task_id": None, "map_index": None}
                | {"deployment": None, "model_version": None}
            )
    return sorted(points, key=lambda p: p["checked_at"])


def _untested_point(path: Path, error: str | None) -> dict[str, Any]:
    """A timeline entry without a test: a window the watcher could not test, or its own problem."""
    return {
        "report": None,
        "error": error,
        "is_drift": None,
        "drift_score": None,
        "min_p_value": None,
        "threshold": None,
        "p_val": None,
        "correction": None,
        "drifted_features": [],
        "n_reference": None,
        "n_current": None,
        "checked_at": _iso(datetime.fromtimestamp(path.stat().st_mtime, UTC)),
        "triggered_runs": [],
    }


def _epoch_iso(value: Any) -> str | None:
    try:
        return _iso(datetime.fromtimestamp(float(value), UTC))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def watcher_windows(data_root: Any) -> list[dict[str, Any]]:
    """
    The windows of served traffic a ``DriftEventTrigger`` tested, oldest first
    (``drift/watchers/<deployment>/<window_id>/``: ``window.json`` beside the report), with the
    windows it could not test (``error`` instead of a report) and what each watcher has to say
    (``status.json``, see :func:`watcher_status_points`).

    :param data_root: ``[mlops] data_dir`` as a path object (a folder, or a prefix of the store
        to which the watchers publish their records).
    """
    points = []
    for meta_path in (data_root / "drift" / WATCHERS).glob("*/*/window.json"):
        meta = _read_json(meta_path)
        if not meta:
            continue
        deployment, window_id = meta_path.parent.parent.name, meta_path.parent.name
        if meta.get("error"):
            point = _untested_point(meta_path, str(meta["error"])) | {"report_url": None}
        else:
            report = _read_json(meta_path.parent / "report.json")
            if not report:
                continue
            point = _drift_point(report, meta_path.parent / "report.json")
            point["report_url"] = drift_window_path(deployment, window_id)
        point["checked_at"] = _epoch_iso(meta.get("tested_at")) or point["checked_at"]
        points.append(
            point
            | {"source": "watcher", "dag_id": None, "run_id": None, "task_id": None}
            | {"deployment": deployment, "model_name": meta.get("model_name")}
            | {"model_version": meta.get("model_version"), "window": meta.get("window")}
            | {"observed": meta.get("observed"), "rows": meta.get("rows"), "window_id": window_id}
            # tested during the watcher's cooldown: {"until", "state": held/fired/superseded/no drift}
            | {"cooldown": meta.get("cooldown") if isinstance(meta.get("cooldown"), dict) else None}
        )
    points += watcher_status_points(data_root)
    return sorted(points, key=lambda p: p["checked_at"])


def watcher_status_points(data_root: Any) -> list[dict[str, Any]]:
    """
    What each drift watcher reports about itself (``drift/watchers/<deployment>/status.json``),
    as one ``source: "watcher"``, ``kind: "status"`` entry per watcher that has something to say:
    ``error`` (why it cannot watch now: no such local deployment, an unreadable state...),
    ``unreadable_files`` / ``unreadable_file_count`` (inference-log files it skipped) and
    ``windows_not_tested`` (windows it could not test; each is an entry of its own), and
    ``held_window`` / ``cooldown_until`` (a drifted window seen during its cooldown, which fires
    when the cooldown ends) with ``windows_held``.
    """
    points = []
    for path in (data_root / "drift" / WATCHERS).glob("*/status.json"):
        status = _read_json(path)
        if not status:
            continue
        skipped = int(status.get("unreadable_file_count") or 0)
        held = status.get("held_window")
        if not status.get("error") and not skipped and not held:
            continue
        deployment = path.parent.name
        point = _untested_point(path, status.get("error"))
        point["checked_at"] = _epoch_iso(status.get("updated_at")) or point["checked_at"]
        points.append(
            point
            | {"source": "watcher", "kind": "status", "dag_id": None, "run_id": None, "task_id": None}
            | {"deployment": deployment, "model_name": None, "model_version": None, "window": None}
            | {"report_url": None, "error_since": _epoch_iso(status.get("error_since"))}
            | {"unreadable_files": status.get("unreadable_files") or [], "unreadable_file_count": skipped}
            | {"windows_not_tested": int(status.get("windows_not_tested") or 0)}
            | {"held_window": held, "windows_held": int(status.get("windows_held") or 0)}
            | {"cooldown_until": _epoch_iso(status.get("cooldown_until")) if held else None}
        )
    return points


def drift_window_path(deployment: str, window_id: str) -> str:
    """Path of the page of one watched window's report, served by the plugin."""
    return f"/mlops/drift-window/{quote(deployment, safe='')}/{quote(window_id, safe='')}"


def window_order(point: dict[str, Any]) -> tuple[str, str]:
    """Sort key of a drift point: the start of its window (data time), then when it was checked."""
    return (str((point.get("window") or {}).get("start") or point["checked_at"]), point["checked_at"])


def attach_drift_runs(points: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """Give each check its DAG run, window, endpoint and the retraining runs its drift event created."""
    by_report = {
        x["value"]["report"]: x for x in results if isinstance(x["value"], dict) and "report" in x["value"]
    }
    for point in points:
        xcom = by_report.get(point["report"])
        if xcom is None:
            continue
        value = xcom["value"]
        index = xcom.get("map_index")
        index = -1 if index is None else index
        point.update(run_id=xcom["run_id"], task_id=xcom["task_id"], window=value.get("window"))
        point.update(map_index=index, endpoint=value.get("endpoint"))
        point["run_url"] = dag_run_url(point["dag_id"], xcom["run_id"])
        point["report_url"] = drift_report_path(point["dag_id"], xcom["run_id"], xcom["task_id"], index)
        if point["is_drift"]:
            point["triggered_runs"] = triggered_runs(point["dag_id"], xcom["run_id"], point["report"])


def attach_watcher_runs(points: list[dict[str, Any]], dag_ids: set[str], limit: int = MAX_XCOMS) -> None:
    """
    Give each drifted window the DAG runs its watcher's asset event created (readable DAGs only).

    A watcher's event has no source task: the triggerer stores the trigger's payload as the
    event's extra (``{"from_trigger": true, "payload": {..., "report": ...}}``), and the report
    path names the window.
    """
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    wanted = {p["report"]: p for p in points if p["is_drift"]}
    if not wanted:
        return
    with create_session() as session:
        events = session.execute(
            select(AssetEvent)
            .where(AssetEvent.source_dag_id.is_(None))
            .order_by(AssetEvent.timestamp.desc())
            .limit(limit)
            .options(selectinload(AssetEvent.created_dagruns))
        ).scalars()
        for event in events:
            payload = (event.extra or {}).get("payload")
            point = wanted.get(payload.get("report")) if isinstance(payload, dict) else None
            if point is not None:
                runs = [_run_dict(r) for r in event.created_dagruns if r.dag_id in dag_ids]
                point["triggered_runs"] += runs


def drift_series(points: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Drift points grouped per model, each group in window order.

    A watched window names its deployment and model; a DAG's check is put with the model of the
    deployment whose endpoint it scored, else in a group of its own DAG. A deployment of a model
    URI (no registered name) is a group of its own.

    :param points: from :func:`drift_reports` and :func:`watcher_windows`.
    :param found: the deployments (:func:`deployments`).
    """
    by_endpoint = {d["endpoint"]: d for d in found if d.get("endpoint")}
    by_name = {d["name"]: d for d in found}
    groups: dict[str, dict[str, Any]] = {}
    for point in sorted(points, key=window_order):
        deployment = by_name.get(point.get("deployment")) or by_endpoint.get(point.get("endpoint"))
        if deployment and not point.get("deployment"):
            point["deployment"] = deployment["name"]
        model = point.get("model_name") or (deployment or {}).get("model_name")
        if model:
            key = f"model:{model}"
        elif point.get("deployment"):  # served from a model URI: no registered name
            key = f"deployment:{point['deployment']}"
        else:
            key = f"dag:{point['dag_id']}"
        group = groups.setdefault(
            key, {"key": key, "model": model, "deployments": [], "dag_ids": [], "points": []}
        )
        for field, value in (("deployments", point.get("deployment")), ("dag_ids", point["dag_id"])):
            if value and value not in group[field]:
                group[field].append(value)
        group["points"].append(point)
    return list(groups.values())


def _newest_first(version: dict[str, Any]) -> tuple[str, str, str]:
    return (
        str(version.get("interval_start") or ""),
        str(version.get("ingested_at") or ""),
        version["version"],
    )


def datasets(data_dir: Any, by_version: dict[str, dict[str, Any]], dag_ids: set[str]) -> list[dict[str, Any]]:
    """
    Every dataset under ``datasets/`` with its versions and their validation, the versions
    sorted by interval start, newest first (then by ingestion, newest first).

    A derived version (its manifest names the version it was ``derived_from``, e.g. the daily
    carrier statistics of a flights snapshot) gets ``derived_from``: that version's dataset,
    ingestion run and validation.

    :param data_dir: the provider's data root (:func:`airflow_mlops.storage.data_root`): a folder
        or an object store.
    :param by_version: validation summaries by the dataset version they checked.
    :param dag_ids: the DAGs the caller may read; the runs of others that ingested are hidden.
    """
    from airflow_mlops.datasets import list_snapshots

    root = data_dir / "datasets"
    out = []
    for folder in sorted((p for p in root.glob("*") if (p / "manifests").is_dir()), key=lambda p: p.name):
        manifests = list_snapshots(root, folder.name)[-MAX_DATASET_VERSIONS:]
        versions = [
            {
                "version": m["version"],
                "rows": m.get("rows"),
                "interval_start": m.get("interval_start"),
                "interval_end": m.get("interval_end"),
                "ingested_at": m.get("ingested_at"),
                "dag_id": m.get("dag_id") if m.get("dag_id") in dag_ids else None,
                "run_id": m.get("run_id") if m.get("dag_id") in dag_ids else None,
                "quarantined": m.get("quarantined"),
                "validation": by_version.get(m["version"]),
                "derived_from": m.get("derived_from"),
            }
            for m in manifests
        ]
        versions.sort(key=_newest_first, reverse=True)
        out.append({"name": folder.name, "versions": versions})
    known = {v["version"]: (d["name"], v) for d in out for v in d["versions"]}
    for d in out:
        for v in d["versions"]:
            source = v["derived_from"]
            if not source:
                continue
            name, origin = known.get(str(source), (None, {}))
            v["derived_from"] = {
                "dataset": name,
                "version": str(source),
                "interval_start": origin.get("interval_start"),
                "interval_end": origin.get("interval_end"),
                "dag_id": origin.get("dag_id"),
                "run_id": origin.get("run_id"),
                "validation": origin.get("validation"),
            }
    return out


def validations_by_dataset_version(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest validation of each dataset version (the snapshot file is ``<version>.parquet``)."""
    found: dict[str, dict[str, Any]] = {}
    for s in summaries:  # newest first
        if s.get("data_path"):
            found.setdefault(Path(s["data_path"]).stem, s)
    return found
