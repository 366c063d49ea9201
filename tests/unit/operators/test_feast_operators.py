"""``FeastMaterializeOperator`` on real data: chunks, row counts, retry, incremental, overlap.

The operator runs in the background Feast job (``_jobs/feast_stores.py``, real SQLite and Redis
online stores); expected counts and values are recomputed here from its Parquet sources.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

_spec = importlib.util.spec_from_file_location(
    "feast_stores_job", Path(__file__).resolve().parents[1] / "_jobs" / "feast_stores.py"
)
feast_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feast_job)
day, WEATHER = feast_job.day, feast_job.WEATHER
STORES = ["sqlite", "redis"]


def start_jobs(jobs) -> None:
    feast_job.submit(jobs)


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return feast_job.load(jobs)


def read_source(folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("*.parquet"))], ignore_index=True)


def entities_per_day(df: pd.DataFrame, key: str, ts: str, first: int, last: int) -> int:
    """Rows Feast writes for daily chunks ``first..last``: one per entity present in each day."""
    return sum(
        df[(df[ts] >= pd.Timestamp(day(n))) & (df[ts] < pd.Timestamp(day(n + 1)))][key].nunique()
        for n in range(first, last)
    )


def test_init_is_cheap_and_validates_arguments():
    from airflow_mlops.operators.feast import FeastMaterializeOperator

    op = FeastMaterializeOperator(task_id="m", feature_views=["weather_hourly"], start="2013-06-03", end=None)
    assert {"feature_views", "start", "end", "repo_path"} <= set(op.template_fields)
    assert op.chunk == timedelta(days=31) and op.overlap is None and not op.incremental
    with pytest.raises(ValueError, match="chunk"):
        FeastMaterializeOperator(task_id="m2", chunk=timedelta(0))
    with pytest.raises(ValueError, match="overlap"):
        FeastMaterializeOperator(task_id="m3", overlap=timedelta(hours=-1))


@pytest.mark.parametrize("store", STORES)
def test_daily_chunks_and_counted_rows(job, store):
    weather = read_source(job["sources"]["weather_dir"])
    carriers = read_source(job["sources"]["carrier_dir"])
    first = job[store]["first"]
    assert first["start"] == day(0).isoformat() and first["end"] == day(3).isoformat()
    w, c = first["views"]["weather_hourly"], first["views"]["carrier_daily"]
    assert (w["chunks"], c["chunks"]) == (3, 3)
    assert w["rows"] == entities_per_day(weather, "origin", "time_hour", 0, 3) == 9
    # carrier statistics are stamped at the next midnight: none fall on the first day
    assert c["rows"] == entities_per_day(carriers, "carrier", "event_timestamp", 0, 3) > 0
    assert first["rows"] == w["rows"] + c["rows"]


@pytest.mark.parametrize("store", STORES)
def test_retry_reports_the_same_ranges_and_rows(job, store):
    def strip(report: dict) -> dict:
        views = {
            name: {k: v for k, v in view.items() if k != "seconds"} for name, view in report["views"].items()
        }
        return {**report, "views": views}

    assert strip(job[store]["retry"]) == strip(job[store]["first"])


@pytest.mark.parametrize("store", STORES)
def test_incremental_starts_at_the_last_materialized_end(job, store):
    assert job[store]["last_end_after_retry"] == {
        "weather_hourly": "2013-06-06 00:00:00+00:00",
        "carrier_daily": "2013-06-06 00:00:00+00:00",
    }
    views = job[store]["incremental"]["views"]
    for view in ("weather_hourly", "carrier_daily"):
        assert views[view]["start"] == day(3).isoformat(), views[view]
        assert views[view]["end"] == day(5).isoformat() and views[view]["chunks"] == 2
    again = job[store]["incremental_again"]["views"]
    assert all(v["skipped"] and v["rows"] == 0 and v["chunks"] == 0 for v in again.values())


def test_one_chunk_when_chunking_is_off(job):
    whole = job["sqlite"]["whole_range_once"]["views"]["weather_hourly"]
    assert whole["chunks"] == 1 and whole["rows"] == 3  # latest row of each airport


@pytest.mark.parametrize("store", STORES)
def test_overlap_picks_up_a_late_row_that_no_overlap_misses(job, store):
    late = job[store]["late_row"]
    assert late["origin"] == "TEB" and pd.Timestamp(late["time_hour"]) < pd.Timestamp(day(5))
    teb = {
        run: next(r for r in job[store][f"{run}_online"]["weather_hourly"] if r["origin"] == "TEB")
        for run in ("no_overlap", "overlap")
    }
    assert all(teb["no_overlap"][f] is None for f in WEATHER)
    assert {f: teb["overlap"][f] for f in WEATHER} == {f: late[f] for f in WEATHER}
    assert job[store]["no_overlap"]["views"]["weather_hourly"]["rows"] == 3
    overlap = job[store]["overlap"]["views"]["weather_hourly"]
    assert overlap["start"] == (day(5) - timedelta(hours=6)).isoformat()
    assert overlap["rows"] == 3 + 4  # the overlapped chunk also writes TEB
    # the airports' values are the same with and without overlap
    others = {
        run: [r for r in job[store][f"{run}_online"]["weather_hourly"] if r["origin"] != "TEB"]
        for run in ("no_overlap", "overlap")
    }
    assert others["overlap"] == others["no_overlap"]


def test_progress_is_logged_per_chunk(job):
    lines = re.findall(
        r"weather_hourly: chunk (\d+)/(\d+) \[(\S+), (\S+)\): (\d+) rows written"
        r" in [\d.]+ s \((\d+) rows/s\)",
        job["output"],
    )
    assert ("1", "3", day(0).isoformat(), day(1).isoformat(), "3") in [line[:5] for line in lines]
    assert len(lines) >= 20
