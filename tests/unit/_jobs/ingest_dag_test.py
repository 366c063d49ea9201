"""Run ``IngestOperator`` end to end with ``dag.test()`` against a fresh SQLite metadata DB.

Usage: ``python ingest_dag_test.py OUTPUT_DIR RESULT.json`` with ``AIRFLOW_HOME`` and
``AIRFLOW__CORE__DAGS_FOLDER`` pointing at a fresh folder. Writes a DAG file into the DAG
folder (``dag.test()`` syncs the DAG folder bundle to the DB), migrates the DB the way
``airflow db migrate`` does, runs the DAGs below one after the other and dumps run states,
XComs, asset events and snapshot file stats as JSON. Each run's log lies between
``=== BEGIN RUN i`` and ``=== END RUN i`` lines of stdout.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

WEEK = ("2013-06-03T00:00:00+00:00", "2013-06-10T00:00:00+00:00")
EMPTY = ("2015-01-01T00:00:00+00:00", "2015-02-01T00:00:00+00:00")
ASSET_URI = "x-mlops://tests/flights-week"

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG, Asset

from airflow_mlops.operators.ingest import IngestOperator

FLIGHTS = Asset(name="test_flights", uri={asset_uri!r})


def ingest_dag(dag_id, start, end, on_empty):
    start_date = datetime(2013, 1, 1, tzinfo=timezone.utc)
    with DAG(dag_id, schedule=None, start_date=start_date, catchup=False) as dag:
        IngestOperator(
            task_id="ingest_flights",
            dataset="flights",
            source="airflow_mlops.example_data.nycflights13:load_flights",
            timestamp_column="time_hour",
            interval_start=start,
            interval_end=end,
            output_dir={output_dir!r},
            on_empty=on_empty,
            outlets=[FLIGHTS],
        )
    return dag


week = ingest_dag("ingest_week", {week[0]!r}, {week[1]!r}, "fail")
empty_fail = ingest_dag("ingest_empty_fail", {empty[0]!r}, {empty[1]!r}, "fail")
empty_skip = ingest_dag("ingest_empty_skip", {empty[0]!r}, {empty[1]!r}, "skip")
"""

RUNS = ["ingest_week", "ingest_week", "ingest_empty_fail", "ingest_empty_skip"]


def _stat(path: str | None) -> list[int] | None:
    if not path or not os.path.exists(path):
        return None
    st = os.stat(path)
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def main(output_dir: str, result_path: str) -> None:
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "ingest_test_dags.py").write_text(
        DAG_FILE.format(asset_uri=ASSET_URI, output_dir=output_dir, week=WEEK, empty=EMPTY)
    )

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()  # what `airflow db migrate` runs
    bag = DagBag(dag_folder=dags_folder)
    result: dict = {"import_errors": dict(bag.import_errors), "dag_ids": sorted(bag.dags), "runs": []}

    for i, dag_id in enumerate(RUNS):
        print(f"=== BEGIN RUN {i}", flush=True)
        dag_run = bag.dags[dag_id].test(logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC))
        print(f"=== END RUN {i}", flush=True)
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
            xcoms = {
                x.key: x.value
                for x in session.query(XComModel).filter(
                    XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id
                )
            }
        path = (xcoms.get("return_value") or {}).get("path")
        result["runs"].append(
            {
                "dag_id": dag_id,
                "run_id": dag_run.run_id,
                "state": str(dag_run.state),
                "task_states": tis,
                "xcoms": xcoms,
                "snapshot_stat": _stat(path),
            }
        )

    with create_session() as session:
        result["asset_events"] = [
            {
                "uri": event.uri,
                "extra": event.extra,
                "source_dag_id": event.source_dag_id,
                "source_run_id": event.source_run_id,
                "source_task_id": event.source_task_id,
            }
            for event in session.query(AssetEvent).order_by(AssetEvent.id)
        ]
    result["files"] = sorted(
        str(p.relative_to(output_dir)) for p in Path(output_dir).rglob("*") if p.is_file()
    )
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
