"""The closed loop under the real scheduler: serve → watch the traffic → retrain on drift → switch.

``airflow standalone`` (scheduler, triggerer, API server) runs the test DAGs of
``dags/flights_loop.py``: ``flights_loop_train`` trains on January–March 2013 and deploys the
model behind its stable address; the test then streams flights through that address, as
clients would:

1. held-out flights of the training months (shuffled): the ``DriftEventTrigger`` in the
   triggerer tests each window and finds no drift, so no retraining runs;
2. June–July flights: the first window drifts (summer weather), the watcher announces it,
   ``flights_loop_retrain`` runs on those months, registers a new version that beats the
   champion (trained on shuffled delays, see ``dags/flights_loop.py``: a model at chance), and
   the deployment switches to it while the stream goes on, without one failed request.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import requests

pytestmark = pytest.mark.system

TRAIN, RETRAIN = "flights_loop_train", "flights_loop_retrain"
MODEL, DEPLOYMENT = "flights_loop", "flights-loop"
WINDOW_ROWS = 2000  # the watcher's window (include/flights_pipeline.drift_asset)
BATCH = 50


def payloads(df) -> list[dict]:
    """Seldon requests of ``BATCH`` rows: the model's features plus each flight's time."""
    from include.flights_pipeline import EVENT_TIME, FEATURES

    time_column = "event_timestamp" if "event_timestamp" in df else "time_hour"
    rows = df[FEATURES].astype("float64")
    rows[EVENT_TIME] = df[time_column].astype("int64") // 10**9
    names = list(rows.columns)
    values = [[None if v != v else float(v) for v in row] for row in rows.to_numpy()]
    batches = range(0, len(values), BATCH)
    return [{"data": {"names": names, "ndarray": values[i : i + BATCH]}} for i in batches]


class Stream(threading.Thread):
    """A client sending requests in a loop at a bounded rate; records every outcome."""

    def __init__(self, url: str, requests_: list[dict], per_second: float = 20) -> None:
        super().__init__(daemon=True)
        self.url, self.requests, self.pause = url, requests_, 1 / per_second
        self.outcomes: Counter = Counter()
        self.versions: Counter = Counter()
        self.failures: list[str] = []
        self._done = threading.Event()  # not _stop: Thread has a method of that name

    def run(self) -> None:
        with requests.Session() as session:
            i = 0
            while not self._done.is_set():
                try:
                    response = session.post(self.url, json=self.requests[i % len(self.requests)], timeout=30)
                    self.outcomes[response.status_code] += 1
                    self.versions[response.headers.get("X-Mlops-Model-Version")] += 1
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except requests.RequestException as err:
                    self.outcomes["error"] += 1
                    self.failures.append(repr(err))
                i += 1
                time.sleep(self.pause)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=60)


def reports(stack) -> list[dict]:
    """The watcher's window reports, oldest first."""
    found = sorted((stack.data_dir / "drift" / "watchers" / DEPLOYMENT).glob("*/report.json"))
    return [json.loads(p.read_text()) for p in found]


@pytest.fixture(scope="module")
def served(stack):
    for dag_id in (TRAIN, RETRAIN):
        stack.wait_for_dag(dag_id)
    run_id = stack.trigger(TRAIN, "2013-01-01T00:00:00Z", "2013-04-01T00:00:00Z")
    state = stack.wait_run(TRAIN, run_id, timeout=1800)
    assert state == "success", stack.task_states(TRAIN, run_id)
    return {
        "run_id": run_id,
        "deploy": stack.xcom(TRAIN, run_id, "deploy"),
        "table": stack.xcom(TRAIN, run_id, "build_training_set"),
        "register": stack.xcom(TRAIN, run_id, "register"),
    }


def test_held_out_reference_flights_do_not_retrain(stack, served):
    import pandas as pd

    holdout = pd.read_parquet(served["table"]["holdout"]).sample(frac=1, random_state=0)
    # window by window, each window's rows tested before the next ones go out, so the test
    # waits on a known number of reports
    batch = WINDOW_ROWS + WINDOW_ROWS // 4
    with requests.Session() as session:
        for n in range(2):
            for body in payloads(holdout.iloc[n * batch : (n + 1) * batch]):
                response = session.post(served["deploy"]["predict_url"], json=body, timeout=30)
                assert response.status_code == 200, response.text
            deadline = time.monotonic() + 240
            while len(reports(stack)) < n + 1 and time.monotonic() < deadline:
                time.sleep(2)
    windows = reports(stack)
    assert len(windows) >= 2, "the watcher did not test the windows (is the triggerer running?)"
    assert not any(w["is_drift"] for w in windows), [w["drifted_features"] for w in windows]
    # an event, had there been one, would have queued a run by now; meanwhile the watcher drops
    # the rows that did not fill a third window (max_window_age_seconds=10 in flights_loop.py)
    time.sleep(20)
    assert stack.dag_runs(RETRAIN) == []


def test_drifted_traffic_retrains_and_switches_without_a_failed_request(stack, served):
    from airflow_mlops.example_data.nycflights13 import flight_features

    summer = flight_features("2013-06-01", "2013-08-01")
    stream = Stream(served["deploy"]["predict_url"], payloads(summer))
    stream.start()
    try:
        retrain = stack.wait_for_new_run(RETRAIN, timeout=300)
        state = stack.wait_run(RETRAIN, retrain["dag_run_id"], timeout=1800)
        time.sleep(5)  # requests keep flowing across the switch and after it
    finally:
        stream.stop()
    run_id = retrain["dag_run_id"]
    assert state == "success", stack.task_states(RETRAIN, run_id)
    drifted = [w for w in reports(stack) if w["is_drift"]]
    assert drifted and "temp" in drifted[0]["drifted_features"]
    ingest = stack.xcom(RETRAIN, run_id, "ingest_flights")
    assert ingest["interval_start"].startswith("2013-06-01")  # the drifted months, loaded whole
    second = stack.xcom(RETRAIN, run_id, "register")
    assert int(second["version"]) == int(served["register"]["version"]) + 1
    gate = stack.xcom(RETRAIN, run_id, "gate", key="comparison")
    # the champion was trained on shuffled delays: it scores at chance, the challenger does not
    assert gate["champion"]["overall"]["value"] < 0.6 < gate["challenger"]["overall"]["value"], gate
    assert gate["promote"] is True, gate
    status = requests.get(f"{served['deploy']['endpoint']}/router/status", timeout=10).json()
    assert [p["version"] for p in status["predictors"]] == [second["version"]]
    assert stream.versions[second["version"]] > 0  # the stream reached the new version
    assert stream.versions[served["deploy"]["version"]] > 0  # and the old one before the switch
    # same stable address before and after the switch
    assert stack.xcom(RETRAIN, run_id, "deploy")["endpoint"] == served["deploy"]["endpoint"]
    assert stream.failures == [], stream.failures[:5]
    assert stream.outcomes[200] > 100
