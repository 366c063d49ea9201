"""``mode="docker"``: the training and drift operators run their runtime's image through the Docker
Engine API — podman's (``scripts/images.sh --api``), the API Docker's clients speak.

* ``HorovodTrainOperator(mode="docker")``: ``horovodrun -np 2`` in the training image trains the
  example model on real January 2013 flights and logs it to a real MLflow server over HTTP (the
  container shares the host's network and mounts the server's local artifact root); a container an
  earlier try left behind is replaced; the task's container is gone afterwards;
* ``on_kill`` (SIGTERM to the task, as Airflow's task runner sends it) stops and removes the container;
* ``DriftDetectOperator(mode="docker")``: the drift image flags January vs July 2013 weather and the
  report lands in the task's folder of the data dir;
* the drift watcher (``DriftEventTrigger``) with ``[mlops] execution_mode = docker`` and no drift
  runtime on the host (a containerised triggerer): each window is checked in a drift-image
  container, drifted July traffic fires the event.

The operators run in control-plane subprocesses with a task-instance stand-in
(``tests/support/horovod_task.py``), each in an Airflow home of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
import horovod_task  # noqa: E402
from horovod_task import failure, finish, start_operator, task_environ  # noqa: E402

pytestmark = pytest.mark.containers

if subprocess.run(["which", "podman"], capture_output=True).returncode != 0:
    pytest.skip("podman is not installed: run `make images` (as root on Debian)", allow_module_level=True)

client = horovod_task.client
inputs = horovod_task.inputs
mlflow_boot = horovod_task.mlflow_boot
mlflow_url = horovod_task.mlflow_url


def task_container(task_id: str, runtime: str) -> str:
    from airflow_mlops.hooks.docker import container_name

    return container_name(runtime, "it_training", "manual__2026-01-01", task_id, -1)


def container_exists(docker, name: str) -> bool:
    return any(
        c.name == name for c in docker.containers.list(all=True, ignore_removed=True, filters={"name": name})
    )


def worker_env(docker_host: str, data_dir: Path) -> dict[str, str]:
    return {"DOCKER_HOST": docker_host, "AIRFLOW__MLOPS__DATA_DIR": str(data_dir)}


def test_training_runs_in_the_training_image_and_logs_the_model(
    tmp_path, mlflow_url, inputs, client, docker, docker_host
):
    task_id = "train_docker"
    name = task_container(task_id, "training")
    # what a worker that died mid-task leaves: a container of the same task instance
    docker.containers.run("localhost/airflow-mlops-training:latest", ["sleep", "600"], name=name, detach=True)
    proc, log = start_operator(
        tmp_path,
        mlflow_url,
        task_id,
        mode="docker",
        num_proc=2,
        inputs=inputs,
        hyperparameters={"epochs": 2, "batch_size": 256, "lr": 0.002, "hidden": 32},
        worker_env=worker_env(docker_host, tmp_path / "data"),
    )
    result = finish(proc, log)
    output = log.read_text()
    assert f"container_run: removed the leftover container {name}" in output
    assert f"Running in the training container {name} (localhost/airflow-mlops-training:latest)" in output
    assert "/opt/mlops/venv/bin/horovodrun --gloo -np 2" in output
    assert result["num_proc"] == 2 and result["metrics"]["holdout_roc_auc"] > 0.6, result
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["airflow.task_id"] == task_id and run.data.params["num_proc"] == "2"
    # the model rank 0 logged from inside the container loads here
    import mlflow

    mlflow.set_tracking_uri(mlflow_url)
    assert mlflow.models.get_model_info(result["model_uri"]).signature is not None
    assert not container_exists(docker, name), "the task's container was left behind"


def test_on_kill_stops_and_removes_the_container(tmp_path, mlflow_url, inputs, docker, docker_host):
    task_id = "train_docker_killed"
    name = task_container(task_id, "training")
    # the name is the same for every run of this test: a container an interrupted run left must
    # not be taken for this run's
    for leftover in docker.containers.list(all=True, ignore_removed=True, filters={"name": name}):
        leftover.remove(force=True)
    proc, log = start_operator(
        tmp_path,
        mlflow_url,
        task_id,
        mode="docker",
        num_proc=1,
        inputs=inputs,
        hyperparameters={"epochs": 200, "batch_size": 64, "lr": 0.002, "hidden": 32},
        worker_env=worker_env(docker_host, tmp_path / "data"),
    )
    # event-driven: kill as soon as the container runs (or give up when the task ends by itself)
    while not container_exists(docker, name):
        assert proc.poll() is None, f"the task ended before its container ran:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    assert not container_exists(docker, name), f"container {name} survived on_kill"


DRIFT_JOB = r"""
import json, sys
from types import SimpleNamespace

