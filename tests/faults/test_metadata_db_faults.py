"""The metadata DB restarts mid-run: a real PostgreSQL server, stopped and started again.

A private PostgreSQL server (``initdb`` in a temporary folder, run as the ``postgres`` user on a
free port of 127.0.0.1: the machine's own server is never touched) is the metadata DB of a stack
of ``scripts/stack.py`` (scheduler, dag-processor, triggerer and api-server, each supervised).
While the middle task of ``tests/faults/dags/metadata_db_restart.py`` runs, PostgreSQL is stopped
with ``pg_ctl stop -m immediate`` (every connection dropped, no clean shutdown: what a crash or
a failover does to clients) and started again once Airflow's health endpoint reports the
metadata DB unhealthy and the scheduler's loop has failed on it. The promise: the run completes,
every task succeeds, and any component that died of the outage, or hung on it, was restarted by
the stack's supervisor. In practice the dag-processor and the triggerer exit on it; the
scheduler either exits too (the task in flight then keeps its first try) or its loop fails while
the task runs and it waits forever in LocalExecutor's shutdown: alive, no heartbeat. Then the
supervisor's liveness check kills it (and the task with it: LocalExecutor's workers are in its
process group) and the new scheduler resets the orphaned task, which runs again.

Waits are event-driven polls with generous timeouts; no assertion bounds wall-clock time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from stack import Stack, free_port  # noqa: E402

RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
DAG_ID = "metadata_db_restart"
WAIT_S = 600


def _postgres_user_available() -> bool:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None or shutil.which("runuser") is None:
        return False
    if os.geteuid() != 0:  # initdb refuses root; we switch to the postgres user, which needs root
        return False
    return subprocess.run(["id", "postgres"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.faults,
    pytest.mark.system,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(
        not _postgres_user_available(), reason="needs initdb/pg_ctl, root and a postgres user"
    ),
]


class PrivatePostgres:
    """A PostgreSQL server of the test's own, in a temporary folder owned by ``postgres`` (pytest's
    own temporary folders are private to root, where the ``postgres`` user cannot go)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
        self.data = self.root / "data"
        self.port = free_port()

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def init(self) -> PrivatePostgres:
        shutil.chown(self.root, "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "postgres.log")
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("metadata-db")
    pg = PrivatePostgres().init()
    pg.start()
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(Path(__file__).parent / "dags" / f"{DAG_ID}.py", dags)
    stack = Stack(
        home=root / "stack",
        airflow_port=free_port(),
        mlflow_port=free_port(),
        dags_folder=dags,
        runtimes_dir=RUNTIMES,
        database_url=pg.url,
        # a scheduler hung by the outage is restarted a minute after the DB is back (default 2)
        hung_after=60,
    )
    try:
        stack.start()
        yield stack, pg
    finally:
        stack.stop()
        pg.remove()


def wait_for(what: str, check, timeout: float = WAIT_S, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def metadata_db_status(stack: Stack) -> str | None:
    try:
        return requests.get(f"{stack.airflow_url}/api/v2/monitor/health", timeout=10).json()["metadatabase"][
            "status"
        ]
    except (requests.RequestException, ValueError, KeyError):
        return None  # the api-server itself may be down or restarting


def _new_text(path: Path, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def test_the_run_completes_across_a_metadata_db_restart(pg_stack, tmp_path):
    stack, pg = pg_stack
    stack.wait_for_dag(DAG_ID)
    folder = tmp_path / "hold"
    folder.mkdir()
    run_id = f"pg_restart__{int(time.time())}"
    stack.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": {"folder": str(folder)}},
    )
    wait_for("the middle task running", lambda: (folder / "started").exists())
    before = {name: c.get("restarts", 0) for name, c in stack.supervisor_state()["components"].items()}

    scheduler_log = stack.home / "logs" / "airflow-scheduler.log"
    seen = scheduler_log.stat().st_size
    pg.stop("immediate")  # every connection dropped, no clean shutdown
    # down until Airflow has met the outage: the health endpoint says so, and the scheduler's
    # loop failed on it (it queries the DB every second)
    wait_for("Airflow to see its metadata DB gone", lambda: metadata_db_status(stack) != "healthy")
    wait_for("the scheduler to meet the outage", lambda: "OperationalError" in _new_text(scheduler_log, seen))
    pg.start()
    wait_for("the metadata DB healthy again", lambda: metadata_db_status(stack) == "healthy")
    (folder / "release").touch()

    assert stack.wait_run(DAG_ID, run_id, timeout=WAIT_S) == "success", stack.task_states(DAG_ID, run_id)
    assert stack.task_states(DAG_ID, run_id) == {"before": "success", "hold": "success", "after": "success"}
    assert stack.xcom(DAG_ID, run_id, "after") == "after held"

    # whatever died of the outage is running again: a component may die late (the triggerer
    # meets the outage on its next DB call) and wait out its restart backoff after the run is done
    def all_running():
        components = stack.supervisor_state()["components"]
        return components if all(c.get("pid") for c in components.values()) else None

    after = wait_for("every supervised component running again", all_running)
    restarted = {name: c.get("restarts", 0) - before.get(name, 0) for name, c in after.items()}
    tries = {ti["task_id"]: ti["try_number"] for ti in stack.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}  # fmt: skip
    print(f"restarted by the stack's supervisor during the outage: {restarted}; tries: {tries}")
