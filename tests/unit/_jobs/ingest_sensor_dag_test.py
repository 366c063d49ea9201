"""Run ``DatasetVersionSensor`` (poking and deferred) with ``dag.test()`` while a thread ingests.

Usage: ``python ingest_sensor_dag_test.py WORK_DIR RESULT.json`` with ``AIRFLOW_HOME`` and
``AIRFLOW__CORE__DAGS_FOLDER`` pointing at a fresh folder.

Each waiting run starts with version A of the real flights of 3 June 2013 stored and the
sensor told ``after_version=A``; a concurrent thread stores version B (one value changed)
a few seconds later. ``dag.test()`` runs a deferred task's trigger inline, in this process.
A last run waits for a version that never comes and must time out. Each run's log lies
between ``=== BEGIN RUN <name>`` and ``=== END RUN <name>`` lines of stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

DELAY_S = 4.0

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_mlops.sensors.dataset import DatasetVersionSensor

START = datetime(2013, 1, 1, tzinfo=timezone.utc)


def sensor_dag(dag_id, root, **kwargs):
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        DatasetVersionSensor(
            task_id="wait",
            dataset="flights",
            output_dir=root,
            after_version="{{{{ dag_run.conf['after_version'] }}}}",
            interval_start="2013-06-03T00:00:00+00:00",
            interval_end="2013-06-04T00:00:00+00:00",
            poke_interval=0.5,
            **kwargs,
        )
    return dag


poke = sensor_dag("sensor_poke", {root!r} + "/poke", timeout=120)
deferred = sensor_dag("sensor_deferred", {root!r} + "/deferred", timeout=120, deferrable=True)
timeout = sensor_dag("sensor_timeout", {root!r} + "/timeout", timeout=3, deferrable=True)
soft = sensor_dag("sensor_soft_fail", {root!r} + "/soft", timeout=2, deferrable=True, soft_fail=True)
"""


def frames():
    from airflow_mlops.example_data.nycflights13 import load_flights

    day = load_flights(datetime(2013, 6, 3, tzinfo=UTC), datetime(2013, 6, 4, tzinfo=UTC))
    changed = day.copy()
    changed.loc[0, "arr_delay"] = changed.loc[0, "arr_delay"] + 1
    return day, changed


def main(work: str, result_path: str) -> None:
    from airflow_mlops.datasets import write_snapshot

    root = Path(work) / "snapshots"
    start, end = datetime(2013, 6, 3, tzinfo=UTC), datetime(2013, 6, 4, tzinfo=UTC)
    first, changed = frames()
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "ingest_sensor_dags.py").write_text(DAG_FILE.format(root=str(root)))

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    result: dict = {"import_errors": dict(bag.import_errors), "runs": {}}

    for i, dag_id in enumerate(("sensor_poke", "sensor_deferred", "sensor_timeout", "sensor_soft_fail")):
        sub = root / dag_id.removeprefix("sensor_").replace("soft_fail", "soft")
        old, _ = write_snapshot(first, sub, "flights", start, end)
        written: dict = {}

        def ingest_later(sub=sub, written=written) -> None:
            time.sleep(DELAY_S)
            snapshot, _ = write_snapshot(changed, sub, "flights", start, end)
            written.update(version=snapshot.version, at=time.monotonic())

        writer = threading.Thread(target=ingest_later, daemon=True)
        if dag_id in ("sensor_poke", "sensor_deferred"):
            writer.start()
        began = time.monotonic()
        print(f"=== BEGIN RUN {dag_id}", flush=True)
        dag_run = bag.dags[dag_id].test(
            logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC), run_conf={"after_version": old.version}
        )
        print(f"=== END RUN {dag_id}", flush=True)
        ended = time.monotonic()
        if writer.is_alive() or writer.ident:
            writer.join(timeout=30)
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
            xcoms = {
                x.key: x.value
                for x in session.query(XComModel).filter(
                    XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id
                )
            }
        result["runs"][dag_id] = {
            "state": str(dag_run.state),
            "task_states": tis,
            "xcoms": xcoms,
            "old_version": old.version,
            "new_version": written.get("version"),
            "seconds": ended - began,
            "ended_after_write": bool(written) and ended >= written["at"],
        }
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
