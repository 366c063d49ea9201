"""A DAG run of train (mapped over 2 points, real ``horovodrun``) → select → register → gate, twice.

Usage: ``python run_tree_dag.py WORK_DIR RESULT.json MLFLOW_URL`` with ``AIRFLOW_HOME``,
``AIRFLOW__CORE__DAGS_FOLDER`` (a fresh folder), ``AIRFLOW__MLOPS__RUNTIMES_DIR`` and
``AIRFLOW_CONN_MLFLOW_DEFAULT`` (the real MLflow server ``MLFLOW_URL``) set. Run by
``test_run_tree_dag_run.py``.

* pass 1: ``dag.test()`` runs the DAG run;
* pass 2: "clear and rerun" of that DAG run: ``dag.test()`` on the same logical date clears the
  run's task instances (``SerializedDAG.clear_dags``, what the UI's Clear does: states reset, try
  numbers kept) and runs them again, each on its next try. ``dag.test()`` would then replace the
  DAG run by a new one (``get_or_create_dagrun``); here it gets the cleared run back instead, as the
  scheduler would. A marker file makes the first try of ``train[0]`` die on rank 0 right after its
  MLflow run started (``os._exit``: the run is left ``RUNNING``, as a killed worker leaves it); the
  task's retry then trains.

The result file holds, per pass, the DAG run's id and state, every task instance's state and try
number, and the XComs the tasks pushed (extra links among them).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dags" / "include" / "train_flights_delay.py"
EXPERIMENT = "run_tree"
MODEL = "run_tree_model"
LOGICAL_DATE = datetime(2013, 1, 8, tzinfo=UTC)

#: the example training script, under its own name, whose rank 0 dies once while a marker exists
CRASH_ONCE = """

# -- test only: die once on rank 0 after the MLflow run started, leaving it RUNNING ----------------
import os as _os

_train = train


def train(ctx):
    marker = ctx.hyperparameters.get("crash_marker")
    if ctx.is_chief and marker and _os.path.exists(marker):
        _os.remove(marker)
        print("[test] rank 0 dies now", flush=True)
        _os._exit(3)
    return _train(ctx)
"""

DAG_FILE = """\
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from airflow_mlops.operators.registry import ChampionChallengerGateOperator, MlflowRegisterModelOperator
from airflow_mlops.operators.select import SelectBestRunOperator
from airflow_mlops.operators.train import HorovodTrainOperator

with DAG("run_tree", schedule=None, start_date=datetime(2013, 1, 1, tzinfo=timezone.utc), catchup=False):
    train = HorovodTrainOperator.partial(
        task_id="train",
        training_script={script!r},
        inputs={inputs!r},
        num_proc=2,
        experiment_name={experiment!r},
        retries=1,
        retry_delay=timedelta(seconds=0),
        max_active_tis_per_dagrun=1,
    ).expand(hyperparameters={points!r})
    best = SelectBestRunOperator(task_id="select_best", runs=train.output, metric="holdout_roc_auc")
    register = MlflowRegisterModelOperator(
        task_id="register", run_id=best.output["run_id"], model_name={model!r}, champion_alias=None
    )
    gate = ChampionChallengerGateOperator(
        task_id="gate",
        model_name={model!r},
        challenger_version=register.output["version"],
        evaluation={{"data_path": {holdout!r}, "features": {features!r}, "label": "delayed"}},
        deploy_task_ids="deploy",
    )
    gate >> EmptyOperator(task_id="deploy")
"""


def prepare(work: Path) -> dict[str, str]:
    """One week of flights (80 % train, 20 % hold-out), the crash-once script, the DAG file."""
    sys.path.insert(0, str(SCRIPT.parent))
    from airflow_mlops.example_data.nycflights13 import flight_features
    from train_flights_delay import FEATURES, LABEL

    df = flight_features("2013-01-01", "2013-01-08")[[*FEATURES, LABEL]]
    holdout = df.sample(frac=0.2, random_state=0)
    inputs = {"train": str(work / "train.parquet"), "holdout": str(work / "holdout.parquet")}
    df.drop(holdout.index).to_parquet(inputs["train"], index=False)
    holdout.to_parquet(inputs["holdout"], index=False)
    script = work / "train_crash_once.py"
    script.write_text(SCRIPT.read_text() + CRASH_ONCE)
    marker = work / "crash-train-0"
    points = [
        {"epochs": 2, "batch_size": 256, "lr": 0.003, "hidden": 16, "crash_marker": str(marker)},
        {"epochs": 2, "batch_size": 256, "lr": 0.001, "hidden": 16},
    ]
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "run_tree_dag.py").write_text(
        DAG_FILE.format(
            script=str(script),
            inputs=inputs,
            experiment=EXPERIMENT,
            points=points,
            model=MODEL,
            holdout=inputs["holdout"],
            features=FEATURES,
        )
    )
    return {"marker": str(marker), "dags": str(dags)}


def snapshot(url: str) -> list[dict]:
    """Every run of the experiment as the tracking server has it now (deleted ones included)."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [
        {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "stage": run.info.lifecycle_stage,
            "experiment_id": run.info.experiment_id,
            "tags": {
                k: v for k, v in run.data.tags.items() if k.startswith(("airflow.", "mlflow.", "mlops."))
            },
        }
        for run in runs
    ]


@contextmanager
def rerunning(run_id: str):
    """``dag.test()`` runs the cleared DAG run ``run_id`` again instead of replacing it."""
    import airflow.models.dagrun as dagrun_module
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    def cleared_run(*, dag, session, **_):
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
        dag_run.state = DagRunState.RUNNING
        session.commit()
        dag_run.dag = dag  # as create_dagrun leaves it
        return dag_run

    original = dagrun_module.get_or_create_dagrun
    dagrun_module.get_or_create_dagrun = cleared_run
    try:
        yield
    finally:
        dagrun_module.get_or_create_dagrun = original


def run_once(bag, label: str, url: str, rerun: str | None = None) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    print(f"=== BEGIN PASS {label}", flush=True)
    with rerunning(rerun) if rerun else nullcontext():
        dag_run = bag.dags["run_tree"].test(logical_date=LOGICAL_DATE)
    print(f"=== END PASS {label}", flush=True)
    with create_session() as session:
        tis = {
            f"{ti.task_id}[{ti.map_index}]": {"state": str(ti.state), "try_number": ti.try_number}
            for ti in dag_run.get_task_instances(session=session)
        }
        xcoms = {
            f"{x.task_id}[{x.map_index}].{x.key}": x.value
            for x in session.query(XComModel).filter(
                XComModel.dag_id == "run_tree", XComModel.run_id == dag_run.run_id
            )
        }
    return {
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "tasks": tis,
        "xcoms": xcoms,
        "runs": snapshot(url),
    }


def main(work: str, result_path: str, url: str) -> None:
    files = prepare(Path(work))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import upgradedb

    upgradedb()
    bag = DagBag(dag_folder=files["dags"])
    result = {"import_errors": dict(bag.import_errors), "experiment": EXPERIMENT, "model": MODEL}
    if not bag.import_errors:
        result["first"] = run_once(bag, "first", url)
        Path(files["marker"]).touch()  # the rerun's first try of train[0] dies
        result["rerun"] = run_once(bag, "rerun", url, rerun=result["first"]["run_id"])
        result["marker_left"] = Path(files["marker"]).exists()
    Path(result_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:4])
