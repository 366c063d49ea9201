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

    def current(self, name: str) -> dict[str, Any] | None:
        path = self.deployment_dir(name) / "current.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write_current(self, name: str, state: dict[str, Any]) -> None:
        path = self.deployment_dir(name) / "current.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)

    def is_healthy(self, state: dict[str, Any] | None, timeout: float = 5) -> bool:
        import requests

        if not state or not pid_alive(state.get("pid")):
            return False
        try:
            return requests.get(f"{state['endpoint']}/health/ping", timeout=timeout).ok
        except requests.RequestException:
            return False

    # -- local microservice --------------------------------------------------------------------
    def start_local(
        self, name: str, model_dir: str, version: str, ready_timeout: float = 180
    ) -> dict[str, Any]:
        """Start a microservice for ``model_dir`` on a new port and wait until it answers."""
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
            "INFERENCE_LOG_DIR": str(self.deployment_dir(name) / "inference_log"),
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
            "host": host,
            "port": http_port,
            "endpoint": f"http://{host}:{http_port}",
            "model_dir": str(model_dir),
            "log": str(log_path),
            "started_at": time.time(),
        }
        (workdir / "state.json").write_text(json.dumps(state))
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self.is_healthy(state, timeout=2):
                return state
            time.sleep(1)
        self.stop_state(state)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DeploymentError(
            f"The new deployment of {name} (version {version}) did not become ready within "
            f"{ready_timeout:.0f}s; the previous deployment keeps serving. Server log {log_path}:\n{tail}"
        )

    def stop_state(self, state: dict[str, Any] | None, grace: float = 10) -> None:
        from airflow_mlops.hooks.runtime import stop_process_group

        if state and pid_alive(state.get("pid")):
            stop_process_group(int(state["pid"]), grace)

    def switch(self, name: str, new_state: dict[str, Any]) -> dict[str, Any] | None:
        """Make ``new_state`` the current deployment, then stop the one it replaces."""
        previous = self.current(name)
        self._write_current(name, {**new_state, "previous_version": (previous or {}).get("version")})
        if previous and previous.get("pid") != new_state.get("pid"):
            self.stop_state(previous)
        return previous

    def stop(self, name: str) -> None:
        self.stop_state(self.current(name))

    # -- calling an endpoint -------------------------------------------------------------------
    def predict(self, endpoint: str, df: pd.DataFrame, batch_size: int = 1000, timeout: float = 60):
        """Probabilities for the rows of ``df`` from a Seldon endpoint, in request batches."""
        import numpy as np
        import requests

        out = []
        with requests.Session() as session:
            for start in range(0, len(df), batch_size):
                chunk = df.iloc[start : start + batch_size]
                response = session.post(
                    f"{endpoint}{PREDICT_PATH}", json=seldon_payload(chunk), timeout=timeout
                )
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
        return False, "Kubernetes mode is not implemented yet (local mode only)."

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
