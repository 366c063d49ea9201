"""``docker/compose.yaml`` started the way docs/deployment.md says: ``scripts/compose.sh up``.

A stack of its own (project name, folder and ports of this test): PostgreSQL and Redis containers,
the MLflow server and Airflow's components from the ``airflow`` image, the CeleryExecutor, the FAB
auth manager, ``[mlops] execution_mode = docker``. Logged in as the admin the script created:

* every component reports healthy, the checkout's DAGs are parsed without an import error and the
  MLOps plugin is loaded;
* the example pipeline, unpaused as a user does, runs by the scheduler on the Celery worker with
  every task a success: ``train`` in a training-image container, ``detect_drift`` in a drift-image
  container, the model registered in the compose MLflow (on PostgreSQL), the deployment's model
  server a serving-image container answering predictions for real rows through the stable address;
* a killed model-server container (OOM killer, ``docker kill``) is started again by the
  deployment's supervisor (a process of the worker's container) and the stable address answers;
* ``scripts/compose.sh down`` stops that model server and removes the stack's containers.

(Docker mode under an Airflow that is not in containers — ``make demo``'s stack with
``AIRFLOW__MLOPS__EXECUTION_MODE=docker`` — runs the same hooks; ``test_docker_mode.py`` runs its
operators and the drift watcher one by one.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "dags"))
from stack import Stack, free_port  # noqa: E402

pytestmark = pytest.mark.containers
PIPELINE = "flights_delay_pipeline"
SERVICES = {"postgres", "redis", "mlflow", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}  # fmt: skip

if shutil.which("podman") is None:
    pytest.skip("podman is not installed: run `make images` (as root on Debian)", allow_module_level=True)


@dataclass
class ComposeStack(Stack):
    """The REST helpers of :class:`Stack` against a compose stack (its admin, its folder)."""

    project: str = ""
    username: str = "admin"
    postgres_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)

    @property
    def password(self) -> str:
        return self.secrets()["AIRFLOW_ADMIN_PASSWORD"]

    def secrets(self) -> dict[str, str]:
        lines = (self.home / "secrets.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def compose(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(REPO / "scripts" / "compose.sh"), *args],
            env=self.compose_env(),
            capture_output=True,
            text=True,
            timeout=timeout,  # a backstop for a hung tool, not a speed bound
        )

    def compose_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        env.update(
            MLOPS_COMPOSE_DIR=str(self.home),
            MLOPS_COMPOSE_PROJECT=self.project,
            AIRFLOW_PORT=str(self.airflow_port),
            MLFLOW_PORT=str(self.mlflow_port),
            POSTGRES_PORT=str(self.postgres_port),
            REDIS_PORT=str(self.redis_port),
            WORKER_LOG_PORT=str(self.worker_log_port),
            TRIGGERER_LOG_PORT=str(self.trigger_log_port),
        )
        return env

    def _check_alive(self) -> None:  # the engine restarts what dies; the run's state tells
        pass


def containers(docker, project: str) -> dict[str, object]:
    found = docker.containers.list(
        all=True, ignore_removed=True, filters={"label": f"io.podman.compose.project={project}"}
    )
    found += docker.containers.list(
        all=True, ignore_removed=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {c.labels.get("com.docker.compose.service") or c.name: c for c in found}


def serving_containers(docker) -> list:
    return [
        c
        for c in docker.containers.list(all=True, ignore_removed=True)
        if c.name.startswith("mlops-serving-flights-delay.")
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_host, docker):
    home = tmp_path_factory.mktemp("compose").resolve()
    s = ComposeStack(
        home=home,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        project=f"mlops-test-{uuid.uuid4().hex[:8]}",
    )
    started = s.compose("up")
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-5000:]
        yield s
    finally:
        before = [c.name for c in serving_containers(docker) if c.status == "running"]
        stopped = s.compose("down", "--volumes")
        left = containers(docker, s.project)
        still = [c.name for c in serving_containers(docker) if c.status == "running"]
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not left, f"compose down left {sorted(left)}"
        assert not still, f"model servers still running after compose down: {still} (were {before})"


@pytest.fixture(scope="module")
def run(stack) -> dict:
    stack.wait_for_dag(PIPELINE)
    # what a user does in the UI: unpause; the scheduler creates the latest month's run itself
    stack.api("PATCH", f"/dags/{PIPELINE}", json={"is_paused": False})
    found = stack.wait_for_new_run(PIPELINE, timeout=300, run_type="scheduled")
    found["state"] = stack.wait_run(PIPELINE, found["dag_run_id"], timeout=2400)
    return found


def test_every_service_runs_and_the_dags_and_plugin_load(stack, docker):
    running = {name for name, c in containers(docker, stack.project).items() if c.status == "running"}
    assert SERVICES <= running, sorted(running)
    health = requests.get(f"{stack.airflow_url}/api/v2/monitor/health", timeout=30).json()
    assert all(
        health[p]["status"] == "healthy" for p in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    )
    stack.wait_for_dag(PIPELINE)
    assert stack.api("GET", "/importErrors")["total_entries"] == 0
    dags = {d["dag_id"] for d in stack.api("GET", "/dags")["dags"]}
    assert {PIPELINE, "flights_delay_retrain", "flights_delay_rollback"} <= dags
    plugins = {p["name"] for p in stack.api("GET", "/plugins")["plugins"]}
    assert any("mlops" in name.lower() for name in plugins), plugins
    # the FAB auth manager: a wrong password gets no token
    refused = requests.post(
        f"{stack.airflow_url}/auth/token", json={"username": "admin", "password": "not-it"}, timeout=30
    )
    assert refused.status_code in (401, 403), refused.text


def test_the_pipeline_runs_on_the_celery_worker_with_the_runtimes_in_containers(stack, run, docker):
    run_id = run["dag_run_id"]
    tis = stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert run["state"] == "success", states
    assert all(state == "success" for state in states.values()), states
    assert {ti["queue"] for ti in tis} == {"default"}, "the Celery queue"

    assert "Running in the training container mlops-training-" in stack.task_log(PIPELINE, run_id, "train")
    assert "Running in the drift container mlops-drift-" in stack.task_log(PIPELINE, run_id, "detect_drift")

    registered = stack.xcom(PIPELINE, run_id, "register")
    model = requests.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/model-versions/get",
        params={"name": registered["name"], "version": registered["version"]},
        timeout=30,
    )
    assert model.ok, model.text

    deployed = stack.xcom(PIPELINE, run_id, "deploy")
    assert deployed["runtime"] == "docker", deployed
    running = [c for c in serving_containers(docker) if c.status == "running"]
    assert len(running) == 1, [(c.name, c.status) for c in serving_containers(docker)]

    import pandas as pd
    from airflow_mlops.hooks.seldon import seldon_payload
    from include.flights_pipeline import FEATURES

    table = stack.xcom(PIPELINE, run_id, "build_training_set")
    body = seldon_payload(pd.read_parquet(table["holdout"]).head(20)[FEATURES])
    answer = requests.post(deployed["predict_url"], json=body, timeout=30)
    assert answer.ok, answer.text
    scores = answer.json()["data"]["ndarray"]
    assert len(scores) == 20 and all(0.0 <= float(p) <= 1.0 for p in scores)


def answers(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/health/ping", timeout=2).ok
    except requests.RequestException:
        return False


def test_a_killed_model_server_container_is_started_again_by_the_supervisor(stack, run, docker):
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
        assert time.monotonic() < deadline, f"{killed.name} was not started again: {current.read_text()}"
        time.sleep(0.5)
    assert json.loads(current.read_text())["predictors"][0]["restarts"] >= 1
