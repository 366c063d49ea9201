"""``DatasetVersionSensor``: poking and deferred under ``dag.test()``, and its resume outcomes.

The ``dag.test()`` runs happen in a fresh interpreter (``_jobs/ingest_sensor_dag_test.py``)
while a thread in it stores a new version; ``dag.test()`` runs a deferred task's trigger inline.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException
from airflow_mlops.datasets import write_snapshot
from airflow_mlops.example_data.nycflights13 import load_flights
from airflow_mlops.sensors.dataset import DatasetVersionSensor
from airflow_mlops.triggers.dataset import DatasetVersionTrigger

START = datetime(2013, 6, 3, tzinfo=UTC)
END = datetime(2013, 6, 4, tzinfo=UTC)


def start_jobs(jobs) -> None:
    work = jobs.workdir("ingest-sensor-dag-test")
    jobs.submit(
        "ingest-sensor-dag-test",
        [jobs.python, jobs.script("ingest_sensor_dag_test"), work / "work", work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home", PYTHONUNBUFFERED="1"),
        timeout=400,
    )


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    start_jobs(jobs)
    result = jobs.result("ingest-sensor-dag-test").check()
    data = json.loads((jobs.workdir("ingest-sensor-dag-test") / "result.json").read_text())
    data["logs"] = {
        m.group(1): m.group(2)
        for m in re.finditer(r"=== BEGIN RUN (\w+)\n(.*?)=== END RUN \1", result.output, flags=re.S)
    }
    return data


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    return load_flights(START, END)


def _changed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.loc[0, "arr_delay"] += 1
    return out


def _sensor(tmp_path, **kwargs) -> DatasetVersionSensor:
    return DatasetVersionSensor(task_id="wait", dataset="flights", output_dir=str(tmp_path), **kwargs)


# -- dag.test() ----------------------------------------------------------------------------


@pytest.mark.parametrize("dag_id", ["sensor_poke", "sensor_deferred"])
def test_waits_for_the_version_ingested_meanwhile_and_returns_it(job, dag_id):
    assert job["import_errors"] == {}
    run = job["runs"][dag_id]
    assert run["state"] == "success", job["logs"].get(dag_id, "")[-3000:]
    assert run["task_states"] == {"wait": "success"}
    snapshot = run["xcoms"]["return_value"]
    assert snapshot["version"] == run["new_version"] != run["old_version"]
    assert run["ended_after_write"], "the sensor succeeded before the new version was stored"
    assert snapshot["interval_start"] == START.isoformat()
    assert pd.read_parquet(snapshot["path"]).shape[0] == snapshot["rows"]


def test_deferred_mode_ran_the_trigger(job):
    log = job["logs"]["sensor_deferred"]
    assert "[DAG TEST] running trigger in line" in log
    assert "running trigger in line" not in job["logs"]["sensor_poke"]


def test_times_out_with_a_clear_error(job):
    run = job["runs"]["sensor_timeout"]
    assert run["task_states"] == {"wait": "failed"}
    assert "return_value" not in run["xcoms"]
    log = job["logs"]["sensor_timeout"]
    assert "AirflowSensorTimeout" in log
    interval = "[2013-06-03T00:00:00+00:00, 2013-06-04T00:00:00+00:00)"
    assert f"No version of 'flights' of {interval} ingested after" in log
    assert "raise this sensor's timeout" in log


def test_soft_fail_skips_on_timeout(job):
    assert job["runs"]["sensor_soft_fail"]["task_states"] == {"wait": "skipped"}
    assert job["runs"]["sensor_soft_fail"]["state"] == "success"


# -- in process ----------------------------------------------------------------------------


def test_poke_is_false_until_a_newer_version_then_returns_its_manifest(tmp_path, day):
    old, _ = write_snapshot(day, tmp_path, "flights", START, END)
    sensor = _sensor(tmp_path, after_version=old.version, interval_start=START, interval_end=END)
    assert not sensor.poke({})
    new, _ = write_snapshot(_changed(day), tmp_path, "flights", START, END)
    result = sensor.poke({})
    assert result.is_done and result.xcom_value["version"] == new.version
    assert result.xcom_value["path"] == new.path


def test_without_a_threshold_any_stored_version_satisfies_it(tmp_path, day):
    sensor = _sensor(tmp_path, interval_start=START.isoformat(), interval_end=END.isoformat())
    assert not sensor.poke({})
    snap, _ = write_snapshot(day, tmp_path, "flights", START, END)
    assert sensor.poke({}).xcom_value["version"] == snap.version


def test_an_unknown_after_version_is_a_clear_error(tmp_path, day):
    write_snapshot(day, tmp_path, "flights", START, END)
    with pytest.raises(FileNotFoundError, match="Version 'deadbeefdeadbeef' of dataset 'flights'"):
        _sensor(tmp_path, after_version="deadbeefdeadbeef").poke({})


def test_the_trigger_carries_the_resolved_threshold_and_a_deadline(tmp_path, day):
    old, _ = write_snapshot(day, tmp_path, "flights", START, END)
    sensor = _sensor(tmp_path, after_version=old.version, interval_start=START, interval_end=END)
    sensor.timeout, sensor.poke_interval = 300.0, 7.0
    trigger = sensor._trigger()
    assert isinstance(trigger, DatasetVersionTrigger)
    manifest = json.loads(open(old.manifest).read())
    _, kwargs = trigger.serialize()
    assert datetime.fromisoformat(kwargs["after"]) == datetime.fromisoformat(manifest["ingested_at"])
    assert kwargs["interval_start"] == START.isoformat() and kwargs["poll_interval"] == 7
    left = (datetime.fromisoformat(kwargs["timeout_at"]) - datetime.now(UTC)).total_seconds()
    assert 290 < left <= 300


def test_execute_complete_outcomes(tmp_path):
    sensor = _sensor(tmp_path)
    snapshot = {"version": "0123456789abcdef", "path": "/x.parquet"}
    assert sensor.execute_complete({}, {"status": "success", "snapshot": snapshot}) == snapshot
    with pytest.raises(AirflowSensorTimeout, match="No version.*raise this sensor's timeout"):
        sensor.execute_complete({}, {"status": "timeout", "message": "No version."})
    with pytest.raises(AirflowException, match="wait: Looking for .* failed"):
        sensor.execute_complete({}, {"status": "error", "message": "Looking for x failed: OSError()"})
    with pytest.raises(AirflowException, match="no result"):
        sensor.execute_complete({}, None)
    soft = _sensor(tmp_path, soft_fail=True)
    with pytest.raises(AirflowSkipException, match="soft_fail"):
        soft.execute_complete({}, {"status": "timeout", "message": "No version."})


def test_half_an_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="both interval_start and interval_end"):
        _sensor(tmp_path, interval_start=START)
