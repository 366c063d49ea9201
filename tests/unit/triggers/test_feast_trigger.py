"""``FeastFreshnessTrigger``: serialisation round trip, and its events against real registries."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "feast_stores_job", Path(__file__).resolve().parents[1] / "_jobs" / "feast_stores.py"
)
feast_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feast_job)
STORES = ["sqlite", "redis"]
KWARGS = {
    "feature_view": "weather_hourly",
    "project": "flights",
    "registry_path": "/data/feast/registry.db",
    "max_staleness_s": 3600.0,
    "reference": "2013-06-10T00:30:00+00:00",
    "poll_interval": 5.0,
    "deadline": "2030-01-01T00:00:00+00:00",
}


def start_jobs(jobs) -> None:
    feast_job.submit(jobs)
    jobs.submit(
        "feast-import-guard",
        [
            jobs.python,
            "-c",
            "import sys, airflow_mlops.hooks.feast, airflow_mlops.operators.feast, "
            "airflow_mlops.sensors.feast, airflow_mlops.triggers.feast; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'feast', 'pandas', 'dask'}))",
        ],
        env=jobs.airflow_env(jobs.workdir("feast-import-guard") / "home"),
    )


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return feast_job.load(jobs)


def test_serialize_round_trip():
    from airflow_mlops.triggers.feast import FeastFreshnessTrigger

    classpath, kwargs = FeastFreshnessTrigger(**KWARGS).serialize()
    assert classpath == "airflow_mlops.triggers.feast.FeastFreshnessTrigger"
    assert kwargs == KWARGS
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, KWARGS)


def test_modules_import_no_heavy_library(jobs):
    start_jobs(jobs)
    result = jobs.result("feast-import-guard").check()
    assert result.output.strip().splitlines()[-1] == "[]"


def test_freshness_rule():
    from datetime import UTC, datetime, timedelta

    from airflow_mlops.triggers.feast import is_fresh

    ref = datetime(2013, 6, 10, tzinfo=UTC)
    assert is_fresh(ref - timedelta(hours=1), ref, timedelta(hours=1))
    assert not is_fresh(ref - timedelta(hours=1, seconds=1), ref, timedelta(hours=1))
    assert not is_fresh(None, ref, timedelta(days=365))


@pytest.mark.parametrize("store", STORES)
def test_one_event_per_outcome(job, store):
    runs = job[store]["trigger"]
    assert [len(runs[k]["events"]) for k in ("fresh", "stale", "unknown_view")] == [1, 1, 1]
    fresh, stale, unknown = (runs[k]["events"][0] for k in ("fresh", "stale", "unknown_view"))
    assert fresh["status"] == "success" and fresh["staleness_s"] == 1800.0
    assert fresh["last_end"] == "2013-06-09T00:00:00+00:00"
    assert stale["status"] == "timeout" and runs["stale"]["seconds"] >= 1.5
    assert unknown["status"] == "error" and "no_such_view" in unknown["message"]
    assert "FeastApplyOperator" in unknown["message"]
