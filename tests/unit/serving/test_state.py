"""``airflow_mlops.serving.state``: the one reader and writer of local deployment state.

Real files under a temporary data dir and real processes (``sleep``) for liveness: a killed
process, a zombie, and a live pid whose start time is not the recorded one (a reused pid).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from airflow_mlops.serving.state import (
    EMPTY,
    HISTORY_LENGTH,
    CorruptState,
    DeploymentState,
    DeploymentStore,
    deployment_names,
    pid_alive,
    process_record,
    process_start_time,
    tracked_alive,
)

MADE_BY = {"dag_id": "d", "run_id": "r", "task_id": "deploy", "try_number": 2}


@pytest.fixture
def sleeper():
    procs = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "300"])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def predictor(proc, version: str, role: str = "main", traffic: int = 100, port: int = 9000) -> dict:
    return {
        **process_record(proc.pid),
        "role": role,
        "traffic": traffic,
        "version": version,
        "endpoint": f"http://127.0.0.1:{port}",
        "model_dir": f"/models/v{version}",
        "model_name": "flights",
    }


def test_a_process_is_named_by_its_pid_and_start_time(sleeper):
    proc = sleeper()
    record = process_record(proc.pid, port=1)
    assert record["pid_start"] == process_start_time(proc.pid) is not None
    assert tracked_alive(record) and pid_alive(proc.pid)
    # the same pid with another start time: the kernel gave the pid to another process
    assert not tracked_alive({**record, "pid_start": record["pid_start"] - 1})
    proc.kill()
    time.sleep(0.2)
    assert not pid_alive(proc.pid), "a zombie (exited, not reaped) serves nothing"
    proc.wait()
    assert not tracked_alive(record) and not pid_alive(proc.pid)
    assert not tracked_alive(None) and not tracked_alive({}) and not pid_alive("x") and not pid_alive(0)


def test_the_routing_round_trips_through_the_store_atomically(tmp_path, sleeper):
    store = DeploymentStore.of(tmp_path, "flights-delay")
    assert store.read() is None and store.read_or_empty() is EMPTY and not store.exists()
    router = process_record(sleeper().pid, host="127.0.0.1", port=9999, endpoint="http://127.0.0.1:9999")
    main = predictor(sleeper(), "2", traffic=90)
    canary = predictor(sleeper(), "3", role="canary", traffic=10, port=9001)
    state = EMPTY.routing("flights-delay", [main, canary], router, feature_lookup=None)
    store.write(state)
    # no temporary file left (``.lock`` is the writers' lock file, empty)
    assert sorted(p.name for p in store.dir.iterdir()) == [".lock", "current.json"]
    again = store.read()
    assert again == state and deployment_names(tmp_path) == ["flights-delay"]
    assert (again.name, again.version, again.endpoint) == ("flights-delay", "2", "http://127.0.0.1:9999")
    assert again.main["version"] == "2" and again.canary["version"] == "3" and again.shadow is None
    assert again.router["port"] == 9999 and again.raw["pid"] == main["pid"]
    assert [p["version"] for p in again.servers] == ["2", "3"]
    assert again.model_name == "flights" and again.failure() is None and again.any_alive()


def test_exactly_one_main_predictor(sleeper):
    main = predictor(sleeper(), "1")
    with pytest.raises(ValueError, match="exactly one main predictor, got 2"):
        EMPTY.routing("d", [main, main], None)
    with pytest.raises(ValueError, match="got 0"):
        EMPTY.routing("d", [{**main, "role": "canary"}], None)
    # without a router a routing is reached at its main server
    assert EMPTY.routing("d", [main], None).endpoint == main["endpoint"]


def test_history_rollout_and_lookup_survive_routing_changes(tmp_path, sleeper):
    store = DeploymentStore.of(tmp_path, "d")
    state = EMPTY.routing("d", [predictor(sleeper(), "1")], None)
    for version in range(2, HISTORY_LENGTH + 4):
        state = state.routing(
            "d",
            [predictor(sleeper(), str(version))],
            None,
            history=state.history_with(state.main),
            previous_version=state.version,
        )
    store.write(state.replace(feature_lookup={"repo_path": "r"}))
    store.record_rollout({"outcome": "succeeded", "version": state.version, "made_by": MADE_BY})
    read = store.read()
    assert len(read.history) == HISTORY_LENGTH and read.history[-1]["version"] == str(HISTORY_LENGTH + 2)
    assert set(read.history[0]) == {
        "version",
        "model_name",
        "model_uri",
        "model_dir",
        "reference_path",
        "started_at",
    }
    assert read.served_before[:2] == [str(HISTORY_LENGTH + 2), str(HISTORY_LENGTH + 1)]
    assert read.previous_version == str(HISTORY_LENGTH + 2)
    assert read.last_rollout["made_by"] == MADE_BY and read.last_rollout["at"] <= time.time()
    # a later routing change keeps what it does not change
    changed = read.routing("d", [predictor(sleeper(), "99")], None)
    assert changed.last_rollout == read.last_rollout and changed.feature_lookup == {"repo_path": "r"}
    assert changed.max_request_bytes is None and changed.replace(max_request_bytes=5).max_request_bytes == 5


def test_failure_names_the_process_that_is_gone(sleeper):
    router_proc, server_proc = sleeper(), sleeper()
    router = process_record(router_proc.pid, endpoint="http://127.0.0.1:1")
    state = EMPTY.routing("d", [predictor(server_proc, "4")], router)
    assert state.failure() is None
    server_proc.kill()
    server_proc.wait()
    assert state.failure() == (
        f"the model server of deployment 'd' (pid {server_proc.pid}) is not running; it served version 4"
    )
    router_proc.kill()
    router_proc.wait()
    assert (
        state.failure("other") == f"the router of deployment 'other' (pid {router_proc.pid}) is not running"
    )
    assert not state.any_alive()
    assert DeploymentState({"name": "x"}).failure() == "deployment 'x' has no main predictor"


def test_unreadable_files(tmp_path, sleeper):
    store = DeploymentStore.of(tmp_path, "d")
    store.dir.mkdir(parents=True)
    store.current_path.write_text("{not json")
    with pytest.raises(CorruptState, match="not valid JSON"):
        store.read()
    store.current_path.write_text("[1, 2]")
    with pytest.raises(CorruptState, match="holds list, not a JSON object"):
        store.read()
    store.router_path.write_text("{")
    assert store.read_router() is None  # a new router replaces it
    good = process_record(sleeper().pid, version="1")
    store.write_process(store.process_dir("1", 9000), good)
    store.processes_dir.joinpath("v2-9001").mkdir()
    store.processes_dir.joinpath("v2-9001", "state.json").write_text("{")
    assert store.process_records() == [good]
    router = process_record(sleeper().pid, port=9002)
    store.write_router(router)
    assert store.all_processes() == [good, router]


def test_the_router_reads_state_without_importing_airflow():
    """The router (and the state module it reads with) start in well under a second: no Airflow."""
    code = (
        "import sys, airflow_mlops.serving.router, airflow_mlops.serving.state;"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_a_new_router_is_recorded_in_the_routing_too(tmp_path, sleeper):
    """The routing names its router's process: a router restarted on its port replaces that record,
    so a check of the routing never finds the old (dead) router's pid."""
    store = DeploymentStore.of(tmp_path, "d")
    old = process_record(sleeper().pid, port=9000, endpoint="http://127.0.0.1:9000")
    store.write_router(old)  # no routing yet: only router.json
    assert store.read() is None and store.read_router() == old
    store.write(EMPTY.routing("d", [predictor(sleeper(), "1")], old))
    new = process_record(sleeper().pid, port=9000, endpoint="http://127.0.0.1:9000")
    store.write_router(new)
    assert store.read().router == new == store.read_router()


#: a writer process: ``count`` read-modify-writes of the routing's ``counter`` key
_COUNTING_WRITER = """
import sys
from airflow_mlops.serving.state import DeploymentStore

store = DeploymentStore(sys.argv[1])
for _ in range(int(sys.argv[2])):
    store.modify(lambda state: state.replace(counter=state.raw.get("counter", 0) + 1))
"""


def test_concurrent_writers_lose_no_update(tmp_path):
    # three processes (the supervisor, a deploy task and the router's restart path all write the
    # routing) each add 1 under the lock, 150 times: a lost update would leave less than 450
    store = DeploymentStore(tmp_path / "deployments" / "d")
    store.dir.mkdir(parents=True)
    store.write(DeploymentState({"name": "d", "predictors": [], "counter": 0}))
    writers = [
        subprocess.Popen([sys.executable, "-c", _COUNTING_WRITER, str(store.dir), "150"]) for _ in range(3)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    assert store.read().raw["counter"] == 450
