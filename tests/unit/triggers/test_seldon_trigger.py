"""``SeldonDeploymentTrigger``: Kubernetes mode against the fake API server, local mode for real.

Local mode uses a real HTTP server on 127.0.0.1 answering ``/health/ping`` and real child
processes (``sleep``) as the model server's and the router's; killing one must fail the
deployment. The routing is written by :mod:`airflow_mlops.serving.state`, as the hook writes it
(``tests/unit/operators/test_seldon_operators.py`` kills the real router of a real deployment).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubernetes"))

from fake_apiserver import FakeKubeApiServer, Scenario  # noqa: E402

CONN_ID = "k8s_fake_seldon_trigger"
NAMESPACE = "serving"
SDEP = {
    "apiVersion": "machinelearning.seldon.io/v1",
    "kind": "SeldonDeployment",
    "metadata": {"name": "flights", "namespace": NAMESPACE},
    "spec": {"predictors": [{"name": "main", "traffic": 100, "graph": {"name": "model"}}]},
}


def _trigger(**kwargs):
    from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

    args = dict(deployment_name="flights", mode="kubernetes", namespace=NAMESPACE, kubernetes_conn_id=CONN_ID)
    return SeldonDeploymentTrigger(**{**args, "poll_interval": 0.05, **kwargs})


def _events(trigger, limit: float = 30) -> list:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), limit))


# --- kubernetes mode -------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch):
    with FakeKubeApiServer() as server:
        conn = {"conn_type": "kubernetes", "extra": {"kube_config": server.kubeconfig(NAMESPACE)}}
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        yield server


def test_kubernetes_polls_creating_until_available_and_yields_one_event(fake):
    fake.scenario = Scenario(seldon_creating_polls=3, seldon_outcome="Available")
    fake.put(SDEP)

    events = _events(_trigger())

    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success" and payload["state"] == "Available"
    assert (payload["deployment_name"], payload["mode"], payload["namespace"]) == (
        "flights",
        "kubernetes",
        NAMESPACE,
    )
    # seldon-core 1.17.1's address: the first predictor's Service, <sdep>-<predictor>, port 8000
    assert payload["endpoint"] == "http://flights-main.serving.svc.cluster.local:8000/api/v1.0/predictions"
    assert payload["message"]
    assert len(fake.calls("GET", "seldondeployments")) == 4  # Creating ×3, then Available


def test_kubernetes_reports_failed_with_the_operators_description(fake):
    fake.scenario = Scenario(seldon_creating_polls=0, seldon_outcome="Failed", seldon_description="boom")
    fake.put(SDEP)
    (event,) = _events(_trigger())
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert event.payload["message"] == "boom"


def test_kubernetes_stale_status_of_an_older_generation_is_not_trusted(fake):
    stale = json.loads(json.dumps(SDEP))
    stale["metadata"]["generation"] = 2
    fake.put(stale, status={"state": "Available", "observedGeneration": 1})
    (event,) = _events(_trigger(timeout_at=time.time() + 0.3))
    assert (event.payload["status"], event.payload["state"]) == ("timeout", "Creating")
    assert "has not processed generation 2" in event.payload["message"]


def test_kubernetes_missing_object_fails_and_a_passed_deadline_times_out(fake):
    (event,) = _events(_trigger())
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert "does not exist" in event.payload["message"]

    fake.scenario = Scenario(seldon_creating_polls=10_000)
    fake.put(SDEP)
    (event,) = _events(_trigger(timeout_at=time.time() + 0.3))
    assert (event.payload["status"], event.payload["state"]) == ("timeout", "Creating")


def test_kubernetes_namespace_defaults_to_the_connections(fake, monkeypatch):
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": fake.kubeconfig(), "namespace": NAMESPACE}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    fake.put(SDEP)
    (event,) = _events(_trigger(namespace=None))
    assert (event.payload["status"], event.payload["namespace"]) == ("success", NAMESPACE)
    assert fake.calls("GET", "seldondeployments")[0].path.startswith(
        f"/apis/machinelearning.seldon.io/v1/namespaces/{NAMESPACE}/"
    )


def test_kubernetes_gives_up_after_repeated_connection_errors(monkeypatch):
    server = FakeKubeApiServer()
    kubeconfig = server.kubeconfig()  # an address nothing listens on: the server never starts
    server._server.server_close()
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    (event,) = _events(_trigger(max_errors=2), limit=60)
    assert (event.payload["status"], event.payload["state"]) == ("error", "Unknown")


# --- serialisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(timeout_at=1_900_000_000.0, max_errors=5),
        dict(mode="local", namespace=None, data_dir="/tmp/x", expected_version="4", missing_grace=1.5),
    ],
)
def test_serialize_round_trip_recreates_an_equal_trigger(kwargs):
    from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

    trigger = _trigger(**kwargs)
    classpath, serialized = trigger.serialize()
    assert classpath == "airflow_mlops.triggers.seldon.SeldonDeploymentTrigger"
    json.dumps(serialized)  # only plain values survive the metadata DB
    assert set(serialized) == set(inspect.signature(SeldonDeploymentTrigger.__init__).parameters) - {"self"}
    module, _, name = classpath.rpartition(".")
    again = getattr(__import__(module, fromlist=[name]), name)(**serialized)
    assert again.serialize() == (classpath, serialized)


def test_bad_mode_is_refused():
    from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

    with pytest.raises(ValueError, match="mode must be one of"):
        SeldonDeploymentTrigger(deployment_name="flights", mode="docker")


# --- local mode -------------------------------------------------------------------------


class PingServer:
    """A real HTTP server on 127.0.0.1: ``/health/ping`` answers ``codes`` in turn, then the last one."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes) or [200]
        self.pings = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/health/ping":
                    self.send_error(404)
                    return
                code = server.codes[min(server.pings, len(server.codes) - 1)]
                server.pings += 1
                body = b"pong" if code == 200 else b"not ready"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> PingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """``[mlops] data_dir`` (what ``settings.data_dir()`` reads) pointed at a fresh folder."""
    path = tmp_path / "mlops"
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(path))
    return path


