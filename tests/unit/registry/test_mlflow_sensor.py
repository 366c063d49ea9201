"""``MlflowModelVersionSensor`` and ``MlflowModelVersionTrigger`` against a real MLflow server.

The ``dag.test()`` runs (sensor poking and deferred while a thread registers a version or moves
an alias, and the gate branching in a real DAG) happen in a fresh interpreter:
``_jobs/registry_dag_test.py``. ``dag.test()`` runs a deferred task's trigger inline.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException
from airflow.triggers.base import TriggerEvent
from airflow_mlops.hooks.mlflow import registry_endpoint
from airflow_mlops.sensors.mlflow import MlflowModelVersionSensor
from airflow_mlops.triggers.mlflow import MlflowModelVersionTrigger
from conftest import start_server

JOB = "registry-dag-test"


def start_jobs(jobs) -> None:
    server = start_server(jobs)
    work = jobs.workdir(JOB)
    conn = {"conn_type": "mlflow", "host": server.url, "extra": {"experiment": "flights_delay"}}
    jobs.submit(
        JOB,
        [jobs.python, jobs.script("registry_dag_test"), work, work / "result.json", server.url],
        env=jobs.airflow_env(
            work / "airflow-home",
            PYTHONUNBUFFERED="1",
            NO_PROXY="127.0.0.1,localhost",
            AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps(conn),
        ),
        timeout=600,
    )


@pytest.fixture(scope="module")
def job(jobs, mlflow_url) -> dict:
    start_jobs(jobs)
    result = jobs.result(JOB).check()
    data = json.loads((jobs.workdir(JOB) / "result.json").read_text())
    data["logs"] = {
        m.group(1): m.group(2)
        for m in re.finditer(r"=== BEGIN RUN (\w+)\n(.*?)=== END RUN \1", result.output, flags=re.S)
    }
    return data


def _events(trigger: MlflowModelVersionTrigger, limit_s: float = 60) -> list[TriggerEvent]:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), limit_s))


def _later(seconds: float, action) -> threading.Thread:
    def run():
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def one_version(tracking, runs, model_name) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking.url)
    mlflow.register_model(f"runs:/{runs['strong']}/model", model_name)
    tracking.client.set_registered_model_alias(model_name, "champion", "1")
    return model_name


def _register_medium(tracking, runs, name) -> None:
    tracking.client.create_model_version(name, f"runs:/{runs['medium']}/model", run_id=runs["medium"])


# -- dag.test() ----------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["sensor_poke", "sensor_deferred", "sensor_alias_deferred"])
def test_the_sensor_waits_for_the_change_made_meanwhile(job, label):
    assert job["import_errors"] == {}
    run = job["runs"][label]
    assert run["state"] == "success", job["logs"].get(label, "")[-3000:]
    assert run["task_states"] == {"wait": "success"}
    found = run["xcoms"]["wait.return_value"]
    assert found["name"] == run["model_name"] and found["version"] == run["changed_to"] == "2"
    assert run["ended_after_change"], "the sensor succeeded before the change happened"
    if label == "sensor_alias_deferred":
        assert "champion" in found["aliases"]


def test_deferred_mode_ran_the_trigger(job):
    assert "[DAG TEST] running trigger in line" in job["logs"]["sensor_deferred"]
    assert "running trigger in line" not in job["logs"]["sensor_poke"]


def test_the_sensor_times_out_with_a_clear_error(job):
    run = job["runs"]["sensor_timeout"]
    assert run["task_states"] == {"wait": "failed"}
    log = job["logs"]["sensor_timeout"]
    assert (
        "AirflowSensorTimeout" in log
        and "No READY version of model 'sensor_timeout_model' after version 1" in log
    )


def test_the_gate_skips_deployment_of_a_worse_model(job):
    run = job["runs"]["gate_reject"]
    assert run["task_states"] == {"gate": "success", "deploy": "skipped", "rejected": "success"}
    assert run["champion"] == "1"
    assert run["xcoms"]["gate.comparison"]["outcome"] == "reject"


def test_the_gate_deploys_a_better_model(job):
    run = job["runs"]["gate_promote"]
    assert run["task_states"] == {"gate": "success", "deploy": "success", "rejected": "skipped"}
    assert run["champion"] == "2" and run["xcoms"]["gate.champion_version"] == "2"


# -- trigger -------------------------------------------------------------------------------------


def test_serialize_returns_exactly_the_init_arguments_and_round_trips():
    kwargs = {
        "model_name": "flights_delay",
        "alias": "champion",
        "after_version": "3",
        "mlflow_conn_id": "mlflow_prod",
        "poll_interval": 2.5,
        "timeout_at": "2026-01-02T00:00:00+00:00",
        "max_errors": 5,
    }
    classpath, serialized = MlflowModelVersionTrigger(**kwargs).serialize()
    assert serialized == kwargs
    module, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module), name)  # what the triggerer does
    assert cls is MlflowModelVersionTrigger
    assert cls(**serialized).serialize() == (classpath, serialized)


def test_the_sensor_hands_the_trigger_no_secret(monkeypatch):
    conn = {"conn_type": "mlflow", "host": "http://127.0.0.1:1", "login": "me", "password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(conn))
    sensor = MlflowModelVersionSensor(task_id="wait", model_name="m", after_version="2", poke_interval=3)
    _, kwargs = sensor._trigger("2026-01-01T00:00:00+00:00").serialize()
    assert "s3cret" not in json.dumps(kwargs) and kwargs["mlflow_conn_id"] == "mlflow_default"
    assert kwargs["after_version"] == "2" and kwargs["poll_interval"] == 3


def test_registry_endpoint_authenticates_from_the_connection():
    def conn(**fields):
        base = {"host": "http://mlflow:5000", "login": None, "password": None, "extra_dejson": {}}
        return SimpleNamespace(**{**base, **fields})

    assert registry_endpoint(conn(), "c")[1] == {"Accept": "application/json"}
    _, basic = registry_endpoint(conn(login="me", password="pw"), "c")
    assert basic["Authorization"] == "Basic bWU6cHc="
    assert registry_endpoint(conn(password="tok"), "c")[1]["Authorization"] == "Bearer tok"
    url, _ = registry_endpoint(conn(extra_dejson={"registry_uri": "https://registry:443/"}), "c")
    assert url == "https://registry:443"


def test_trigger_fires_once_for_a_version_registered_meanwhile(tracking, runs, one_version):
    writer = _later(1.5, lambda: _register_medium(tracking, runs, one_version))
    trigger = MlflowModelVersionTrigger(model_name=one_version, after_version="1", poll_interval=0.3)
    started = time.monotonic()
    events = _events(trigger)
    writer.join()
    assert len(events) == 1
    assert events[0].payload["status"] == "success"
    assert events[0].payload["model_version"]["version"] == "2"
    assert events[0].payload["model_version"]["run_id"] == runs["medium"]
    assert time.monotonic() - started >= 1.4


def test_trigger_fires_once_when_the_alias_moves(tracking, runs, one_version):
    _register_medium(tracking, runs, one_version)
    writer = _later(1.0, lambda: tracking.client.set_registered_model_alias(one_version, "champion", "2"))
    trigger = MlflowModelVersionTrigger(
        model_name=one_version, alias="champion", after_version="1", poll_interval=0.3
    )
    [event] = _events(trigger)
    writer.join()
    assert event.payload["status"] == "success" and event.payload["model_version"]["version"] == "2"


def test_trigger_times_out_at_its_deadline(tracking, one_version):
    from datetime import UTC, datetime, timedelta

    deadline = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    trigger = MlflowModelVersionTrigger(
        model_name=one_version, after_version="1", poll_interval=0.3, timeout_at=deadline
    )
    [event] = _events(trigger)
    assert event.payload["status"] == "timeout"
    assert f"No READY version of model {one_version!r} after version 1" in event.payload["message"]


def test_trigger_reports_an_unreachable_server_as_one_error(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nobody listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "mlflow", "host": f"http://127.0.0.1:{port}"})
    )
    trigger = MlflowModelVersionTrigger(
        model_name="m", mlflow_conn_id="mlflow_down", poll_interval=0.1, max_errors=2
    )
    [event] = _events(trigger)
    assert event.payload["status"] == "error" and f"127.0.0.1:{port}" in event.payload["message"]


def test_trigger_reports_an_unknown_connection():
    [event] = _events(MlflowModelVersionTrigger(model_name="m", mlflow_conn_id="no_such_connection"))
    assert event.payload["status"] == "error" and "no_such_connection" in event.payload["message"]


# -- sensor (in process) -------------------------------------------------------------------------


def test_poke_is_false_until_a_new_version_is_ready(tracking, runs, one_version):
    sensor = MlflowModelVersionSensor(task_id="wait", model_name=one_version, after_version="1")
    assert not sensor.poke({}).is_done
    _register_medium(tracking, runs, one_version)
    found = sensor.poke({})
    assert found.is_done and found.xcom_value["version"] == "2"
    anything = MlflowModelVersionSensor(task_id="any", model_name=one_version, after_version="")
    assert anything.poke({}).xcom_value["version"] == "2"


def test_poke_on_an_alias_waits_for_it_to_move(tracking, runs, one_version):
    sensor = MlflowModelVersionSensor(
        task_id="wait", model_name=one_version, alias="champion", after_version=1
    )
    assert not sensor.poke({}).is_done
    missing = MlflowModelVersionSensor(task_id="wait", model_name=one_version, alias="production")
    assert not missing.poke({}).is_done  # no such alias yet: keep waiting
    unknown_model = MlflowModelVersionSensor(task_id="wait", model_name=f"{one_version}-nope")
    assert not unknown_model.poke({}).is_done
    _register_medium(tracking, runs, one_version)
    tracking.client.set_registered_model_alias(one_version, "champion", "2")
    assert sensor.poke({}).xcom_value["aliases"] == ["champion"]


def test_a_non_numeric_after_version_is_refused():
    with pytest.raises(ValueError, match="after_version must be a version number, got 'latest'"):
        MlflowModelVersionSensor(task_id="wait", model_name="m", after_version="latest")._after()


def test_execute_complete_outcomes():
    sensor = MlflowModelVersionSensor(task_id="wait", model_name="m")
    version = {"name": "m", "version": "4"}
    assert sensor.execute_complete({}, {"status": "success", "model_version": version}) == version
    with pytest.raises(AirflowSensorTimeout, match="No version.*raise this sensor's timeout"):
        sensor.execute_complete({}, {"status": "timeout", "message": "No version."})
    with pytest.raises(AirflowException, match="wait: Looking for .* failed"):
        sensor.execute_complete({}, {"status": "error", "message": "Looking for x failed: boom"})
    with pytest.raises(AirflowException, match="no result"):
        sensor.execute_complete({}, None)
    soft = MlflowModelVersionSensor(task_id="wait", model_name="m", soft_fail=True)
    with pytest.raises(AirflowSkipException, match="soft_fail"):
        soft.execute_complete({}, {"status": "timeout", "message": "No version."})
