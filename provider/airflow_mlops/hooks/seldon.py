"""Seldon Core deployments through a ``seldon`` connection.

Local mode runs the seldon-core 1.17 python microservice (``runtimes/seldon_model.py``) from
the *serving* runtime environment on this machine, bound to 127.0.0.1 by default. Each
deployment keeps a state file (``current.json``: pid, port, version) under
``[mlops] data_dir``/deployments/<name>, so a restarted scheduler or a retried task finds
what is already serving instead of starting a duplicate.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.exceptions import DeploymentError

if TYPE_CHECKING:
    import pandas as pd

PREDICT_PATH = "/api/v1.0/predictions"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) is not serving
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process for good."""
    try:
        # the command may contain spaces and parentheses: fields count from the last ')'
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def tracked_alive(record: dict[str, Any]) -> bool:
    """The process of a state record still runs (and is not another one that reused its pid)."""
    pid = record.get("pid")
    if not pid_alive(pid):
        return False
    started = record.get("pid_start")
    return started is None or process_start_time(pid) in (None, started)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _slim(predictor: dict[str, Any]) -> dict[str, Any]:
    return {
        k: predictor.get(k)
        for k in ("version", "model_name", "model_uri", "model_dir", "reference_path", "started_at")
    }


def _predictors(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The predictors of a routing state; a state written before routers existed had one server."""
    state = state or {}
    if "predictors" in state:
        return state["predictors"]
    return [{**state, "role": "main", "traffic": 100}] if state.get("pid") else []


def _main(state: dict[str, Any] | None) -> dict[str, Any] | None:
    return next((p for p in _predictors(state) if p.get("role") == "main"), None)


def _log_error(log_path: Path) -> str:
    """The first exception a server log reports: the cause (what follows is shutdown noise)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log."
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (errors or lines or ["empty log."])[0 if errors else -1]


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b:?")


def seldon_payload(df: pd.DataFrame) -> dict[str, Any]:
    """A Seldon protocol request body for the rows of ``df`` (missing values as JSON null)."""
    rows = df.astype("float64").to_numpy()
    return {
        "data": {
            "names": [str(c) for c in df.columns],
            "ndarray": [[None if v != v else float(v) for v in row] for row in rows],
        }
    }


class SeldonHook(BaseHook):
    """
    Deploy models with Seldon Core and call their endpoints.

    Connection extras: ``mode`` (``local`` default, or ``kubernetes``), ``namespace`` and
    ``kubernetes_conn_id`` (Kubernetes mode). ``host`` is the local bind address
    (default 127.0.0.1).

    :param seldon_conn_id: the ``seldon`` connection; when it does not exist, local mode on
        127.0.0.1 is assumed (the embedded default).
    :param runtimes_dir: where the ``serving`` runtime environment lives (default: config).
    """

    conn_name_attr = "seldon_conn_id"
    default_conn_name = "seldon_default"
    conn_type = "seldon"
    hook_name = "Seldon"

    def __init__(self, seldon_conn_id: str = default_conn_name, runtimes_dir: str | None = None) -> None:
        super().__init__()
        self.seldon_conn_id = seldon_conn_id
        self.runtimes_dir = runtimes_dir

    @cached_property
    def connection(self):
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.seldon_conn_id)
        except AirflowNotFoundException:
            if self.seldon_conn_id != self.default_conn_name:
                raise
            return None

    @property
    def mode(self) -> str:
        extras = self.connection.extra_dejson if self.connection else {}
        return (extras.get("mode") or "local").lower()

    @property
    def bind_host(self) -> str:
        return (self.connection.host if self.connection else None) or "127.0.0.1"

    # -- state of local deployments ---------------------------------------------------------
    @staticmethod
    def deployment_dir(name: str) -> Path:
        return settings.data_dir() / "deployments" / name

    @staticmethod
    def current_state(name: str) -> dict[str, Any] | None:
        """The routing state (``current.json``) of local deployment ``name``; None when never deployed."""
        path = SeldonHook.deployment_dir(name) / "current.json"
        return json.loads(path.read_text()) if path.exists() else None

    def current(self, name: str) -> dict[str, Any] | None:
        """The deployment's routing state (``current.json``), or None when never deployed."""
        return self.current_state(name)

    def _write_current(self, name: str, state: dict[str, Any]) -> None:
        # atomic: the router re-reads this file while requests flow
        _write_json(self.deployment_dir(name) / "current.json", state)

    def is_healthy(self, state: dict[str, Any] | None, timeout: float = 5) -> bool:
        """``state`` (a predictor, or a deployment's routing) has a live process answering its endpoint."""
        import requests

        if not state or not tracked_alive(state):
            return False
        try:
            return requests.get(f"{state['endpoint']}/health/ping", timeout=timeout).ok
        except requests.RequestException:
            return False

    def local_status(self, name: str) -> tuple[str, str]:
        """
        ``(state, message)`` of a local deployment, with Seldon's state names.

        ``Available``: router and main model server alive and answering; ``Creating``: alive but
        not answering yet; ``Failed``: never deployed, or a tracked process is gone.
        """
        state = self.current(name)
        if not state:
            return (
                "Failed",
                f"deployment {name!r} does not exist (no {self.deployment_dir(name)}/current.json)",
            )
        for record in [state.get("router"), *_predictors(state)]:
            if record and not tracked_alive(record):
                what = (
                    "router"
                    if record is state.get("router")
                    else f"model server of version {record['version']}"
                )
                return "Failed", f"the {what} of {name!r} (pid {record['pid']}) is not running"
        if self.is_healthy({**state, "pid": (state.get("router") or state)["pid"]}):
            return "Available", f"{name!r} serves version {state.get('version')} at {state['endpoint']}"
        return "Creating", f"{name!r} does not answer {state['endpoint']}/health/ping yet"

    # -- local model servers -----------------------------------------------------------------
    def start_local(
        self, name: str, model_dir: str, version: str, ready_timeout: float = 180
    ) -> dict[str, Any]:
        """Start a model server for ``model_dir`` on a new port and wait until it answers."""
        from airflow_mlops.hooks.runtime import RuntimeHook

        runtime = RuntimeHook("serving", self.runtimes_dir)
        host = self.bind_host
        http_port, metrics_port = free_port(host), free_port(host)
        workdir = self.deployment_dir(name) / "processes" / f"v{version}-{http_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        env = {
            "MODEL_URI": str(model_dir),
            "MODEL_VERSION": str(version),
            "MODEL_NAME": name,
            "INFERENCE_LOG_DIR": str(self.inference_log_dir(name)),
        }
        args = [
            runtime.python,
            str(settings.runtime_script("seldon_serve")),
            "--host",
            host,
            "seldon_model.MlflowModel",
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
            "--grpc-workers",
            "0",
            "--grpc-port",
            str(free_port(host)),
            "--workers",
            "1",
        ]
        with open(log_path, "ab") as log_file:
            # its own session: the server outlives this task process (and its process group)
            proc = runtime.start(args, env=env, cwd=str(workdir), stdout=log_file)
        state = {
            "name": name,
            "version": str(version),
            "pid": proc.pid,
            "pid_start": process_start_time(proc.pid),
            "host": host,
            "port": http_port,
            "endpoint": f"http://{host}:{http_port}",
            "model_dir": str(model_dir),
            "log": str(log_path),
            "started_at": time.time(),
        }
        # a record per process: a deploy killed before it switched leaves one to reap
        _write_json(workdir / "state.json", state)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self.is_healthy(state, timeout=2):
                return state
            time.sleep(0.5)
        self.stop_state(state)
        why = "exited" if proc.poll() is not None else f"did not become ready within {ready_timeout:.0f}s"
        raise DeploymentError(
            f"The model server for version {version} of {name} {why}: {_log_error(log_path)} "
            f"The previous deployment keeps serving. Server log: {log_path}"
        )

    def stop_state(self, state: dict[str, Any] | None, grace: float = 10) -> None:
        from airflow_mlops.hooks.runtime import stop_process_group

        if state and tracked_alive(state):
            stop_process_group(int(state["pid"]), grace)

    @staticmethod
    def inference_log_dir(name: str) -> Path:
        """Where every predictor of deployment ``name`` logs its predictions (Parquet, by hour)."""
        return SeldonHook.deployment_dir(name) / "inference_log"

    def reap_orphans(self, name: str) -> list[dict[str, Any]]:
        """
        Stop model servers of ``name`` that no routing refers to.

        A deploy whose task process was killed after starting a server but before switching
        to it leaves such a server behind; the next deploy (after a scheduler restart too)
        stops it, so nothing is orphaned.
        """
        state = self.current(name) or {}
        in_use = {p.get("pid") for p in [*_predictors(state), state.get("shadow") or {}]}
        reaped = []
        for record_path in sorted((self.deployment_dir(name) / "processes").glob("*/state.json")):
            record = json.loads(record_path.read_text())
            if record.get("pid") not in in_use and tracked_alive(record):
                self.log.info(
                    "Stopping orphaned model server %s (version %s)", record["pid"], record["version"]
                )
                self.stop_state(record)
                reaped.append(record)
        return reaped

    # -- the stable address ------------------------------------------------------------------
    def ensure_router(self, name: str, port: int | None = None, ready_timeout: float = 120) -> dict[str, Any]:
        """
        The router on the deployment's stable port: the running one, or a new one.

        The port is kept in ``router.json`` so a restarted router (after a reboot, or after
        its process was killed) comes back on the same address. Its start is cheap (standard
        library) unless the routing asks for a Feast lookup (``import feast`` takes ~20 s).
        """
        import subprocess
        import sys

        record_path = self.deployment_dir(name) / "router.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if record and (port is None or record["port"] == port) and self._router_answers(record):
            return record
        if record:
            self.stop_state(record)
        host = self.bind_host
        port = port or (record or {}).get("port") or free_port(host)
        self.deployment_dir(name).mkdir(parents=True, exist_ok=True)
        log_path = self.deployment_dir(name) / "router.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow_mlops.serving.router", "--state",
                 str(self.deployment_dir(name) / "current.json"), "--host", host, "--port", str(port)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        record = {
            "pid": proc.pid,
            "pid_start": process_start_time(proc.pid),
            "host": host,
            "port": port,
            "endpoint": f"http://{host}:{port}",
            "log": str(log_path),
        }
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if self._router_answers(record):
                _write_json(record_path, record)
                return record
            time.sleep(0.2)
        self.stop_state(record)
        raise DeploymentError(
            f"The router of {name} could not serve on {host}:{port}: {_log_error(log_path)} "
            f"Log: {log_path}. If the port is taken, pass another port= or free it."
        )

    def _router_answers(self, record: dict[str, Any]) -> bool:
        import requests

        if not tracked_alive(record):
            return False
        try:
            return requests.get(f"{record['endpoint']}/router/status", timeout=2).ok
        except requests.RequestException:
            return False

    # -- routing changes -----------------------------------------------------------------------
    def _routing(self, name: str, predictors: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
        previous = self.current(name) or {}
        router_path = self.deployment_dir(name) / "router.json"
        router = json.loads(router_path.read_text()) if router_path.exists() else None
        main = next(p for p in predictors if p["role"] == "main")
        state = {
            **previous,
            "name": name,
            "predictors": predictors,
            "router": router,
            # the stable address when a router runs, else the main server (older deployments)
            "endpoint": router["endpoint"] if router else main["endpoint"],
            "version": main["version"],
            "pid": main["pid"],
            "updated_at": time.time(),
            **changes,
        }
        self._write_current(name, state)
        return state

    def switch(
        self, name: str, new_state: dict[str, Any], drain_seconds: float = 2.0, **record: Any
    ) -> dict[str, Any] | None:
        """
        Blue/green: route all traffic to ``new_state``, then stop every server it replaces.

        The old servers are stopped ``drain_seconds`` after the routing changed, so requests
        already on their way finish; the router retries a refused connection on the new one.
        :return: the main predictor that was replaced, if any.
        """
        current = self.current(name) or {}
        old = [p for p in [*_predictors(current), current.get("shadow")] if p]
        previous = next((p for p in old if p.get("role") == "main"), None)
        history = [*current.get("history", []), *([_slim(previous)] if previous else [])][-10:]
        self._routing(
            name,
            [{**new_state, "role": "main", "traffic": 100, **record}],
            shadow=None,
            history=history,
            previous_version=(previous or {}).get("version"),
        )
        self._retire(old, new_state, drain_seconds)
        return previous

    def add_canary(
        self, name: str, new_state: dict[str, Any], traffic: int, shadow: bool = False, **record: Any
    ):
        """Route ``traffic`` % of requests to ``new_state`` (or a copy of all of them, as a shadow)."""
        current = self.current(name)
        main = _main(current)
        if main is None:
            raise DeploymentError(
                f"{name!r} has no version serving yet: deploy one with traffic=100 before a canary or shadow."
            )
        replaced = [
            p for p in [*_predictors(current), current.get("shadow")] if p and p.get("role") != "main"
        ]
        candidate = {
            **new_state,
            "role": "shadow" if shadow else "canary",
            "traffic": 0 if shadow else traffic,
            **record,
        }
        if shadow:
            self._routing(name, [{**main, "traffic": 100}], shadow=candidate)
        else:
            self._routing(name, [{**main, "traffic": 100 - traffic}, candidate], shadow=None)
        self._retire(replaced, new_state, drain_seconds=2.0)

    def promote_canary(self, name: str, drain_seconds: float = 2.0) -> dict[str, Any]:
        """The canary (or shadow) becomes the main predictor with all the traffic."""
        current = self.current(name) or {}
        candidate = next((p for p in _predictors(current) if p.get("role") == "canary"), None)
        candidate = candidate or current.get("shadow")
        if candidate is None:
            raise DeploymentError(f"{name!r} has no canary or shadow to promote.")
        if not self.is_healthy(candidate):
            raise DeploymentError(
                f"The canary of {name!r} (version {candidate['version']}) does not answer; not promoted. "
                "The main version keeps serving."
            )
        self.switch(name, {k: v for k, v in candidate.items() if k not in ("role", "traffic")}, drain_seconds)
        return candidate

    def _retire(self, old: list[dict[str, Any]], keep: dict[str, Any], drain_seconds: float) -> None:
        retiring = [p for p in old if p.get("pid") != keep.get("pid")]
        if retiring:
            time.sleep(drain_seconds)
        for predictor in retiring:
            self.stop_state(predictor)

    def record_rollout(self, name: str, outcome: dict[str, Any]) -> None:
        """Remember the outcome of the last rollout (shown by the MLOps page) without touching the routing."""
        current = self.current(name)
        if current is not None:
            self._write_current(name, {**current, "last_rollout": {**outcome, "at": time.time()}})

    def stop(self, name: str) -> None:
        current = self.current(name) or {}
        for record in [*_predictors(current), current.get("shadow"), current.get("router")]:
            self.stop_state(record)

    # -- calling an endpoint -------------------------------------------------------------------
    def predict(
        self, endpoint: str, df: pd.DataFrame, batch_size: int = 1000, timeout: float = 60, log: bool = True
    ):
        """
        Probabilities for the rows of ``df`` from a Seldon endpoint, in request batches.

        :param log: False tags the requests ``{"mlops_log": false}``: our model servers answer
            them without writing them to the inference log (rows that are not served traffic).
        """
        import numpy as np
        import requests

        out = []
        with requests.Session() as session:
            for start in range(0, len(df), batch_size):
                chunk = df.iloc[start : start + batch_size]
                body = seldon_payload(chunk)
                if not log:
                    body["meta"] = {"tags": {"mlops_log": False}}
                response = session.post(f"{endpoint}{PREDICT_PATH}", json=body, timeout=timeout)
                if not response.ok:
                    raise DeploymentError(
                        f"{endpoint} answered {response.status_code} to a prediction: {response.text[:500]}"
                    )
                values = np.asarray(response.json()["data"]["ndarray"], dtype=float)
                out.append(values.reshape(len(chunk), -1)[:, -1])
        return np.concatenate(out) if out else np.empty(0)

    def test_connection(self) -> tuple[bool, str]:
        """
        Local mode: the serving runtime exists, the bind host can be bound, and deployments answer.

        The deployment named in the connection extras (``deployment``) must have a current
        endpoint answering ``GET /health/ping``; without a name, every deployment under
        ``[mlops] data_dir``/deployments is pinged, and one whose server process is alive but
        does not answer fails the test (a stopped one is only reported).
        """
        if self.mode == "local":
            from airflow_mlops.hooks.runtime import RuntimeHook

            try:
                python = RuntimeHook("serving", self.runtimes_dir).python
            except Exception as err:
                return False, str(err)
            checks = [f"serving runtime found ({python})"]
            host = self.bind_host
            try:
                free_port(host)
            except OSError as err:
                return (
                    False,
                    f"Local mode: cannot bind to host {host!r} ({err}); set the host to a local address.",
                )
            checks.append(f"host {host} can be bound")
            ok, deployments = self._ping_deployments()
            return ok, f"Local mode: {'; '.join(checks + deployments)}."
        return self._test_kubernetes()

    def _test_kubernetes(self) -> tuple[bool, str]:
        """Kubernetes mode: the cluster answers and SeldonDeployments can be listed in the namespace."""
        from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook
        from airflow_mlops.kubernetes.seldon import SELDON_GROUP, SELDON_PLURAL, SELDON_VERSION

        extras = self.connection.extra_dejson if self.connection else {}
        hook = SeldonDeploymentHook(
            extras.get("kubernetes_conn_id") or "kubernetes_default", extras.get("namespace")
        )
        namespace = extras.get("namespace") or "the connection's default"
        try:
            namespace = hook.namespace
            listed = hook.kube.custom_object_client.list_namespaced_custom_object(
                SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL
            )
        except Exception as err:
            return False, (
                f"Kubernetes mode: cannot list SeldonDeployments in namespace {namespace!r} through "
                f"connection {hook.kubernetes_conn_id!r}: {type(err).__name__}: {str(err)[:300]}. Check the "
                "kubernetes connection, that Seldon Core's CRD is installed and that the service account "
                "may list it."
            )
        names = [item["metadata"]["name"] for item in listed.get("items", [])]
        return (
            True,
            f"Kubernetes mode: namespace {hook.namespace!r} reachable; SeldonDeployments: {names or 'none'}.",
        )

    def _ping_deployments(self, timeout: float = 2) -> tuple[bool, list[str]]:
        import requests

        named = (self.connection.extra_dejson.get("deployment") if self.connection else None) or None
        if named:
            names = [named]
        else:
            root = settings.data_dir() / "deployments"
            names = sorted(p.parent.name for p in root.glob("*/current.json")) if root.is_dir() else []
            if not names:
                return True, ["no deployment to ping"]
        ok, out = True, []
        for name in names:
            state = self.current(name)
            if not state or not state.get("endpoint"):
                ok = ok and not named
                out.append(f"deployment {name!r} has no current endpoint")
                continue
            endpoint = state["endpoint"]
            try:
                answered = requests.get(f"{endpoint}/health/ping", timeout=timeout).ok
                why = "" if answered else " (not OK)"
            except requests.RequestException as err:
                answered, why = False, f" ({type(err).__name__})"
            if answered:
                out.append(f"deployment {name!r} answers at {endpoint}")
            elif named or pid_alive(state.get("pid")):
                ok = False
                out.append(f"deployment {name!r} does NOT answer /health/ping at {endpoint}{why}")
            else:
                out.append(f"deployment {name!r} is stopped (last endpoint {endpoint})")
        return ok, out