@pytest.fixture
def server_process():
    """A real child process standing in for the model server (its pid goes into current.json)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _write_current(data_dir: Path, endpoint: str, server, router=None, version: str = "3", **record) -> Path:
    """The routing of deployment ``flights``: ``server``'s process as its main predictor, behind
    ``router``'s process when given (both answer at ``endpoint``)."""
    from airflow_mlops.serving.state import EMPTY, DeploymentStore, process_record

    main = {
        **process_record(server.pid),
        "role": "main",
        "traffic": 100,
        "version": version,
        "endpoint": endpoint,
    }
    routed = process_record(router.pid, endpoint=endpoint) if router is not None else None
    store = DeploymentStore.of(data_dir, "flights")
    store.write(EMPTY.routing("flights", [{**main, **record}], routed))
    return store.current_path


def _local(**kwargs):
    return _trigger(mode="local", namespace=None, **kwargs)


def test_local_is_available_once_the_endpoint_answers_ping(data_dir, server_process):
    with PingServer(503, 503, 200) as ping:
        _write_current(data_dir, ping.url, server_process)
        (event,) = _events(_local())
    payload = event.payload
    assert (payload["status"], payload["state"], payload["mode"]) == ("success", "Available", "local")
    assert payload["deployment_name"] == "flights" and payload["endpoint"] == ping.url
    assert "version 3" in payload["message"]
    assert ping.pings == 3


def test_local_fails_when_the_model_server_process_dies(data_dir, server_process):
    with PingServer(503) as ping:
        _write_current(data_dir, ping.url, server_process)
        trigger = _local()

        async def run_and_kill():
            async def kill_soon():
                while ping.pings < 2:  # it is being polled...
                    await asyncio.sleep(0.02)
                server_process.kill()  # ...when the server dies (a zombie until reaped counts as dead)

            killer = asyncio.create_task(kill_soon())
            events = [event async for event in trigger.run()]
            await killer
            return events

        (event,) = asyncio.run(asyncio.wait_for(run_and_kill(), 30))
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert (
        f"model server of deployment 'flights' (pid {server_process.pid}) is not running"
        in (event.payload["message"])
    )


def test_local_fails_on_a_dead_router(data_dir, server_process):
    router = subprocess.Popen(["sleep", "300"])
    try:
        with PingServer(200) as ping:
            _write_current(data_dir, ping.url, server_process, router=router)
            router.kill()
            router.wait()
            (event,) = _events(_local())
    finally:
        router.kill()
        router.wait()
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert f"router of deployment 'flights' (pid {router.pid}) is not running" in event.payload["message"]
    assert ping.pings == 0


def test_local_fails_when_the_recorded_pid_now_names_another_process(data_dir, server_process):
    """A pid is recorded with its process's start time: the same pid reused by another process
    (here: a live process whose start time differs from the record's) is not the server."""
    with PingServer(200) as ping:
        _write_current(data_dir, ping.url, server_process, pid_start=1)
        (event,) = _events(_local())
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert f"(pid {server_process.pid}) is not running" in event.payload["message"]
    assert ping.pings == 0


def test_local_missing_deployment_fails_after_the_grace(data_dir):
    started = time.monotonic()
    (event,) = _events(_local(missing_grace=0.3))
    assert time.monotonic() - started >= 0.3
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert "no deployment 'flights'" in event.payload["message"]


def test_local_waits_for_the_expected_version_and_times_out(data_dir, server_process, tmp_path):
    with PingServer(200) as ping:
        _write_current(data_dir, ping.url, server_process)
        (event,) = _events(_local(expected_version="4", timeout_at=time.time() + 0.3))
        assert (event.payload["status"], event.payload["state"]) == ("timeout", "Creating")
        assert "serving version 3, waiting for 4" in event.payload["message"]
        assert ping.pings == 0

        # an explicit data_dir wins over the configured one
        other = tmp_path / "elsewhere"
        _write_current(other, ping.url, server_process, version="4")
        (event,) = _events(_local(expected_version="4", data_dir=str(other)))
        assert event.payload["status"] == "success"


def test_local_endpoint_that_never_answers_times_out(data_dir, server_process):
    with PingServer() as ping:
        url = ping.url
    # the server is closed: connection refused on every ping, the process is alive
    _write_current(data_dir, url, server_process)
    (event,) = _events(_local(timeout_at=time.time() + 0.3))
    assert (event.payload["status"], event.payload["state"]) == ("timeout", "Creating")
    assert "ConnectError" in event.payload["message"]


def test_local_unreadable_state_fails_at_once_as_the_synchronous_check_does(data_dir):
    from airflow_mlops.hooks.seldon import SeldonHook

    path = data_dir / "deployments" / "flights" / "current.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    (event,) = _events(_local(missing_grace=60))
    assert (event.payload["status"], event.payload["state"]) == ("failed", "Failed")
    assert "state of deployment 'flights' is unreadable" in event.payload["message"]
    assert SeldonHook().local_status("flights") == ("Failed", event.payload["message"])
