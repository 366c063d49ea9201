"""The stack restarts a killed triggerer, and what waited on it still completes.

``make demo``'s stack (scripts/stack.py) runs Airflow's components under a supervisor, since
``airflow standalone`` restarts none of them. Here the triggerer of the system tests' stack is
killed with SIGKILL while a deferred sensor waits in it: the supervisor kills its process group
(its log server too, so the port is free), marks its job row failed, starts a new one; the
health endpoint says the triggerer is healthy again, with a heartbeat after the kill, and the
deferred task succeeds on the new triggerer. Waits are event-driven, with generous timeouts.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest
import requests

pytestmark = pytest.mark.system
DAG_ID = "stack_restart_wait"


def wait_for(what: str, done, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        found = done()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(1)


def test_a_killed_triggerer_is_restarted_and_the_deferred_task_completes(stack):
    stack.wait_for_dag(DAG_ID)
    run_id = f"restart__{int(time.time())}"
    stack.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"dag_run_id": run_id, "logical_date": None})
    wait_for("the sensor deferred", lambda: stack.task_states(DAG_ID, run_id).get("wait") == "deferred")

    before = stack.supervisor_state()["components"]["triggerer"]
    old_pid = before["pid"]
    killed_at = datetime.now(UTC)
    os.kill(old_pid, signal.SIGKILL)

    def restarted():
        now = stack.supervisor_state()["components"]["triggerer"]
        return now["pid"] not in (None, old_pid) and now

    after = wait_for("a new triggerer", restarted)
    assert after["restarts"] == before["restarts"] + 1 and after["last_exit"] == "killed by SIGKILL"
    log = (stack.home / "logs" / "airflow.log").read_text()
    assert f"!!! supervisor: airflow triggerer (pid {old_pid}) DIED (killed by SIGKILL)" in log

    def healthy_again():
        health = requests.get(f"{stack.airflow_url}/api/v2/monitor/health", timeout=10).json()["triggerer"]
        beat = health.get("latest_triggerer_heartbeat")
        return health["status"] == "healthy" and beat and datetime.fromisoformat(beat) > killed_at

    wait_for("the triggerer healthy, beating after the kill", healthy_again)
    # the dead one's job row no longer says running: one running triggerer job, the new one
    jobs = stack.api("GET", "/jobs", params={"job_type": "TriggererJob", "job_state": "running"})["jobs"]
    assert len(jobs) == 1, jobs

    # the deferred task completes on the new triggerer
    assert stack.wait_run(DAG_ID, run_id, timeout=600) == "success"
    assert stack.task_states(DAG_ID, run_id) == {"wait": "success"}
