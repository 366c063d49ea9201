"""The MLOps view of the Airflow UI: one plugin, one FastAPI app mounted at ``/mlops``.

* ``GET /mlops/`` — the page (plain HTML + a small script, no build step), shown in Airflow's
  navigation as **MLOps** through an ``external_views`` entry;
* ``GET /mlops/api/models`` — registered models, versions, aliases and lineage;
* ``GET /mlops/api/deployments`` — deployments: endpoint, version, health, traffic, last rollout;
* ``GET /mlops/api/drift`` — drift per model: watched windows of served traffic and DAG checks,
  with the retraining runs they caused;
* ``GET /mlops/api/datasets`` — dataset versions with row counts and validation status;
* ``GET /mlops/data-docs/...`` — stored Great Expectations Data Docs (:mod:`.data_docs`);
* ``GET /mlops/drift-report/<dag_id>/<run_id>/<task_id>`` — a drift check's report page, and
  ``GET /mlops/drift-window/<deployment>/<window_id>`` — a watched window's (:mod:`.drift_report`).

Every route needs Airflow's authentication (401 without credentials, 403 with a bad token or
without read access to DAG runs; the HTML pages send a browser without a session to Airflow's
login page instead). Each answer holds only what DAGs the caller may read made
(:class:`~.auth.DagScope`): model versions trained by them (``airflow.dag_id`` tag; a model
without such a version is left out), deployments they rolled out (:func:`~.auth.deployers`),
their drift checks and the watched windows of those deployments, the dataset versions they
ingested (and the versions derived from those); a caller who may read every DAG also sees what
no DAG is known to have made. DAG-run details only name DAGs the caller may read.
The page triggers retrain / rollback DAG runs through Airflow's own REST API
(``POST /api/v2/dags/{dag_id}/dagRuns``) from the browser, with the UI's session cookie, so
Airflow's permission checks and audit log apply to the write as to any other trigger.

Which DAGs the buttons trigger is read from the serialized DAGs in Airflow's DB: *Retrain* the
DAGs with an ``MlflowRegisterModelOperator`` of the model (default: the one that trained the
champion), *Roll back* the DAGs with a ``SeldonRollbackOperator`` of a deployment serving it;
the page shows each DAG's params as Airflow's trigger form does and sends them as ``conf``.

Configuration (``[mlops]`` section, all optional): ``ui_mlflow_conn_id`` (``mlflow_default``),
``ui_retrain_dag_id`` and ``ui_rollback_dag_id`` (override the DAGs found). The page also takes
``?retrain_dag=`` / ``?rollback_dag=``.

Only light imports at module level: plugins are loaded by every Airflow process, and the
readers of :mod:`.sources` import what they need inside the request.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import HTMLResponse, Response

from airflow_mlops.links.great_expectations import URL_PREFIX
from airflow_mlops.plugins import data_docs, drift_report
from airflow_mlops.plugins.auth import (
    DagScope,
    LoginRequired,
    current_user,
    dag_scope,
    deployers,
    page_user,
    readable_dag_ids,
    redirect_to_login,
)

PAGE_ROUTE = "/"
API_ROUTE = "/api"
_DAG_ID = re.compile(r"[A-Za-z0-9_.~:+-]{1,250}")

User = Annotated[Any, Depends(current_user)]
#: the caller of an HTML page: a browser without a session is sent to Airflow's login page
PageUser = Annotated[Any, Depends(page_user)]
RetrainDag = Annotated[str | None, Query(description="DAG triggered by the Retrain button")]
RollbackDag = Annotated[str | None, Query(description="DAG triggered by the Roll back button")]
router = APIRouter()


def _conf(key: str, default: str = "") -> str:
    from airflow.configuration import conf

    return conf.get("mlops", key, fallback=default) or default


def _data_dir():
    from airflow_mlops import settings

    return settings.data_dir()


def _dag_id_param(value: str | None, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not _DAG_ID.fullmatch(value):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{what} {value!r} is not a valid DAG id.")
    return value


def _airflow_base_path() -> str:
    """The path Airflow is served under (from ``[api] base_url``), e.g. ``""`` or ``/airflow``."""
    from urllib.parse import urlparse

    return urlparse(_conf_api_base_url()).path.rstrip("/")


def _conf_api_base_url() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="") or ""


# --------------------------------------------------------------------------- page


def render_page(config: dict[str, Any]) -> str:
    """The page with its configuration embedded as JSON (``<`` escaped: it sits in a script tag)."""
    template = resources.files("airflow_mlops.plugins").joinpath("static/mlops.html").read_text()
    return template.replace("__MLOPS_CONFIG__", json.dumps(config).replace("<", "\\u003c"))


@router.get(PAGE_ROUTE, response_class=HTMLResponse, name="mlops_page")
def page(user: PageUser, retrain_dag: RetrainDag = None, rollback_dag: RollbackDag = None) -> HTMLResponse:
    """The MLOps page: models, deployments, drift and datasets (data loaded from ``api/...``)."""
    readable_dag_ids(user)
    config = {
        "airflow_base": _airflow_base_path(),
        "retrain_dag": _dag_id_param(retrain_dag, "retrain_dag") or _conf("ui_retrain_dag_id") or None,
        "rollback_dag": _dag_id_param(rollback_dag, "rollback_dag") or _conf("ui_rollback_dag_id") or None,
    }
    # the page's own data changes with every run: never serve it from a cache
    return HTMLResponse(render_page(config), headers={"Cache-Control": "no-store"})


@router.get("/static/icon.svg", name="mlops_icon")
def icon(user: User) -> Response:
    svg = resources.files("airflow_mlops.plugins").joinpath("static/icon.svg").read_bytes()
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})


# --------------------------------------------------------------------------- JSON API


def _read_registry(conn_id: str) -> tuple[Any, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """The MLflow client of ``conn_id`` and every registered model with its versions; 502 on failure."""
    import httpx
    from airflow.exceptions import AirflowNotFoundException

    from airflow_mlops.plugins import sources

    try:
        client = sources.MlflowRest.from_connection(conn_id)
    except (AirflowNotFoundException, ValueError) as err:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail=f"No usable MLflow connection {conn_id!r} ({err}); create it (host = the tracking "
            "URI) or name another one in [mlops] ui_mlflow_conn_id.",
        ) from err
    try:
        return client, [(m, sources.model_versions(client, m)) for m in client.registered_models()]
    except httpx.HTTPError as err:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail=f"Could not read the MLflow registry at {client.tracking_uri} (connection {conn_id!r}): "
            f"{err}. Check that the tracking server is up and reachable from the API server.",
        ) from err


def _configured_dag(query: str | None, name: str, setting: str) -> tuple[str, str] | None:
    """``(dag_id, where it was set)`` of a button's DAG named by the page's query or the config."""
    if value := _dag_id_param(query, name):
        return value, f"?{name}="
    if value := _conf(setting):
        return value, f"[mlops] {setting}"
    return None


def _all_deployments(
    scope: DagScope, health: bool, catalog: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The local and Kubernetes deployments the caller may see (:func:`visible_deployments`), and
    the deploy results (XComs of the readable DAGs) they were read from.
    """
    from airflow_mlops.plugins import sources

    results = sources.xcoms(scope.dag_ids, "return_value")
    found = [
        *sources.deployments(_data_dir(), health=health),
        *sources.kubernetes_deployments(results, health=health),
    ]
    return visible_deployments(found, scope, results, catalog), results


