"""Request the drift report view through Airflow's real API app, on a report of a ``dag.test()`` run.

Usage: ``python ui_drift.py RESULT.json`` with ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER``,
``AIRFLOW__MLOPS__DATA_DIR``, ``AIRFLOW__API__BASE_URL`` and ``AIRFLOW__API_AUTH__JWT_SECRET`` set.

The DAG's drift task does what ``DriftDetectOperator.execute`` does around the drift runtime
(alibi-detect cannot live beside Airflow, so the test itself is not run): it writes
``report.json`` and ``pvalues.png`` with the runtime's own ``write_json`` / ``write_plot``
(``runtimes/drift_detect.py``, a real matplotlib PNG) in the structure its ``detect`` builds,
into the operator's default folder, persists the *Drift report* link and returns the
operator's summary (with the window). Then builds the API server's app and dumps each response.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

DAG_ID = "ui_drift_monitor"
TASK_ID = "detect_drift"

DAG_FILE = """\
import importlib.util
from datetime import datetime, timezone

from airflow.sdk import DAG, task

from airflow_mlops import settings
from airflow_mlops.links.drift import DriftReportLink, drift_report_url
from airflow_mlops.task_outputs import task_output_dir


def runtime():
    spec = importlib.util.spec_from_file_location("drift_detect", settings.runtime_script("drift_detect"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@task(task_id={task_id!r})
def detect_drift(ti=None, **context):
    out = task_output_dir(ti, "drift")  # the operator's default folder
    out.mkdir(parents=True, exist_ok=True)
    drift_detect = runtime()
    # the structure drift_detect.detect() builds (two KS features, Bonferroni over two tests)
    report = {{
        "is_drift": True, "drift_score": 0.5, "threshold": 0.05, "correction": "bonferroni",
        "effective_threshold": 0.025,
        "features": {{
            "temp": {{"test": "ks", "p_val": 3.2e-12, "distance": 0.4242, "drift": True}},
            "visib": {{"test": "ks", "p_val": 0.61, "distance": 0.0151, "drift": False}},
        }},
        "prediction": None, "prediction_column": None, "drifted_features": ["temp"],
        "n_reference": 5000, "n_current": 4321, "dropped": {{"reference": 0, "current": 3}},
        "detector": "alibi-detect 0.12.0", "timings": {{"load_s": 0.1, "import_s": 1.0, "detect_s": 0.2}},
    }}
    drift_detect.write_plot(str(out / "pvalues.png"), report, 0.025, None)
    report["elapsed_s"] = 1.4
    drift_detect.write_json(str(out / "report.json"), report)
    # what DriftDetectOperator.execute does once the report is written
    DriftReportLink.persist({{"ti": ti}}, drift_report_url(ti.dag_id, ti.run_id, ti.task_id))
    return {{"is_drift": True, "drift_score": 0.5, "drifted_features": ["temp"],
            "window": {{"start": "2013-07-01", "end": "2013-08-01"}},
            "report": str(out / "report.json"), "plot": str(out / "pvalues.png")}}


with DAG({dag_id!r}, schedule=None, start_date=datetime(2013, 1, 1, tzinfo=timezone.utc), catchup=False):
    detect_drift()
"""


def run_dag() -> str:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import upgradedb

    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "ui_drift_dag.py").write_text(DAG_FILE.format(dag_id=DAG_ID, task_id=TASK_ID))
    upgradedb()
    bag = DagBag(dag_folder=dags)
    if bag.import_errors:
        raise RuntimeError(f"DAG file errors: {bag.import_errors}")
    run = bag.dags[DAG_ID].test(logical_date=datetime(2024, 3, 1, tzinfo=UTC))
    if str(run.state) != "success":
        raise RuntimeError(f"the drift DAG run ended {run.state}")
    return run.run_id


def main(result_path: str) -> None:
    from urllib.parse import quote

    run_id = run_dag()
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow_mlops.links.drift import DriftReportLink
    from fastapi.testclient import TestClient

    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    (data_dir / "secret.txt").write_text("not for the browser")
    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=DAG_ID, run_id=run_id, task_id=TASK_ID, key=DriftReportLink().xcom_key)
            .one_or_none()
        )
        link = XComModel.deserialize_value(row) if row is not None else None

    client = TestClient(create_app())
    manager = get_auth_manager()
    viewer = manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    nobody = manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    page = f"/mlops/drift-report/{DAG_ID}/{quote(run_id, safe='')}/{TASK_ID}"
    bearer = {"Authorization": f"Bearer {viewer}"}
    requests = {
        "anonymous": (page, {}),
        "bad_token": (page, {"Authorization": "Bearer not-a-jwt"}),
        "nobody": (page, {"Authorization": f"Bearer {nobody}"}),
        "page": (page, bearer),
        "plot": (page + "/pvalues.png", bearer),
        "plot anonymous": (page + "/pvalues.png", {}),
        "traversal": ("/mlops/drift-report/%2E%2E/%2E%2E/secret.txt", bearer),
        "traversal plot": ("/mlops/drift-report/%2E%2E/%2E%2E/x/pvalues.png", bearer),
        "missing": (f"/mlops/drift-report/{DAG_ID}/no_such_run/{TASK_ID}", bearer),
        "drift api": ("/mlops/api/drift", bearer),
    }
    # a browser without a session (none, or an expired one) asking for the page, and for the plot
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    expired = manager.generate_jwt(
        SimpleAuthManagerUser(username="viewer", role="viewer"), expiration_time_in_seconds=-60
    )
    requests |= {
        "browser logged out": (page, html),
        "browser expired": (page, {**html, "Cookie": f"_token={expired}"}),
        "plot browser logged out": (page + "/pvalues.png", {"Accept": "image/avif,image/webp,*/*"}),
    }
    result: dict = {"run_id": run_id, "page": page, "link": link}
    for name, (path, headers) in requests.items():
        response = client.get(path, headers=headers, follow_redirects=False)
        body = response.content
        is_png = body.startswith(b"\x89PNG")
        result[name] = {
            "status": response.status_code,
            "content_type": response.headers.get("content-type"),
            "body": base64.b64encode(body).decode() if is_png else body.decode(errors="replace")[:20000],
            "png": is_png,
            "size": len(body),
            "location": response.headers.get("location"),
        }
    # the plot file on disk, to compare with what was served
    from airflow_mlops.task_outputs import instance_folder

    folder = data_dir / "drift" / instance_folder(DAG_ID, run_id, TASK_ID)
    result["plot_size"] = (folder / "pvalues.png").stat().st_size
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
