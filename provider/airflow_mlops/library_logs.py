"""
Library chatter into the task log at the level it deserves.

Airflow 3 logs every line a task process writes to **stderr at ERROR level** (the supervisor reads
the task's stderr as ``task.stderr``). MLflow writes its routine notices there ("Successfully
registered model", "Created version", its own log records, artifact progress bars); Great
Expectations logs dozens of INFO lines while it is imported. In a task log they bury what the task
did, and a successful task shows errors.

:func:`route_logger` takes a library's logger over: its records reach the task log through
Airflow's own logging (root handlers), routine ones (INFO and below, or matching a pattern) at
DEBUG, warnings and errors as they are. :class:`LogStream` is a file-like object that logs each
line written to it, for libraries that ``print`` to a stream. The hooks call these when they load
the library (``MlflowHook.mlflow``, ``ValidationSession``); only the standard library here.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable

__all__ = ["LogStream", "route_logger"]


def _deliver(record: logging.LogRecord, level: int) -> None:
    """Hand ``record`` at ``level`` to the root logger's handlers: Airflow's task log in a task."""
    if level != record.levelno:
        record = logging.makeLogRecord(record.__dict__)
        record.levelno, record.levelname = level, logging.getLevelName(level)
    logging.getLogger().handle(record)


class _Relay(logging.Handler):
    """Re-emits a library's records to the root logger, routine ones at DEBUG."""

    def __init__(self, routine: Iterable[re.Pattern[str]] = ()) -> None:
        super().__init__()
        self.routine = list(routine)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            routine = record.levelno <= logging.INFO or any(
                pattern.search(record.getMessage()) for pattern in self.routine
            )
            _deliver(record, logging.DEBUG if routine else record.levelno)
        except Exception:  # noqa: BLE001 - logging must never fail the task
            self.handleError(record)


def route_logger(name: str, routine: Iterable[str] = ()) -> None:
    """
    Send the records of logger ``name`` (and its children) to the task log: INFO and below at
    DEBUG, and so are warnings matching one of the ``routine`` patterns; other warnings and
    errors keep their level. The logger's own handlers (often a stream to stderr) are removed.
    Idempotent, and re-applied in full on every call: a library that configures its logger
    again (MLflow does on some imports, adding a stream handler) is taken back over.
    """
    logger = logging.getLogger(name)
    patterns = [re.compile(p) for p in routine]
    relay = next((h for h in logger.handlers if isinstance(h, _Relay)), None) or _Relay()
    relay.routine = patterns
    logger.handlers = [relay]
    logger.propagate = False


class LogStream(io.TextIOBase):
    """
    A text stream that logs every line written to it (at DEBUG by default), as logger ``name``.

    For libraries that print their notices to ``sys.stderr`` or ``sys.stdout``.
    """

    def __init__(self, name: str, level: int = logging.DEBUG) -> None:
        super().__init__()
        self.logger = logging.getLogger(name)
        self.level = level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.strip():
            record = self.logger.makeRecord(self.logger.name, self.level, "(stream)", 0, line, None, None)
            _deliver(record, self.level)