def visible_deployments(
    found: list[dict[str, Any]],
    scope: DagScope,
    results: list[dict[str, Any]],
    catalog: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """
    The deployments of ``found`` a readable DAG rolled out (all of them for a caller who reads
    every DAG).

    :param results: XComs ``return_value`` of the readable DAGs; ``catalog``: the readable DAGs.
    """
    return [d for d in found if scope.every_dag or scope.shows(deployers(d, results, catalog))]


def hide_other_rollouts(found: list[dict[str, Any]], scope: DagScope) -> None:
    """Leave out the task try (``made_by``) of a last rollout a DAG the caller may not read made."""
    for deployment in found:
        outcome = deployment.get("rollout_outcome")
        if isinstance(outcome, dict) and not scope.reads((outcome.get("made_by") or {}).get("dag_id")):
            deployment["rollout_outcome"] = {k: v for k, v in outcome.items() if k != "made_by"}


def visible_versions(versions: list[dict[str, Any]], scope: DagScope) -> list[dict[str, Any]]:
    """The model versions trained by a readable DAG (their ``airflow.dag_id`` tag)."""
    return [v for v in versions if scope.shows([v["dag_id"]] if v.get("dag_id") else [])]


class _EveryDag(frozenset):
    """``dag_ids`` for a reader that masks nothing (the caller filters its answer itself)."""

    def __contains__(self, item: object) -> bool:
        return True


def visible_datasets(datasets: list[dict[str, Any]], scope: DagScope) -> list[dict[str, Any]]:
    """
    The dataset versions a readable DAG ingested, and those derived from a shown version
    (``derived_from``), from ``sources.datasets`` read unmasked; the ingestion runs of other DAGs
    are hidden, and so is the source of a derived version the caller may not see. A dataset
    without a shown version is left out.
    """
    known = {v["version"]: v for d in datasets for v in d["versions"]}
    shown: dict[str, bool] = {}

    def visible(version: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
        key = version["version"]
        if key not in shown:
            source = version.get("derived_from") or {}
            origin = known.get(str(source.get("version"))) if source else None
            shown[key] = scope.shows([version.get("dag_id")] if version.get("dag_id") else []) or (
                origin is not None and key not in seen and visible(origin, seen | {key})
            )
        return shown[key]

    out = []
    for dataset in datasets:
        versions = [v for v in dataset["versions"] if visible(v)]
        for v in versions:
            if not scope.reads(v.get("dag_id")):
                v["dag_id"] = v["run_id"] = None
            source = v.get("derived_from")
            if isinstance(source, dict):
                origin = known.get(str(source.get("version")))
                if origin is None or not visible(origin):
                    v["derived_from"] = {**dict.fromkeys(source), "version": source.get("version")}
                elif not scope.reads(source.get("dag_id")):
                    source["dag_id"] = source["run_id"] = None
        if versions:
            out.append({**dataset, "versions": versions})
    return out


@router.get(API_ROUTE + "/models", name="mlops_models")
def models(user: User, retrain_dag: RetrainDag = None, rollback_dag: RollbackDag = None) -> dict[str, Any]:
    """
    Registered models with their versions, aliases and lineage (DAG run, dataset, validation),
    and what the page's buttons trigger: ``retrain`` (the DAGs that register the model, with
    their params) and ``rollbacks`` (per deployment serving the model, the DAGs that roll it back).
    """
    from airflow_mlops.plugins import sources

    scope = dag_scope(user)
    dag_ids = set(scope.dag_ids)
    retrain_conf = _configured_dag(retrain_dag, "retrain_dag", "ui_retrain_dag_id")
    rollback_conf = _configured_dag(rollback_dag, "rollback_dag", "ui_rollback_dag_id")
    client, registry = _read_registry(_conf("ui_mlflow_conn_id", "mlflow_default"))
    by_run = sources.validations_by_run(sources.validations(dag_ids))
    # only the versions readable DAGs trained; a model without one is left out
    out = [
        {"name": model["name"], "description": model.get("description") or "", "versions": shown}
        for model, versions in registry
        if (shown := visible_versions(versions, scope))
    ]
    everything = [v for m in out for v in m["versions"]]
    runs = sources.dag_runs(
        (v["dag_id"], v["dag_run_id"]) for v in everything if v["dag_id"] in dag_ids and v["dag_run_id"]
    )
    sources.attach_lineage(everything, dag_ids, runs, by_run)
    catalog = sources.dag_catalog(dag_ids)
    found, _ = _all_deployments(scope, False, catalog)
    for entry in out:
        entry["aliases"] = {a: v["version"] for v in entry["versions"] for a in v["aliases"]}
        champion = next((v for v in entry["versions"] if "champion" in v["aliases"]), None)
        entry["trained_by_dag"] = champion["dag_id"] if champion else None
        entry["retrain"] = sources.retrain_target(
            entry["name"], catalog, entry["trained_by_dag"], configured=retrain_conf
        )
        entry["rollbacks"] = [
            sources.rollback_target(d, catalog, configured=rollback_conf)
            for d in found
            if d.get("model_name") == entry["name"]
        ]
    return {"tracking_uri": client.tracking_uri, "models": out}


@router.get(API_ROUTE + "/deployments", name="mlops_deployments")
def deployments(user: User, rollback_dag: RollbackDag = None) -> dict[str, Any]:
    """
    Deployments: endpoint, version served, health, traffic split, the last rollout (the latest
    try of a task that rolls it out, with the outcome that try recorded) and ``rollback``: the
    DAGs that roll it back, with their params.
    """
    from airflow_mlops.plugins import sources

    scope = dag_scope(user)
    rollback_conf = _configured_dag(rollback_dag, "rollback_dag", "ui_rollback_dag_id")
    catalog = sources.dag_catalog(scope.dag_ids)
    found, results = _all_deployments(scope, True, catalog)
    sources.attach_rollouts(found, results, catalog)  # pairs only the readable DAGs' tries
    hide_other_rollouts(found, scope)
    for deployment in found:
        deployment["rollback"] = sources.rollback_target(deployment, catalog, configured=rollback_conf)
    return {"deployments": found}


@router.get(API_ROUTE + "/drift", name="mlops_drift")
def drift(user: User) -> dict[str, Any]:
    """
    Drift per model: the windows of served traffic its deployment's watcher tested and the
    checks DAGs ran, each with score, threshold, window and the retraining runs it caused.
    """
    from airflow_mlops import storage
    from airflow_mlops.plugins import sources

    scope = dag_scope(user)
    dag_ids = set(scope.dag_ids)
    # the checks' reports and the watchers' windows are in [mlops] data_dir (maybe a store);
    # deployments in this host's folder (and those other hosts published)
    data_dir, data_root = _data_dir(), storage.data_root()
    checks = sources.drift_reports(data_root, dag_ids)
    sources.attach_drift_runs(checks, sources.xcoms({p["dag_id"] for p in checks}, "return_value"))
    for check in checks:  # the runs a check's event started may belong to DAGs the caller may not read
        check["triggered_runs"] = [r for r in check["triggered_runs"] if r.get("dag_id") in dag_ids]
    found = sources.deployments(data_dir, health=False)
    windows = sources.watcher_windows(data_root)
    if not scope.every_dag:  # the watchers of deployments a readable DAG rolled out
        results, catalog = sources.xcoms(dag_ids, "return_value"), sources.dag_catalog(dag_ids)
        found = visible_deployments(found, scope, results, catalog)
        named = {d["name"] for d in found}
        watched = {w["deployment"] for w in windows} - named
        named |= {
            name
            for name in watched
            if scope.shows(deployers({"name": name, "mode": "local"}, results, catalog))
        }
        windows = [w for w in windows if w["deployment"] in named]
    sources.attach_watcher_runs(windows, dag_ids)
    return {"series": sources.drift_series([*checks, *windows], found)}


@router.get(API_ROUTE + "/datasets", name="mlops_datasets")
def datasets(user: User) -> dict[str, Any]:
    """Dataset versions with row counts and the result of their validation."""
    from airflow_mlops.plugins import sources

    scope = dag_scope(user)
    by_version = sources.validations_by_dataset_version(sources.validations(scope.dag_ids))
    from airflow_mlops import storage

    # the snapshots are where the tasks wrote them: a folder, or the object store
    found = sources.datasets(storage.data_root(), by_version, _EveryDag())  # filtered and masked here
    return {"datasets": visible_datasets(found, scope)}


# --------------------------------------------------------------------------- plugin


def create_app() -> FastAPI:
    """The app mounted at ``/mlops``: the MLOps view, the Data Docs files and drift reports."""
    app = FastAPI(title="MLOps provider", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    app.include_router(data_docs.router)
    app.include_router(drift_report.router)
    app.add_exception_handler(LoginRequired, redirect_to_login)
    return app


class MlopsPlugin(AirflowPlugin):
    """The provider's UI: the **MLOps** page in Airflow's navigation, its JSON API and Data Docs."""

    name = "mlops"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MLOps"}]
    external_views = [
        {
            "name": "MLOps",
            # same origin as the UI: the page's requests carry the UI's session cookie
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "mlops",
            "icon": f"{URL_PREFIX}/static/icon.svg",
            "nav_top_level": True,
        }
    ]
