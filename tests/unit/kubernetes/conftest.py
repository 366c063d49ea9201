"""Fixtures of the Kubernetes-mode tests.

* ``fake``: the fake Kubernetes API server and a ``kubernetes`` connection to it (Kubernetes is
  the one component that is faked);
* ``mlflow``: a real MLflow tracking server (``tests/support/mlflow_server.py``, one per session) and the
  ``mlflow_default`` connection to it, given as ``AIRFLOW_CONN_MLFLOW_DEFAULT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_apiserver, k8s_schema
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))  # mlflow_server

from fake_apiserver import FakeKubeApiServer, Scenario  # noqa: E402
from mlflow_server import shared_server  # noqa: E402

CONN_ID = "k8s_fake"
NAMESPACE = "training"
MLFLOW_CONN_ID = "mlflow_default"
#: what ``MlflowHook.mlflow`` writes into ``os.environ``; restored after each test
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


@pytest.fixture
def fake(monkeypatch):
    """A fake API server, and the Airflow connection ``k8s_fake`` pointing at it (kube config extra)."""
    with FakeKubeApiServer(Scenario(running_polls=2)) as server:
        conn = {
            "conn_type": "kubernetes",
            "extra": {"kube_config": server.kubeconfig(), "namespace": NAMESPACE},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The real MLflow server (already started by ``start_jobs`` when the module defines it)."""
    server = shared_server(tmp_path_factory.mktemp("mlflow-server"))
    # An MlflowClient's first request loads MLflow's request-header plugins (feast's among them,
    # ~10 s): load them here, while the server is still starting, rather than in the first test.
    import mlflow.tracking.request_header.registry  # noqa: F401

    try:
        yield server.wait_healthy()
    finally:
        server.stop()


class MlflowTracking:
    """The real server's URL, an ``MlflowClient`` on it, and the ``mlflow_default`` connection."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self._monkeypatch = monkeypatch
        self.connect()

    def connect(self, login: str | None = None, password: str | None = None) -> None:
        """(Re)point ``AIRFLOW_CONN_MLFLOW_DEFAULT`` at the server, with credentials if given."""
        conn = {"conn_type": "mlflow", "host": self.url, "extra": {"experiment": "flights_delay"}}
        if login is not None:
            conn["login"] = login
        if password is not None:
            conn["password"] = password
        self._monkeypatch.setenv(f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}", json.dumps(conn))

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture
def mlflow(mlflow_server, monkeypatch):
    """The ``mlflow_default`` connection to the real server; MLflow's env variables restored after."""
    saved = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        yield MlflowTracking(mlflow_server.url, monkeypatch)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FakeTI:
    """The task-instance fields the operator reads, and the XComs it pushes."""

    def __init__(self, run_id: str = "manual__2026-01-01", try_number: int = 1) -> None:
        self.dag_id = "flights"
        self.run_id = run_id
        self.task_id = "train"
        self.map_index = -1
        self.try_number = try_number
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def make_context(run_id: str = "manual__2026-01-01", try_number: int = 1) -> dict:
    return {"ti": FakeTI(run_id, try_number), "dag": SimpleNamespace(dag_id="flights")}


def kill_while_waiting(op, context: dict) -> list[BaseException]:
    """Run ``op.execute(context)`` in a thread, call ``op.on_kill()`` once it waits for its job (as
    Airflow does when the task is stopped), and return what ``execute`` raised then."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context)
        except BaseException as err:  # the job disappears under the waiting operator
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(250):
        if op._job is not None:
            break
        thread.join(0.02)
    assert op._job is not None, "the operator never started waiting"
    op.on_kill()
    thread.join(5)
    return errors
