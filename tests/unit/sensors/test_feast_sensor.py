"""``FeastFeatureFreshnessSensor``: pokes on real registries, and ``dag.test()`` of the deferrable mode.

``dag.test()`` in Airflow 3 runs a deferred task's trigger inline; the Feast job
(``_jobs/feast_stores.py``) materializes the next day while the trigger polls, so the sensor
defers, the trigger sees the new materialization end and the task resumes and succeeds.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "feast_stores_job", Path(__file__).resolve().parents[1] / "_jobs" / "feast_stores.py"
)
feast_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feast_job)
STORES = ["sqlite", "redis"]


def start_jobs(jobs) -> None:
    feast_job.submit(jobs)


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return feast_job.load(jobs)


def _sensor(**kwargs):
    from airflow_mlops.sensors.feast import FeastFeatureFreshnessSensor

    return FeastFeatureFreshnessSensor(
        task_id="fresh", feature_view="weather_hourly", max_staleness=timedelta(hours=1), **kwargs
    )


def test_reference_time():
    end = datetime(2013, 6, 10, tzinfo=UTC)
    assert _sensor()._reference({}) is None  # now, re-read at each check
    assert _sensor(relative_to="data_interval_end")._reference({"data_interval_end": end}) == end
    assert _sensor(relative_to="2013-06-10T00:00:00Z")._reference({}) == end
    with pytest.raises(ValueError, match="no data interval"):
        _sensor(relative_to="data_interval_end")._reference({"data_interval_end": None})
    assert "feature_view" in _sensor().template_fields


def test_execute_complete_maps_trigger_events():
    from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

    sensor = _sensor()
    assert sensor.execute_complete({}, {"status": "success", "message": "ok", "last_end": None}) is None
    with pytest.raises(AirflowSensorTimeout, match="not fresh"):
        sensor.execute_complete({}, {"status": "timeout", "message": "not fresh", "last_end": None})
    with pytest.raises(AirflowException, match="LookupError"):
        sensor.execute_complete({}, {"status": "error", "message": "LookupError: no view"})


@pytest.mark.parametrize("store", STORES)
def test_poke(job, store):
    assert job[store]["pokes"] == {
        "fresh_1h": True,
        "stale_10min": False,
        "data_interval_end_1h": True,
        "now_1h": False,
        "carrier_fresh_1d": True,
        "carrier_stale_12h": False,
    }


def test_deferred_sensor_resumes_when_a_materialization_lands(job):
    out = job["dag_test"]
    assert out["import_errors"] == {}
    run = out["runs"]["feast_fresh_deferred"]
    assert run["state"] == "success", run
    assert run["tis"]["weather_fresh"]["state"] == "success"
    # the trigger first read the old end (stale), then the end written while it waited
    assert run["reads"][0] == "2013-06-09 00:00:00+00:00"
    assert run["reads"][-1] == "2013-06-10 00:00:00+00:00"
    assert out["writer"]["reads_before"] >= 1 and out["writer"]["report"]["rows"] == 3
    assert "[DAG TEST] running trigger in line" in job["output"]


def test_deferred_sensor_fails_on_trigger_timeout(job):
    run = job["dag_test"]["runs"]["feast_stale_deferred"]
    assert run["state"] == "failed" and run["tis"]["weather_fresh"]["state"] == "failed"
    assert len(run["reads"]) >= 2  # it polled until the deadline
    assert "AirflowSensorTimeout: weather_fresh: weather_hourly was not fresh" in job["output"]