from airflow_mlops.operators.drift import DriftDetectOperator

args = json.loads(sys.argv[1])


class TI:
    dag_id, run_id, task_id, map_index, try_number = "it_drift", "manual__2026-01-01", "drift", -1, 1

    def xcom_push(self, key, value):
        pass


op = DriftDetectOperator(task_id="drift", **args)
try:
    result = op.execute({"ti": TI(), "dag": SimpleNamespace(dag_id="it_drift"), "outlet_events": {}})
except Exception as err:
    print("FAILURE " + json.dumps({"type": type(err).__name__, "message": str(err)}), flush=True)
    sys.exit(1)
print("RESULT " + json.dumps(result, default=str), flush=True)
"""


def run_drift(tmp_path: Path, docker_host: str, **operator) -> tuple[subprocess.Popen, Path]:
    env = task_environ(tmp_path / "airflow-home", **worker_env(docker_host, tmp_path / "data"))
    log = tmp_path / "drift.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIFT_JOB, json.dumps(operator)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log


def test_drift_runs_in_the_drift_image(tmp_path, docker, docker_host):
    from airflow_mlops.example_data.nycflights13 import load_weather

    def month(m: int):
        return load_weather(datetime(2013, m, 1, tzinfo=UTC), datetime(2013, m + 1, 1, tzinfo=UTC))

    features = ["temp", "dewp", "humid", "wind_speed", "pressure"]
    month(1).to_parquet(tmp_path / "january.parquet")
    month(7).to_parquet(tmp_path / "july.parquet")
    proc, log = run_drift(
        tmp_path,
        docker_host,
        reference_path=str(tmp_path / "january.parquet"),
        current_path=str(tmp_path / "july.parquet"),
        numeric_features=features,
        mode="docker",
    )
    result = finish(proc, log)
    output = log.read_text()
    assert "Running in the drift container mlops-drift-" in output
    assert "/opt/mlops/venv/bin/python /opt/mlops/runtimes/drift_detect.py" in output
    assert result["is_drift"] is True and result["drifted_features"], result
    report = json.loads(Path(result["report"]).read_text())
    assert report["is_drift"] is True and set(report["features"]) >= set(features)
    # the report is in the task's own folder of the data dir, written as the worker's user
    assert Path(result["report"]).is_relative_to(tmp_path / "data")
    assert Path(result["report"]).stat().st_uid == os.getuid()
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_image_is_named_with_the_command_that_builds_it(tmp_path, docker_host):
    proc, log = run_drift(
        tmp_path,
        docker_host,
        reference_path=str(tmp_path / "a.parquet"),
        current_path=str(tmp_path / "b.parquet"),
        numeric_features=["temp"],
        mode="docker",
        image="localhost/airflow-mlops-drift:no-such-tag",
    )
    err = failure(proc, log)
    assert "localhost/airflow-mlops-drift:no-such-tag" in err["message"] and "make images" in err["message"]


def test_the_drift_watcher_checks_its_windows_in_drift_image_containers(
    tmp_path, monkeypatch, docker, docker_host
):
    import asyncio

    sys.path.insert(0, str(REPO / "tests" / "unit" / "triggers"))
    from test_drift_trigger import WINDOW, deploy, flight_samples, log_requests, run_until, trigger

    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW__MLOPS__EXECUTION_MODE", "docker")
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    # no drift runtime on this "host": only the image can run the check
    monkeypatch.setenv("AIRFLOW__MLOPS__RUNTIMES_DIR", str(tmp_path / "no-runtimes"))
    from airflow_mlops.hooks.seldon import SeldonHook

    flights = flight_samples()
    reference = tmp_path / "reference.parquet"
    flights["reference"].to_parquet(reference, index=False)
    deploy("d", str(reference))
    log_requests(SeldonHook.inference_log_dir("d"), flights["july"], WINDOW)

    (event,) = asyncio.run(run_until(trigger(), lambda found: found, seconds=600))
    assert event["is_drift"] is True and "temp" in event["drifted_features"], event
    report = json.loads(Path(event["report"]).read_text())
    assert report["is_drift"] is True and Path(event["report"]).stat().st_uid == os.getuid()
    # the drift worker (local mode's) was never started, and the window's container is gone
    assert not (tmp_path / "data" / "drift" / "worker" / "worker.json").exists()
    assert not [
        c.name
        for c in docker.containers.list(all=True, ignore_removed=True)
        if c.name.startswith("mlops-drift-watch-d")
    ]
