"""Run the registry sensor (poking, deferred) and the champion/challenger gate with ``dag.test()``.

Usage: ``python registry_dag_test.py WORK_DIR RESULT.json MLFLOW_URL`` with ``AIRFLOW_HOME``,
``AIRFLOW__CORE__DAGS_FOLDER`` pointing at a fresh folder and ``AIRFLOW_CONN_MLFLOW_DEFAULT``
at the real MLflow server ``MLFLOW_URL``.

* sensor runs: the model has version 1; a concurrent thread registers version 2 (or moves the
  ``champion`` alias from 1 to 2) a few seconds after the run starts. ``dag.test()`` runs a
  deferred task's trigger inline, in this process. A last sensor run waits in vain and must time out.
* gate runs: ``gate >> [deploy, rejected]`` with a real champion and challenger: a worse model
  must skip ``deploy``; a better one must run it and become champion.

Each run's log lies between ``=== BEGIN RUN <name>`` and ``=== END RUN <name>`` lines of stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))  # flights_models

DELAY_S = 4.0

DAG_FILE = """\
from datetime import datetime, timezone

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

from airflow_mlops.operators.registry import ChampionChallengerGateOperator
from airflow_mlops.sensors.mlflow import MlflowModelVersionSensor

START = datetime(2013, 1, 1, tzinfo=timezone.utc)


def conf(key):
    return "{{{{ dag_run.conf['" + key + "'] }}}}"


def sensor_dag(dag_id, **kwargs):
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        MlflowModelVersionSensor(
            task_id="wait",
            model_name=conf("model_name"),
            after_version=conf("after_version"),
            poke_interval=0.5,
            **kwargs,
        )
    return dag


poke = sensor_dag("sensor_poke", timeout=120)
deferred = sensor_dag("sensor_deferred", timeout=120, deferrable=True)
alias = sensor_dag("sensor_alias_deferred", alias="champion", timeout=120, deferrable=True)
timeout = sensor_dag("sensor_timeout", timeout=3, deferrable=True)

with DAG("gate", schedule=None, start_date=START, catchup=False) as gate_dag:
    gate = ChampionChallengerGateOperator(
        task_id="gate",
        model_name=conf("model_name"),
        evaluation={{"data_path": {holdout!r}, "features": {features!r}, "label": "delayed",
                    "dataset_version": "holdout-2013-03"}},
        slices=["carrier", "origin"],
        deploy_task_ids="deploy",
        reject_task_ids="rejected",
    )
    gate >> [EmptyOperator(task_id="deploy"), EmptyOperator(task_id="rejected")]
"""


def wait_healthy(url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def main(work: str, result_path: str, url: str) -> None:
    import flights_models
    import mlflow

    wait_healthy(url)
    runs = {kind: flights_models.log_flights_model(kind, url) for kind in ("medium", "strong", "shuffled")}
    holdout = flights_models.write_holdout(Path(work) / "holdout.parquet")
    client = mlflow.MlflowClient(tracking_uri=url)

    def register(name: str, kind: str) -> str:
        return str(mlflow.register_model(f"runs:/{runs[kind]}/model", name).version)

    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    source = DAG_FILE.format(holdout=str(holdout), features=flights_models.FEATURES)
    (dags_folder / "registry_dags.py").write_text(source)

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    result: dict = {"import_errors": dict(bag.import_errors), "runs": {}}

    def register_medium(name: str) -> str:
        return register(name, "medium")

    def move_champion(name: str) -> str:
        client.set_registered_model_alias(name, "champion", "2")
        return "2"

    # run label: (version 1, champion; version 2, challenger; what a thread does meanwhile)
    plans = {
        "sensor_poke": ("strong", None, register_medium),
        "sensor_deferred": ("strong", None, register_medium),
        "sensor_alias_deferred": ("strong", "medium", move_champion),
        "sensor_timeout": ("strong", None, None),
        "gate_reject": ("strong", "shuffled", None),
        "gate_promote": ("medium", "strong", None),
    }
    for i, (label, (first, second, action)) in enumerate(plans.items()):
        name = f"{label}_model"
        register(name, first)
        client.set_registered_model_alias(name, "champion", "1")
        if second:
            register(name, second)
            client.set_registered_model_alias(name, "challenger", "2")
        done: dict = {}

        def act(action=action, name=name, done=done) -> None:
            time.sleep(DELAY_S)
            # when the change *began*: the registry may show the version READY before
            # register_model's own wait for READY returns
            change_began = time.monotonic()
            done.update(version=action(name), at=change_began)

        writer = threading.Thread(target=act, daemon=True)
        if action is not None:
            writer.start()
        dag_id = "gate" if label.startswith("gate") else label
        began = time.monotonic()
        print(f"=== BEGIN RUN {label}", flush=True)
        dag_run = bag.dags[dag_id].test(
            logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC),
            run_conf={"model_name": name, "after_version": "1"},
        )
        print(f"=== END RUN {label}", flush=True)
        ended = time.monotonic()
        if writer.ident:
            writer.join(timeout=30)
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
            xcoms = {
                f"{x.task_id}.{x.key}": x.value
                for x in session.query(XComModel).filter(
                    XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id
                )
            }
        champion = client.get_model_version_by_alias(name, "champion").version
        result["runs"][label] = {
            "model_name": name,
            "state": str(dag_run.state),
            "task_states": tis,
            "xcoms": xcoms,
            "changed_to": done.get("version"),
            "seconds": ended - began,
            "ended_after_change": bool(done) and ended >= done["at"],
            "champion": champion,
        }
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
