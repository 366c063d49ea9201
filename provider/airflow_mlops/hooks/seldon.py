"""Seldon Core deployments through a ``seldon`` connection.

Local mode runs the seldon-core 1.17 python microservice (``runtimes/seldon_model.py``) from
the *serving* runtime environment on this machine, bound to 127.0.0.1 by default, behind a
router on the deployment's stable address (``serving/router.py``). What runs is recorded under
``[mlops] data_dir``/deployments/<name> by :mod:`airflow_mlops.serving.state` — the one owner of
those files — so a restarted scheduler or a retried task finds what is already serving instead
of starting a duplicate.

Serving processes get an environment built from an allow-list, never the worker's whole one
(no ``AIRFLOW_CONN_*`` or ``AIRFLOW__*`` secrets): a model server gets the serving runtime's
allow-list (:func:`~airflow_mlops.hooks.runtime.runtime_environ`) and its model's settings; the
router gets the same base plus what its Feast lookup needs (:func:`router_environ`).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.exceptions import DeploymentError
from airflow_mlops.serving.state import (
    DEFAULT_WORKERS,
    EMPTY,
    CorruptState,
    DeploymentState,
    DeploymentStore,
    Predictor,
    ProcessRecord,
    RouterRecord,
    ServerRecord,
    deployment_names,
    health_summary,
    pid_alive,
    process_record,
    replicas_of,
    stop_group,
    tracked_alive,
)

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.hooks.runtime import RuntimeHook

__all__ = ["PREDICT_PATH", "SeldonHook", "pid_alive", "router_environ", "seldon_payload", "tracked_alive"]

PREDICT_PATH = "/api/v1.0/predictions"

#: what the router takes from the worker's environment besides the runtime allow-list: the
#: interpreter's import path (it runs the worker's Python) and where Airflow's and our
#: configuration live (a Feast lookup reads the ``feast`` connection through Airflow)
ROUTER_PASSTHROUGH = ("PYTHONPATH", "AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW__MLOPS__", "MLOPS_DATA_DIR")
#: the secrets backend's settings: passed to a router whose lookup's connection is not a variable
SECRETS_BACKEND_PREFIXES = ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__WORKERS__SECRETS_BACKEND")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def lookup_connection_id(feature_lookup: Mapping[str, Any] | None) -> str | None:
    """The ``feast`` connection a lookup configuration reads its store through (None: its yaml)."""
    if not feature_lookup:
        return None
    conn_id = feature_lookup.get("feast_conn_id")
    if conn_id:
        return str(conn_id)
    repo = Path(str(feature_lookup.get("repo_path") or ""))
    return None if (repo / "feature_store.yaml").is_file() else "feast_default"


def router_environ(
    feature_lookup: Mapping[str, Any] | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """
    The router's environment: the allow-listed base of ``source`` (default: ours), the
    configuration's location, and for a Feast lookup its connection's variable
    (``AIRFLOW_CONN_<ID>``) — or, when that is not a variable, the secrets backend's settings.
    Nothing else of the worker's: no other connection, no ``AIRFLOW__*`` secret.
    """
    from airflow_mlops.hooks.runtime import runtime_environ

    source = os.environ if source is None else source
    extra = {"PYTHONDONTWRITEBYTECODE": "1"}
    conn_id = lookup_connection_id(feature_lookup)
    if conn_id:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        if variable in source:
            wanted = [variable]
        else:
            wanted = [k for k in source if k.startswith(SECRETS_BACKEND_PREFIXES)]
        extra.update({k: source[k] for k in wanted})
    return runtime_environ("router", None, extra, ROUTER_PASSTHROUGH, source)


def supervisor_environ(
    feature_lookup: Mapping[str, Any] | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """
    The supervisor's environment: what the router gets (:func:`router_environ`) and what a model
    server takes from the worker (the serving runtime's allow-list). It restarts each process
    with the variables that process was started with, by name, from this environment.
    """
    from airflow_mlops.hooks.runtime import runtime_environ

    return {**runtime_environ("serving", None, None, (), source), **router_environ(feature_lookup, source)}


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
    def execution_mode(self) -> str:
        """``local``, ``docker`` or ``kubernetes``: the connection's ``mode``, else the config's.

        The config's is ``[mlops] execution_mode`` (``local`` when unset).
        """
        from airflow_mlops.hooks.runtime import check_mode, default_mode

        extras = self.connection.extra_dejson if self.connection else {}
        return check_mode((extras.get("mode") or default_mode()).lower())

    @property
    def mode(self) -> str:
        """
        Where deployments live: ``kubernetes`` (SeldonDeployments), or ``local`` — on this host,
        behind a router, their model servers in the serving runtime or (``docker`` execution
        mode) in the serving image.
        """
        return "kubernetes" if self.execution_mode == "kubernetes" else "local"

    def server_runtime(self, name: str, version: str, port: int, mounts: list[str]) -> RuntimeHook:
        """The runtime a model server of ``name`` (``version``, on ``port``) runs in: venv or image."""
        from airflow_mlops.hooks.runtime import runtime_hook

        if self.execution_mode != "docker":
            return runtime_hook("serving", "local", runtimes_dir=self.runtimes_dir)
        from airflow_mlops.hooks.docker import ContainerRuntimeHook, container_name

        # one container per server; the supervisor's restart (same port) replaces a leftover
        cname = container_name("serving", name, f"v{version}", f"v{version}-port-{port}")
        log_dir = self.store(name).inference_log_dir
        log_dir.mkdir(parents=True, exist_ok=True)  # mounted: the server journals into it
        return ContainerRuntimeHook("serving", cname, mounts=[log_dir], read_only_mounts=mounts)

    @property
    def bind_host(self) -> str:
        return (self.connection.host if self.connection else None) or "127.0.0.1"

    # -- state of local deployments (serving/state.py owns the files) --------------------------
    @staticmethod
    def store(name: str) -> DeploymentStore:
        """The files of local deployment ``name`` under ``[mlops] data_dir``."""
        return DeploymentStore.of(settings.data_dir(), name)

    @staticmethod
    def deployment_dir(name: str) -> Path:
        return SeldonHook.store(name).dir

    @staticmethod
    def inference_log_dir(name: str) -> Path:
        """Where every predictor of deployment ``name`` logs its predictions (Parquet, by hour)."""
        return SeldonHook.store(name).inference_log_dir

    def state(self, name: str) -> DeploymentState | None:
        """The routing of local deployment ``name`` (typed); None when never deployed."""
        return self.store(name).read()

    @staticmethod
    def current_state(name: str) -> dict[str, Any] | None:
        """The routing (``current.json``) of local deployment ``name`` as a dict; None when never deployed."""
        state = SeldonHook.store(name).read()
        return None if state is None else state.raw

    def current(self, name: str) -> dict[str, Any] | None:
        """The deployment's routing (``current.json``) as a dict, or None when never deployed."""
        return self.current_state(name)

    def is_healthy(self, record: Mapping[str, Any] | None, timeout: float = 5) -> bool:
        """``record`` (a process record with an endpoint) runs and answers ``/health/ping``."""
        return bool(record) and tracked_alive(record) and self._answers(record["endpoint"], timeout)

    @staticmethod
    def _answers(endpoint: str | None, timeout: float = 5, path: str = "/health/ping") -> bool:
        import requests

        if not endpoint:
            return False
        try:
            return requests.get(f"{endpoint}{path}", timeout=timeout).ok
        except requests.RequestException:
            return False

    def local_status(self, name: str) -> tuple[str, str]:
        """
        ``(state, message)`` of a local deployment, with Seldon's state names.

        ``Available``: router and main model server alive and answering; ``Creating``: alive but
        not answering yet; ``Failed``: never deployed, or a tracked process is gone.
        """
        store = self.store(name)
        try:
            state = store.read()
        except CorruptState as err:
            return "Failed", f"the state of deployment {name!r} is unreadable: {err}"
        if state is None:
            return "Failed", f"deployment {name!r} does not exist (no {store.current_path})"
        failure = state.failure(name)
        if failure:
            return "Failed", failure
        health = health_summary(state)
        recovering = state.recovering()
        if recovering and not self._answers(state.endpoint):
            return "Creating", f"{name!r}: {recovering}; {health}"
        if self._answers(state.endpoint):
            return "Available", f"{name!r} serves version {state.version} at {state.endpoint}; {health}"
        return "Creating", f"{name!r} does not answer {state.endpoint}/health/ping yet; {health}"

    # -- local model servers -----------------------------------------------------------------
    def start_local(
        self,
        name: str,
        model_dir: str,
        version: str,
        ready_timeout: float = 180,
        replicas: int = 1,
        workers: int = DEFAULT_WORKERS,
    ) -> ServerRecord:
        """
        Start ``replicas`` model servers for ``model_dir``, each on a new port with ``workers``
        gunicorn worker processes, and wait until all answer.
        :return: the first one's record, with ``replicas`` (all of them) when more than one.
        """
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
        started: list[tuple[ServerRecord, Any]] = []
        try:
            for _ in range(replicas):
                started.append(self._spawn_server(name, model_dir, version, workers))
            for record, proc in started:
                self._await_server(record, proc, name, version, ready_timeout)
        except BaseException:
            for record, _ in started:
                self.stop_state(record)
            raise
        records = [record for record, _ in started]
        first = dict(records[0])
        if replicas > 1:
            first["replicas"] = records
        return first  # type: ignore[return-value]

    def _spawn_server(
        self, name: str, model_dir: str, version: str, workers: int = DEFAULT_WORKERS
    ) -> tuple[ServerRecord, Any]:
        """Start one model server on new ports; record how to start it again (the supervisor does)."""
        store = self.store(name)
        host = self.bind_host
        http_port, metrics_port = free_port(host), free_port(host)
        runtime = self.server_runtime(name, version, http_port, [model_dir])
        workdir = store.process_dir(version, http_port)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        # what the model server needs besides the serving runtime's allow-list: the model is a
        # local folder (downloaded by the task), so no MLflow tracking URI or credentials
        env = {
            "MODEL_URI": str(model_dir),
            "MODEL_VERSION": str(version),
            "MODEL_NAME": name,
            "INFERENCE_LOG_DIR": str(store.inference_log_dir),
        }
        args = [
            runtime.python,
            runtime.script("seldon_serve"),
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
            str(workers),
        ]
        full_env = runtime.environ(env)
        env_set = {**env, **{k: full_env[k] for k in runtime.recorded_environ if k in full_env}}
        with open(log_path, "ab") as log_file:
            # its own session: the server outlives this task process (and its process group)
            proc = runtime.start(args, env=env, cwd=str(workdir), stdout=log_file)
        record: ServerRecord = process_record(  # type: ignore[assignment]
            proc.pid,
            name=name,
            version=str(version),
            host=host,
            port=http_port,
            endpoint=f"http://{host}:{http_port}",
            model_dir=str(model_dir),
            log=str(log_path),
            started_at=time.time(),
            workers=workers,
            runtime=self.execution_mode,
            # what runs: the server, or (docker mode) the process that runs its container
            argv=[str(a) for a in proc.args],
            cwd=str(workdir),
            env_keys=sorted(set(full_env) - set(env_set)),
            env_set=env_set,
            restarts=0,
        )
        # a record per process: a deploy killed before it switched leaves one to reap
        store.write_process(workdir, record)
        return record, proc

    def _await_server(
        self, record: ServerRecord, proc: Any, name: str, version: str, ready_timeout: float
    ) -> None:
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if self.is_healthy(record, timeout=2):
                return
            time.sleep(0.5)
        log_path = Path(record["log"])
        why = "exited" if proc.poll() is not None else f"did not become ready within {ready_timeout:.0f}s"
        raise DeploymentError(
            f"The model server for version {version} of {name} {why}: {_log_error(log_path)} "
            f"The previous deployment keeps serving. Server log: {log_path}"
        )

    def stop_state(self, record: Mapping[str, Any] | None, grace: float = 10) -> None:
        """
        Stop the process group of ``record`` and every replica it lists — also a group whose
        leader died (its workers may still run) — never a process that reused a recorded pid.
        """
        for server in replicas_of(record):
            stop_group(server.get("pid"), server.get("pid_start"), grace)

    def reap_orphans(self, name: str) -> list[ServerRecord]:
        """
        Stop model servers of ``name`` that no routing refers to.

        A deploy whose task process was killed after starting a server but before switching
        to it leaves such a server behind; the next deploy (after a scheduler restart too)
        stops it, so nothing is orphaned.
        """
        store = self.store(name)
        in_use = {r.get("pid") for _, _, r in store.read_or_empty().server_processes()}
        reaped = []
        for record in store.process_records():
            if record.get("pid") not in in_use and tracked_alive(record):
                self.log.info(
                    "Stopping orphaned model server %s (version %s)", record["pid"], record.get("version")
                )
                self.stop_state(record)
                reaped.append(record)
        return reaped

    # -- the stable address ------------------------------------------------------------------
    def ensure_router(
        self,
        name: str,
        port: int | None = None,
        ready_timeout: float = 120,
        feature_lookup: Mapping[str, Any] | None = None,
    ) -> RouterRecord:
        """
        The router on the deployment's stable port: the running one, or a new one.

        The port is kept in ``router.json`` so a restarted router (after a reboot, or after
        its process was killed) comes back on the same address. Its start is cheap (standard
        library) unless the routing asks for a Feast lookup (``import feast`` takes ~20 s).

        The router's environment is an allow-list (:func:`router_environ`): a running router
        that lacks what ``feature_lookup`` (default: the routing's) needs — its ``feast``
        connection — is restarted on its port with it.
        """
        import subprocess
        import sys

        store = self.store(name)
        record = store.read_router()
        if feature_lookup is None:
            feature_lookup = store.read_or_empty().feature_lookup
        env = router_environ(feature_lookup)
        needed = sorted(set(env) - set(router_environ(None)))  # what only the lookup needs
        if record and (port is None or record.get("port") == port) and tracked_alive(record):
            given = record.get("env_keys")
            if given is not None and set(needed) <= set(given):
                # running (maybe just restarted by the supervisor): give it time to answer
                deadline = time.monotonic() + min(ready_timeout, 30)
                while time.monotonic() < deadline and tracked_alive(record):
                    if self._router_answers(record):
                        return record
                    time.sleep(0.2)
            else:
                why = "with the worker's whole environment" if given is None else f"without {needed}"
                self.log.info("Restarting the router of %s on its port: it was started %s", name, why)
        host = self.bind_host
        store.dir.mkdir(parents=True, exist_ok=True)
        log_path = store.dir / "router.log"
        with store.lock():  # the supervisor never restarts the old one while this one starts
            current = store.read_router() or record
            if current:
                self.stop_state(current)
            port = port or (current or {}).get("port") or free_port(host)
            argv = [sys.executable, "-m", "airflow_mlops.serving.router", "--state", str(store.current_path),
                    "--host", host, "--port", str(port)]  # fmt: skip
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
                )
            record = process_record(
                proc.pid,
                host=host,
                port=port,
                endpoint=f"http://{host}:{port}",
                log=str(log_path),
                env_keys=sorted(env),
                argv=argv,
                env_set={},
                started_at=time.time(),
                restarts=0,
            )
            store.write_router(record)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if self._router_answers(record):
                return record
            time.sleep(0.2)
        with store.lock():  # a router that cannot serve here is not restarted either
            store.write_router({k: v for k, v in record.items() if k != "argv"})  # type: ignore[arg-type]
            self.stop_state(record)
        raise DeploymentError(
            f"The router of {name} could not serve on {host}:{port}: {_log_error(log_path)} "
            f"Log: {log_path}. If the port is taken, pass another port= or free it."
        )

    def ensure_supervisor(self, name: str, feature_lookup: Mapping[str, Any] | None = None) -> ProcessRecord:
        """
        The deployment's supervisor (``serving/supervisor.py``): the running one, or a new one.

        It restarts the router and model servers that die, on their ports, with the environment
        they were started with, and with an object-store ``[mlops] data_dir`` keeps the
        deployment published there (:mod:`airflow_mlops.serving.publish`); one started without
        what ``feature_lookup`` (default: the routing's) or publishing needs is replaced.
        """
        import subprocess

        from airflow_mlops.serving.publish import publish_environ
        from airflow_mlops.serving.supervisor import command as supervisor_command

        store = self.store(name)
        if feature_lookup is None:
            feature_lookup = store.read_or_empty().feature_lookup
        # with an object-store data dir it also publishes the routing and inference log there
        env = {**supervisor_environ(feature_lookup), **publish_environ(name)}
        record = store.read_supervisor()
        if record and tracked_alive(record) and set(env) <= set(record.get("env_keys") or []):
            if store.read_or_empty().supervisor != record:
                store.write_supervisor(record)
            return record
        if record:
            self.stop_state(record)
        store.dir.mkdir(parents=True, exist_ok=True)
        log_path = store.dir / "supervisor.log"
        # under the lock: the new supervisor restarts nothing until it is the one recorded
        with store.lock(), open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                supervisor_command(store.dir),
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )  # fmt: skip
            record = process_record(proc.pid, log=str(log_path), env_keys=sorted(env), started_at=time.time())
            store.write_supervisor(record)
        return record

    def stop_supervisor(self, name: str) -> None:
        """Stop the deployment's supervisor: what dies from now on stays dead."""
        store = self.store(name)
        record = store.read_supervisor()
        if record:
            self.stop_state(record)
            store.write_supervisor(None)

    def _router_answers(self, record: Mapping[str, Any]) -> bool:
        return tracked_alive(record) and self._answers(record.get("endpoint"), 2, "/router/status")

    def set_feature_lookup(self, name: str, feature_lookup: Mapping[str, Any] | None) -> RouterRecord:
        """
        Hand the routing a Feast lookup (or None: none); the router applies it once warm.

        The router is first made sure to hold what the lookup needs (its ``feast`` connection):
        one started without it is restarted on its port.
        """
        router = self.ensure_router(name, feature_lookup=feature_lookup or {})
        self.ensure_supervisor(name, feature_lookup=feature_lookup or {})
        self.store(name).update(feature_lookup=dict(feature_lookup) if feature_lookup else None)
        return router

    def set_request_limit(self, name: str, max_request_bytes: int | None) -> None:
        """The largest request body the router accepts (None: its default); applied at once."""
        store = self.store(name)
        if store.read_or_empty().max_request_bytes != max_request_bytes:
            store.update(max_request_bytes=max_request_bytes)

    # -- routing changes -----------------------------------------------------------------------
    def _routing(
        self, name: str, change: Callable[[DeploymentState], tuple[list[Predictor], dict[str, Any]]]
    ) -> tuple[DeploymentState, DeploymentState]:
        """
        Change the routing under the deployment's lock (:meth:`DeploymentStore.modify`): ``change``
        gets the routing as it is now and returns ``(predictors, other changes)``. The write is
        atomic: the router re-reads this file while requests flow. :return: ``(before, after)``.
        """
        store = self.store(name)

        def routed(current: DeploymentState) -> DeploymentState:
            predictors, changes = change(current)
            changes.setdefault("supervisor", store.read_supervisor() or current.supervisor)
            return current.routing(name, predictors, store.read_router(), **changes)

        return store.modify(routed)

    def switch(
        self, name: str, new_state: Mapping[str, Any], drain_seconds: float = 2.0, **record: Any
    ) -> Predictor | None:
        """
        Blue/green: route all traffic to ``new_state``, then stop every server it replaces.

        The old servers are stopped ``drain_seconds`` after the routing changed, so requests
        already on their way finish; the router retries a refused connection on the new one.
        What is stopped is read under the lock that made the switch: a server the supervisor
        restarted meanwhile is stopped too.
        :return: the main predictor that was replaced, if any.
        """

        def change(current: DeploymentState) -> tuple[list[Predictor], dict[str, Any]]:
            previous = current.main
            return [{**new_state, "role": "main", "traffic": 100, **record}], {  # type: ignore[list-item]
                "shadow": None,
                "history": current.history_with(previous),
                "previous_version": (previous or {}).get("version"),
            }

        before, after = self._routing(name, change)
        self._retire(before, after, drain_seconds)
        return before.main

    def add_canary(
        self, name: str, new_state: Mapping[str, Any], traffic: int, shadow: bool = False, **record: Any
    ) -> None:
        """Route ``traffic`` % of requests to ``new_state`` (or a copy of all of them, as a shadow)."""
        candidate: Predictor = {
            **new_state,  # type: ignore[typeddict-item]
            "role": "shadow" if shadow else "canary",
            "traffic": 0 if shadow else traffic,
            **record,
        }

        def change(current: DeploymentState) -> tuple[list[Predictor], dict[str, Any]]:
            main = current.main
            if main is None:
                raise DeploymentError(
                    f"{name!r} has no version serving yet: deploy one with traffic=100 before a canary "
                    "or shadow."
                )
            if shadow:
                return [{**main, "traffic": 100}], {"shadow": candidate}
            return [{**main, "traffic": 100 - traffic}, candidate], {"shadow": None}

        before, after = self._routing(name, change)
        self._retire(before, after, drain_seconds=2.0)

    def promote_canary(self, name: str, drain_seconds: float = 2.0) -> Predictor:
        """The canary (or shadow) becomes the main predictor with all the traffic."""
        current = self.store(name).read_or_empty()
        candidate = current.canary or current.shadow
        if candidate is None:
            raise DeploymentError(f"{name!r} has no canary or shadow to promote.")
        if not any(self.is_healthy(r) for r in replicas_of(candidate)):
            raise DeploymentError(
                f"The canary of {name!r} (version {candidate['version']}) does not answer; not promoted. "
                "The main version keeps serving."
            )
        self.switch(name, {k: v for k, v in candidate.items() if k not in ("role", "traffic")}, drain_seconds)
        return candidate

    def _retire(self, before: DeploymentState, after: DeploymentState, drain_seconds: float) -> None:
        """Stop the model servers ``before`` named and ``after`` no longer does, once drained."""
        kept = {(r.get("pid"), r.get("pid_start")) for _, _, r in after.server_processes()}
        retiring = [
            r for _, _, r in before.server_processes() if (r.get("pid"), r.get("pid_start")) not in kept
        ]
        if retiring:
            time.sleep(drain_seconds)
        for record in retiring:
            self.stop_state(record)

    def record_rollout(self, name: str, outcome: Mapping[str, Any]) -> None:
        """Remember the outcome of the last rollout (shown by the MLOps page) without touching the routing."""
        self.store(name).record_rollout(outcome)

    def stop(self, name: str) -> None:
        """
        Stop every process of local deployment ``name``: its supervisor first (nothing is
        restarted behind the stop), then its model servers (every replica, every server ever
        started for it) and its router — each by process group, also when its leader died.
        """
        store = self.store(name)
        for record in store.stop_all():
            self.log.info("Stopped pid %s of deployment %s", record.get("pid"), name)
        if store.dir.is_dir():
            store.write_supervisor(None)

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
            from airflow_mlops.hooks.docker import ContainerRuntimeHook
            from airflow_mlops.hooks.runtime import RuntimeHook

            try:
                if self.execution_mode == "docker":
                    image = ContainerRuntimeHook("serving", "test-connection")
                    image.check_image()
                    found = f"image {image.image} through {image.api_url}"
                else:
                    found = RuntimeHook("serving", self.runtimes_dir).python
            except Exception as err:
                return False, str(err)
            checks = [f"serving runtime found ({found})"]
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
            names = deployment_names(settings.data_dir())
            if not names:
                return True, ["no deployment to ping"]
        ok, out = True, []
        for name in names:
            try:
                state = self.state(name) or EMPTY
            except CorruptState as err:
                ok, state = False, EMPTY
                out.append(f"deployment {name!r}: {err}")
                continue
            if not state.endpoint:
                ok = ok and not named
                out.append(f"deployment {name!r} has no current endpoint")
                continue
            endpoint = state.endpoint
            try:
                answered = requests.get(f"{endpoint}/health/ping", timeout=timeout).ok
                why = "" if answered else " (not OK)"
            except requests.RequestException as err:
                answered, why = False, f" ({type(err).__name__})"
            if answered:
                out.append(f"deployment {name!r} answers at {endpoint}")
            elif named or state.any_alive():
                ok = False
                out.append(f"deployment {name!r} does NOT answer /health/ping at {endpoint}{why}")
            else:
                out.append(f"deployment {name!r} is stopped (last endpoint {endpoint})")
        return ok, out
