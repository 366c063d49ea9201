"""The example pipeline end to end with ``[mlops] execution_mode = docker``: nothing in the DAG changes.

A stack of its own (``scripts/stack.py``: MLflow server + Airflow's scheduler, dag-processor,
triggerer and API server) with ``AIRFLOW__MLOPS__EXECUTION_MODE=docker`` and the ``seldon``
connection in ``docker`` mode, the example pipeline DAG alone in its DAG folder. The scheduler
runs the pipeline by itself (unpaused at creation, ``@monthly``); the run must succeed with every
task run, and:

* ``train`` ran ``horovodrun`` in the training image, ``detect_drift`` ``drift_detect.py`` in the
  drift image (their task logs say so, naming the container);
* the deployment's model server is a container of the serving image, running while the stable
  address answers predictions for real rows; the deploy task's result says ``runtime: docker``;
* stopping the stack stops and removes that container.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "dags"))
from stack import Stack, free_port  # noqa: E402

pytestmark = pytest.mark.containers
PIPELINE = "flights_delay_pipeline"

if shutil.which("podman") is None:
    pytest.skip("podman is not installed: run `make images` (as root on Debian)", allow_module_level=True)


def serving_containers(docker) -> list:
    return [c for c in docker.containers.list(all=True) if c.name.startswith("mlops-serving-flights-delay.")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_host):
    runtimes = Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()
    home = tmp_path_factory.mktemp("docker-stack")
    dags = home / "dags"
    dags.mkdir()
    for part in ("include", "feature_repo"):
        shutil.copytree(REPO / "dags" / part, dags / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dags" / f"{PIPELINE}.py", dags)
    s = Stack(
        home=home,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        dags_folder=dags,
        runtimes_dir=runtimes,
        execution_mode="docker",
    )
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = docker_host  # the stack's processes inherit it
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


@pytest.fixture(scope="module")
def run(stack) -> dict:
    stack.wait_for_dag(PIPELINE)
    found = stack.wait_for_new_run(PIPELINE, timeout=300, run_type="scheduled")
    found["state"] = stack.wait_run(PIPELINE, found["dag_run_id"], timeout=1800)
    return found


def test_the_pipeline_succeeds_with_training_serving_and_drift_in_containers(stack, run, docker):
    run_id = run["dag_run_id"]
    states = stack.task_states(PIPELINE, run_id)
    assert run["state"] == "success", states
    assert all(state == "success" for state in states.values()), states

    train_log = stack.task_log(PIPELINE, run_id, "train")
    assert "Running in the training container mlops-training-" in train_log
    assert "/opt/mlops/venv/bin/horovodrun --gloo" in train_log
    drift_log = stack.task_log(PIPELINE, run_id, "detect_drift")
    assert "Running in the drift container mlops-drift-" in drift_log

    deployed = stack.xcom(PIPELINE, run_id, "deploy")
    assert deployed["runtime"] == "docker", deployed
    running = [c for c in serving_containers(docker) if c.status == "running"]
    assert len(running) == 1, [(c.name, c.status) for c in serving_containers(docker)]
    assert running[0].image.tags and running[0].image.tags[0].startswith("localhost/airflow-mlops-serving")

    table = stack.xcom(PIPELINE, run_id, "build_training_set")
    import pandas as pd
    from airflow_mlops.hooks.seldon import seldon_payload
    from include.flights_pipeline import FEATURES

    body = seldon_payload(pd.read_parquet(table["holdout"]).head(20)[FEATURES])  # NaN travels as null
    answer = requests.post(deployed["predict_url"], json=body, timeout=30)
    assert answer.ok, answer.text
    scores = answer.json()["data"]["ndarray"]
    assert len(scores) == 20 and all(0.0 <= float(p) <= 1.0 for p in scores)


def test_a_killed_model_server_container_is_started_again_by_the_supervisor(stack, run, docker):
    """The container is killed (OOM killer, ``docker kill``): the serving supervisor sees its
    process end and starts it again on its port; the stable address answers again."""
    deployed = stack.xcom(PIPELINE, run["dag_run_id"], "deploy")
    current = stack.data_dir / "deployments" / "flights-delay" / "current.json"
    (killed,) = [c for c in serving_containers(docker) if c.status == "running"]
    killed.kill()
    deadline = time.monotonic() + 300  # a backstop for a broken supervisor, not a speed bound
    while True:
        again = [c for c in serving_containers(docker) if c.name == killed.name and c.id != killed.id]
        server = json.loads(current.read_text())["predictors"][0]["endpoint"]
        if again and again[0].status == "running" and answers(server) and answers(deployed["endpoint"]):
            break
        assert time.monotonic() < deadline, f"{killed.name} was not started again: {stack.supervisor_state()}"
        time.sleep(0.5)
    record = json.loads(current.read_text())
    assert record["predictors"][0]["restarts"] >= 1, record


def answers(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/health/ping", timeout=2).ok
    except requests.RequestException:
        return False


def test_stopping_the_stack_removes_the_serving_container(stack, run, docker):
    assert serving_containers(docker), "no serving container to stop"
    stack.stop()
    assert serving_containers(docker) == []
