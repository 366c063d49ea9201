"""``DatasetVersionTrigger``: serialisation, and ``run()`` against real snapshots written meanwhile."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from airflow.triggers.base import TriggerEvent
from airflow_mlops.datasets import interval_key, write_snapshot
from airflow_mlops.example_data.nycflights13 import load_flights
from airflow_mlops.triggers.dataset import DatasetVersionTrigger

START = datetime(2013, 6, 3, tzinfo=UTC)
END = datetime(2013, 6, 4, tzinfo=UTC)


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    df = load_flights(START, END)
    assert len(df) > 500
    return df


def _changed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.loc[0, "arr_delay"] += 1
    return out


def _events(trigger: DatasetVersionTrigger, limit_s: float = 30) -> list[TriggerEvent]:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), limit_s))


def test_serialize_returns_exactly_the_init_arguments_and_round_trips(tmp_path):
    kwargs = {
        "root": str(tmp_path),
        "dataset": "flights",
        "interval_start": START.isoformat(),
        "interval_end": END.isoformat(),
        "after": "2026-01-01T00:00:00+00:00",
        "poll_interval": 2.5,
        "timeout_at": "2026-01-02T00:00:00+00:00",
    }
    classpath, serialized = DatasetVersionTrigger(**kwargs).serialize()
    assert serialized == kwargs
    module, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module), name)  # what the triggerer does
    assert cls is DatasetVersionTrigger
    assert cls(**serialized).serialize() == (classpath, serialized)


def test_defaults_serialize_too(tmp_path):
    _, serialized = DatasetVersionTrigger(root=str(tmp_path), dataset="flights").serialize()
    assert serialized == {
        "root": str(tmp_path),
        "dataset": "flights",
        "interval_start": None,
        "interval_end": None,
        "after": None,
        "poll_interval": 60.0,
        "timeout_at": None,
    }


def test_half_an_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="both interval_start and interval_end"):
        DatasetVersionTrigger(root=str(tmp_path), dataset="flights", interval_start=START.isoformat())


def test_fires_once_when_a_concurrent_ingest_stores_a_newer_version(tmp_path, day):
    old, _ = write_snapshot(day, tmp_path, "flights", START, END)
    after = datetime.now(UTC).isoformat()
    written = {}

    def ingest_later():
        time.sleep(1.5)
        snap, _ = write_snapshot(_changed(day), tmp_path, "flights", START, END)
        written.update(version=snap.version, at=time.monotonic())

    writer = threading.Thread(target=ingest_later)
    writer.start()
    trigger = DatasetVersionTrigger(
        root=str(tmp_path),
        dataset="flights",
        interval_start=START.isoformat(),
        interval_end=END.isoformat(),
        after=after,
        poll_interval=0.2,
        timeout_at=(datetime.now(UTC) + timedelta(seconds=20)).isoformat(),
    )
    events = _events(trigger)
    fired = time.monotonic()
    writer.join()
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success"
    assert payload["snapshot"]["version"] == written["version"] != old.version
    assert fired >= written["at"], "fired before the new version was stored"
    assert payload["snapshot"]["rows"] == len(day)


def test_another_interval_does_not_satisfy_it(tmp_path, day):
    write_snapshot(day, tmp_path, "flights", START - timedelta(days=1), START)
    trigger = DatasetVersionTrigger(
        root=str(tmp_path),
        dataset="flights",
        interval_start=START.isoformat(),
        interval_end=END.isoformat(),
        poll_interval=0.2,
        timeout_at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
    )
    [event] = _events(trigger)
    assert event.payload["status"] == "timeout"
    assert "flights" in event.payload["message"] and interval_key(START, END) not in event.payload["message"]


def test_times_out_at_its_fixed_instant(tmp_path, day, monkeypatch):
    """The deadline, not the poll interval, bounds the wait: no sleep reaches past the deadline."""
    write_snapshot(day, tmp_path, "flights", START, END)
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    trigger = DatasetVersionTrigger(
        root=str(tmp_path),
        dataset="flights",
        after=datetime.now(UTC).isoformat(),  # the stored version is older
        poll_interval=30,
        timeout_at=deadline.isoformat(),
    )
    real_sleep, asked = asyncio.sleep, []

    async def recorded_sleep(seconds: float) -> None:
        # each sleep is recorded with the time it would end; the test waits for real, but only
        # as long as the trigger asked
        asked.append((seconds, datetime.now(UTC) + timedelta(seconds=seconds)))
        await real_sleep(seconds)

    monkeypatch.setattr("airflow_mlops.triggers.dataset.asyncio.sleep", recorded_sleep)
    events = _events(trigger)
    assert [e.payload["status"] for e in events] == ["timeout"]
    assert asked, "the trigger never waited"
    assert all(seconds < 30 for seconds, _ in asked), asked  # never a whole poll interval
    assert all(ends <= deadline + timedelta(seconds=0.5) for _, ends in asked), (deadline, asked)
    assert datetime.now(UTC) >= deadline  # and it did not give up early


def test_a_corrupt_manifest_is_an_error_event_not_a_hang(tmp_path, day):
    snap, _ = write_snapshot(day, tmp_path, "flights", START, END)
    with open(snap.manifest, "w") as f:
        f.write("{not json")
    trigger = DatasetVersionTrigger(root=str(tmp_path), dataset="flights", poll_interval=0.1)
    [event] = _events(trigger)
    assert event.payload["status"] == "error"
    assert "JSONDecodeError" in event.payload["message"]
