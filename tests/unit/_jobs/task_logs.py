"""Run operators the way Airflow's task runner does, and keep their task log as Airflow would.

Usage: ``python task_logs.py SPEC.json OUT_DIR`` with ``AIRFLOW_HOME`` (and the connections the
operators use) in the environment. ``SPEC.json``: ``{"tasks": [{"name", "operator":
"module:Class", "kwargs": {...}, "ti": {"dag_id", "run_id", "task_id", "map_index"}, "method":
"execute"}]}`` (``method``: ``choose_branch`` for a branch operator).

What a task process of Airflow 3 does, and this does too:

* logging is configured with ``airflow.sdk.log.configure_logging(json_output=True,
  sending_to_supervisor=True)``: every structlog event and every stdlib log record becomes one
  JSON line with its level;
* file descriptors 1 and 2 are pipes the supervisor reads: each line written to **stdout becomes
  an ``info`` event** of logger ``task.stdout``, each line written to **stderr an ``error``
  event** of logger ``task.stderr`` (``supervisor.py``: ``_create_log_forwarder(...,
  "task.stderr", log_level=logging.ERROR)``). Both go into the same log as the JSON events.

For each task, ``OUT_DIR/<name>.jsonl`` holds the log of its ``execute`` (one JSON object per
line: ``event``, ``level``, ``logger``), and ``OUT_DIR/<name>.json`` its result or failure.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Sink:
    """One log file written by several threads, one whole line at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file = None

    def switch(self, path: Path | None) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = open(path, "ab", buffering=0) if path else None  # noqa: SIM115

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._file is not None:
                self._file.write(data)
        return len(data)

    def flush(self) -> None:
        pass


BARRIER = b"\x00task_logs barrier\n"


def _relay(fd: int, sink: Sink, logger: str, level: str, seen: threading.Semaphore) -> None:
    """What the supervisor does with the task process's stdout and stderr."""
    with open(fd, "rb") as pipe:
        for raw in pipe:
            if raw.endswith(BARRIER):  # everything before it is in the log now
                raw = raw[: -len(BARRIER)]
                seen.release()
                if not raw:
                    continue
            line = raw.decode("utf-8", errors="replace").rstrip()
            event = {
                "timestamp": datetime.now(UTC).isoformat(),
                "level": level,
                "event": line,
                "logger": logger,
            }
            sink.write(json.dumps(event).encode() + b"\n")


class FakeTI:
    def __init__(self, **fields: Any) -> None:
        self.dag_id = fields.get("dag_id", "task_logs")
        self.run_id = fields.get("run_id", "manual__2026-01-01")
        self.task_id = fields.get("task_id", "task")
        self.map_index = fields.get("map_index", -1)
        self.try_number = fields.get("try_number", 1)
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events of a task log written by :func:`run_tasks`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_tasks(tasks: list[dict[str, Any]], out: Path) -> None:
    """Run each task's ``execute`` as Airflow's task runner would; once per process (it takes over
    logging and the file descriptors 1 and 2)."""
    out.mkdir(parents=True, exist_ok=True)
    sink = Sink()

    from airflow.sdk.log import configure_logging

    configure_logging(json_output=True, output=sink, sending_to_supervisor=True)
    relays = []
    saved = {}
    seen = threading.Semaphore(0)

    def drain() -> None:
        """Wait until the relays have logged every line written so far to stdout and stderr."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.write(fd, BARRIER)
        for _ in (1, 2):
            seen.acquire(timeout=30)

    for fd, logger, level in ((1, "task.stdout", "info"), (2, "task.stderr", "error")):
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        saved[fd] = os.dup(fd)
        os.dup2(write, fd)
        os.close(write)
        thread = threading.Thread(target=_relay, args=(read, sink, logger, level, seen), daemon=True)
        thread.start()
        relays.append(thread)

    for task in tasks:
        module, _, name = task["operator"].partition(":")
        operator_class = getattr(importlib.import_module(module), name)
        ti = FakeTI(**task.get("ti", {}))
        operator = operator_class(task_id=ti.task_id, **task.get("kwargs", {}))
        context = {"ti": ti, "outlet_events": {}, "dag": None}
        sink.switch(out / f"{task['name']}.jsonl")
        outcome: dict[str, Any]
        try:
            # a branch operator's own decision: its skipping of other tasks needs a real DAG run
            result = getattr(operator, task.get("method", "execute"))(context)
            outcome = {"result": result, "xcoms": ti.xcoms}
        except Exception as err:  # noqa: BLE001 - reported to the test
            outcome = {"error": f"{type(err).__name__}: {err}", "xcoms": ti.xcoms}
        drain()
        sink.switch(None)
        (out / f"{task['name']}.json").write_text(json.dumps(outcome, default=str))

    for fd, copy in saved.items():
        os.dup2(copy, fd)  # closes the pipes' write ends: the relays see the end of their input
    for thread in relays:
        thread.join(10)


def main(spec_path: str, out_dir: str) -> None:
    run_tasks(json.loads(Path(spec_path).read_text())["tasks"], Path(out_dir))


if __name__ == "__main__":
    main(*sys.argv[1:3])
