"""Fixtures of the registry tests: a real MLflow server, real flight models logged to it.

The server is ``tests/support/mlflow_server.py``'s (one per session, shared with the
Kubernetes-mode tests when both run); test modules start it as soon as collection ends
(``start_jobs``) because it takes ~15 s to come up.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # flights_models
sys.path.insert(0, str(HERE.parents[1] / "support"))  # mlflow_server

import flights_models  # noqa: E402
from mlflow_server import shared_server  # noqa: E402

#: what ``MlflowHook.mlflow`` writes into ``os.environ``; restored after each test
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def start_server(jobs):
    """The session's MLflow server (started on the first call; later calls return it)."""
    return shared_server(jobs.workdir("mlflow-server"))


@pytest.fixture(scope="session")
def mlflow_url(jobs) -> str:
    server = start_server(jobs)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    try:
        yield server.wait_healthy().url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    saved = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def tracking(mlflow_url, monkeypatch):
    """``mlflow_default`` pointing at the real server (as Airflow reads it: an env connection)."""
    conn = {"conn_type": "mlflow", "host": mlflow_url, "extra": {"experiment": "flights_delay"}}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    from mlflow import MlflowClient

    return SimpleNamespace(url=mlflow_url, client=MlflowClient(tracking_uri=mlflow_url))


@pytest.fixture(scope="session")
def runs(mlflow_url) -> dict[str, str]:
    """One run per kind of :data:`flights_models.MODELS`, logged once: kind -> run id."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        return {kind: flights_models.log_flights_model(kind, mlflow_url) for kind in flights_models.MODELS}
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def holdout(tmp_path_factory) -> str:
    return str(flights_models.write_holdout(tmp_path_factory.mktemp("holdout") / "holdout.parquet"))


@pytest.fixture
def model_name(request) -> str:
    """A registered-model name of its own for each test (tests share the server)."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "_").replace("]", "_")


class FakeTI:
    """The task-instance fields the operators read, and the XComs they push."""

    def __init__(self, task_id: str = "register", run_id: str = "manual__2026-01-01") -> None:
        self.dag_id = "flights_delay_pipeline"
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = -1
        self.try_number = 1
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


@pytest.fixture
def make_context():
    def make(task_id: str = "register", run_id: str = "manual__2026-01-01") -> dict:
        return {"ti": FakeTI(task_id, run_id), "outlet_events": {}}

    return make
