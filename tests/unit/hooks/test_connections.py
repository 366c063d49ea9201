"""``test_connection`` of the MLflow, Feast and Seldon hooks against real servers and stores.

* MLflow: a real ``mlflow server`` (``tests/support/mlflow_server.py``), a free port nobody
  listens on, a connection without host;
* Feast: a real SQLite store (the example feature repo applied), a registry path that does
  not exist, a Redis online store on 127.0.0.1:6379 and one on a closed port;
* Seldon (local mode, in-process): the bind host, a deployment answering ``/health/ping``
  (a small HTTP server of this process), one that does not, an address that cannot be bound.

MLflow and Feast run in one background interpreter (this file run as a script: ``import
feast`` takes ~20 s, the MLflow server ~10-20 s to come up) that dumps each hook's answer.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

JOB = "hook-connections"
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


# -- the background job (MLflow + Feast) ---------------------------------------------------------


def _conn(conn_id: str, **fields) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)


def run_job(work: Path, result_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "support"))
    from mlflow_server import MlflowServer

    server = MlflowServer(work / "mlflow").start()
    result: dict = {}
    try:
        result["feast"] = feast_checks(work)  # while the server comes up
        server.wait_healthy()
        from airflow_mlops.hooks.mlflow import MlflowHook

        _conn("mlflow_up", conn_type="mlflow", host=server.url)
        _conn("mlflow_down", conn_type="mlflow", host=f"http://127.0.0.1:{free_port()}")
        _conn("mlflow_no_host", conn_type="mlflow")
        _conn("mlflow_file", conn_type="mlflow", host="file:///tmp/mlruns")
        result["mlflow"] = {
            name: list(MlflowHook(f"mlflow_{name}").test_connection())
            for name in ("up", "down", "no_host", "file")
        }
        result["mlflow_url"] = server.url
    finally:
        server.stop()
    result_path.write_text(json.dumps(result))


def feast_checks(work: Path) -> dict:
    from airflow_mlops.hooks.feast import FeastHook

    base = {"repo_path": str(REPO / "dags" / "feature_repo"), "project": f"conn_{os.getpid()}"}
    sqlite = {
        **base,
        "registry_path": str(work / "feast" / "registry.db"),
        "online_store_path": str(work / "feast" / "online.db"),
    }
    _conn("feast_sqlite", conn_type="feast", extra=sqlite)
    FeastHook("feast_sqlite").apply()
    _conn("feast_no_registry", conn_type="feast", extra={**sqlite, "registry_path": str(work / "none.db")})
    redis = {**sqlite, "online_store": "redis", "redis_connection_string": "127.0.0.1:6379,db=0"}
    _conn("feast_redis", conn_type="feast", extra=redis)
    closed = {**redis, "redis_connection_string": f"127.0.0.1:{free_port()},db=0,password=s3cret"}
    _conn("feast_redis_down", conn_type="feast", extra=closed)
    out = {}
    for name in ("sqlite", "no_registry", "redis", "redis_down"):
        out[name] = list(FeastHook(f"feast_{name}").test_connection())
    out["views"] = len(FeastHook("feast_sqlite").store.list_feature_views())
    return out


def start_jobs(jobs) -> None:
    work = jobs.workdir(JOB)
    jobs.submit(
        JOB,
        [jobs.python, Path(__file__), work, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home", PYTHONUNBUFFERED="1"),
        timeout=300,
    )


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    start_jobs(jobs)
    jobs.result(JOB).check()
    return json.loads((jobs.workdir(JOB) / "result.json").read_text())


# -- MLflow ----------------------------------------------------------------------------------------


def test_mlflow_reaches_the_real_tracking_server(job):
    ok, message = job["mlflow"]["up"]
    assert ok, message
    assert job["mlflow_url"] in message and "REST API answers" in message


def test_mlflow_unreachable_server_fails_with_the_address(job):
    ok, message = job["mlflow"]["down"]
    assert not ok
    assert "not reachable" in message and "http://127.0.0.1:" in message


def test_mlflow_connection_without_host_or_with_a_file_store_is_refused(job):
    ok, message = job["mlflow"]["no_host"]
    assert not ok and "has no host" in message
    ok, message = job["mlflow"]["file"]
    assert not ok and "not an MLflow tracking server" in message


# -- Feast -----------------------------------------------------------------------------------------


def test_feast_sqlite_store_lists_the_applied_feature_views(job):
    ok, message = job["feast"]["sqlite"]
    assert ok, message
    assert job["feast"]["views"] > 0
    assert f"{job['feast']['views']} feature view(s)" in message and "SQLite online store" in message


def test_feast_missing_registry_is_not_created_silently(job):
    ok, message = job["feast"]["no_registry"]
    assert not ok and "does not exist" in message and "none.db" in message


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_feast_redis_online_store_answers_ping(job):
    ok, message = job["feast"]["redis"]
    assert ok, message
    assert "answers PING" in message


def test_feast_closed_redis_port_fails_and_hides_the_password(job):
    ok, message = job["feast"]["redis_down"]
    assert not ok and "does not answer PING" in message
    assert "s3cret" not in message and "password=***" in message


# -- Seldon (local mode, in-process) ---------------------------------------------------------------


class _Ping(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health/ping" else 404)
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def seldon(tmp_path, monkeypatch):
    """A serving runtime folder (its python a link to this one) and an empty data_dir."""
    runtimes = tmp_path / "runtimes"
    (runtimes / "serving" / "bin").mkdir(parents=True)
    (runtimes / "serving" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path / "data"))

    def make(conn_id: str, host: str | None = "127.0.0.1", **extra):
        from airflow_mlops.hooks.seldon import SeldonHook

        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps({"conn_type": "seldon", "host": host, "extra": {"mode": "local", **extra}}),
        )
        return SeldonHook(conn_id, runtimes_dir=str(runtimes))

    return make


def write_state(name: str, endpoint: str, pid: int) -> None:
    """A routing whose main model server is process ``pid`` at ``endpoint`` (no router)."""
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.serving.state import EMPTY

    main = {"role": "main", "traffic": 100, "version": "1", "pid": pid, "endpoint": endpoint}
    SeldonHook.store(name).write(EMPTY.routing(name, [main], None))


def test_seldon_local_checks_runtime_and_bind_host(seldon):
    ok, message = seldon("seldon_plain").test_connection()
    assert ok, message
    assert "serving runtime found" in message and "host 127.0.0.1 can be bound" in message
    assert "no deployment to ping" in message


def test_seldon_missing_runtime_fails(seldon, tmp_path):
    from airflow_mlops.hooks.seldon import SeldonHook

    seldon("seldon_noruntime")
    ok, message = SeldonHook("seldon_noruntime", runtimes_dir=str(tmp_path / "nowhere")).test_connection()
    assert not ok and "serving" in message


def test_seldon_unbindable_host_fails_with_a_clear_message(seldon):
    # TEST-NET-1 (RFC 5737): never an address of this machine
    ok, message = seldon("seldon_badhost", host="192.0.2.1").test_connection()
    assert not ok
    assert "cannot bind to host '192.0.2.1'" in message


def test_seldon_named_deployment_answers_ping(seldon, endpoint):
    write_state("flights", endpoint, os.getpid())
    ok, message = seldon("seldon_named", deployment="flights").test_connection()
    assert ok, message
    assert f"deployment 'flights' answers at {endpoint}" in message


def test_seldon_named_deployment_not_answering_fails(seldon):
    write_state("flights", f"http://127.0.0.1:{free_port()}", os.getpid())
    ok, message = seldon("seldon_named_down", deployment="flights").test_connection()
    assert not ok and "'flights' does NOT answer /health/ping" in message
    ok, message = seldon("seldon_named_missing", deployment="nothing").test_connection()
    assert not ok and "'nothing' has no current endpoint" in message


def test_seldon_pings_every_deployment_under_data_dir(seldon, endpoint):
    write_state("up", endpoint, os.getpid())
    stopped = f"http://127.0.0.1:{free_port()}"
    write_state("stopped", stopped, 0)  # no process: reported, not a failure
    ok, message = seldon("seldon_all").test_connection()
    assert ok, message
    assert f"deployment 'up' answers at {endpoint}" in message
    assert f"deployment 'stopped' is stopped (last endpoint {stopped})" in message
    # a live server process that does not answer is a failure
    write_state("hung", f"http://127.0.0.1:{free_port()}", os.getpid())
    ok, message = seldon("seldon_all").test_connection()
    assert not ok and "'hung' does NOT answer" in message


if __name__ == "__main__":
    run_job(Path(sys.argv[1]), Path(sys.argv[2]))
