"""Seldon Core (1.17.x) python model serving an MLflow pyfunc model.

This module runs INSIDE the serving runtime environment (see
``docker/serving/requirements.txt``).  It must not import airflow nor anything
else from the ``airflow_mlops`` package: the serving image only ships this
directory (copied to ``/opt/mlops/runtimes``).

Start it with the seldon microservice CLI; the interface name is
``seldon_model.MlflowModel`` and this directory must be the working directory
or on ``PYTHONPATH``.  ``seldon_serve.py`` next to this file is a launcher that
additionally controls the bind host (seldon-core 1.17.1 hard-codes 0.0.0.0)::

    python seldon_serve.py --host 127.0.0.1 seldon_model.MlflowModel \
        --http-port 9000 --grpc-port 5000 --metrics-port 6000

Environment:

``MODEL_URI``
    Any MLflow model URI; in practice a local directory holding a downloaded
    MLflow model.  Required.
``MODEL_VERSION``
    Free-form version label, reported in metadata, response tags and the
    inference log.  Default ``"unknown"``.
``MODEL_NAME``
    Name reported by ``/api/v1.0/metadata``.  Default ``"mlflow-model"``.
``INFERENCE_LOG_DIR``
    Optional.  When set, every successfully predicted row is logged to Parquet
    files under this directory (see *Inference log* below).
``INFERENCE_LOG_FLUSH_SECONDS``
    How often the background writer flushes the in-memory buffer.  Default ``1.0``.
``INFERENCE_LOG_MAX_ROWS``
    Flush early once this many rows are buffered.  Default ``5000``.
``CLASS_NAMES``
    Optional comma separated output names, only used by seldon when the model
    returns more than one output column.

Bad input: a request the model cannot read — a column of the signature missing, rows of the
wrong width, a value that is not a number where the signature has a number — is the client's
error: HTTP 400 with a Seldon error body naming what the model expects::

    {"status": {"code": 400, "reason": "MICROSERVICE_BAD_DATA", "status": "FAILURE",
                "info": "the request lacks the model's input columns ['distance']; the model
                         expects columns hour (double), distance (double)"}}

Other failures stay 500 ``MICROSERVICE_INTERNAL_ERROR`` (seldon's own handler).

Metadata: ``/api/v1.0/metadata`` lists the model's ``inputs`` and ``outputs`` from its MLflow
signature (read from the ``MLmodel`` file of a local ``MODEL_URI`` when the app is built), one
entry per column ``{"name", "datatype", "shape"}`` (Seldon's tensor metadata: ``FP64``,
``INT64``, ``BYTES``...), or one per tensor with its shape.

Response format: a model returning one value per row (shape ``(n,)`` or
``(n, 1)``) is answered as a flat list, e.g.
``{"data": {"names": [], "ndarray": [0.61, 0.87]}, "meta": {"tags": {...}}}``
(seldon 1.17 only reports ``names`` for 2-D outputs).  ``meta.tags`` carries
``model_version`` and the ``request_id`` written to the inference log.

A request whose ``meta.tags`` has ``"mlops_log": false`` is answered but not logged: that is
how the drift check scores its *reference* rows (the training data) without them passing for
served traffic in the log the drift watcher reads.

Inference log
-------------
Layout, partitioned by the UTC hour in which a file was *written*::

    $INFERENCE_LOG_DIR/hour=2026-11-22T05/part-20261122T051502.123456Z-4242-000017.parquet
                       hour=YYYY-MM-DDTHH/part-<UTC write time, µs>-<pid>-<seq>.parquet

File names sort chronologically, within a partition and (because the partition
is the hour of the same timestamp) across partitions, so a reader can keep the
relative path of the last file it consumed as a cursor.  Each file is written
under a temporary name in the log directory that does not end in ``.parquet``
(``.part-<pid>-<seq>.parquet.tmp``) and then renamed into its partition with
``os.replace``: a ``*.parquet`` file is always complete.  The
name is taken right before the rename, so files appear in name order (up to
the microseconds between naming and renaming, across processes).

One row per predicted row, columns in this order:

========================  ==========================================================
``request_id``            string; also returned in the response's ``meta.tags``
``row``                   int64, index of the row within its request
``ts``                    timestamp[ms, UTC] when the request arrived (at most about
                          one flush interval before the file's write time)
``model_version``         string, ``MODEL_VERSION``
``latency_ms``            float64, model time of the whole request (same on each row)
``prediction``            float64; for a model with several output columns the last
                          one (e.g. the positive class of ``[p0, p1]``), and then
                          ``prediction_0`` .. ``prediction_<k-1>`` hold all of them;
                          NaN when the output is not numeric
``<feature>`` ...         float64, one column per feature as received (before the
                          float32 cast for the model); names from the request, else
                          from the model signature, else ``f0`` .. ``f<n-1>``; values
                          that are not numbers are null; a name taken by a column
                          above (or ``prediction_<k>``) is logged as ``feature_<name>``,
                          a repeated one gets a ``_1``, ``_2`` ... suffix
========================  ==========================================================

Files written by requests with different feature names have different schemas
(read them with a schema union: missing columns are null).

Writing: the request path only appends a reference to the request's arrays to
an in-memory list under a lock.  A daemon thread, started lazily in the process
that logs (seldon forks gunicorn workers and gRPC worker processes; buffers and
threads are reset in a forked child, and every operation checks the pid), builds
the Arrow table and writes one file per flush, every
``INFERENCE_LOG_FLUSH_SECONDS`` or as soon as ``INFERENCE_LOG_MAX_ROWS`` rows are
buffered, and once more at process exit (``atexit``, plus a multiprocessing
finaliser for seldon's ``multiprocessing`` children, which exit through
``os._exit``).  Errors in the writer are logged and drop that batch (counted in
``dropped_rows``): logging never fails a prediction.

No answered prediction is lost to a crash: before the answer leaves, the request's
record is appended with one ``write`` (no buffer) to this process's journal segment,
``.journal/<pid>-<start ticks>-<seq>.jsonl`` in the log directory; the flush that
writes the segment's rows as Parquet notes the file in ``<segment>.done`` before the
rename and deletes both after it.  A process killed with SIGKILL leaves its segment;
the next model server of the log (its restart) writes it as Parquet once it has loaded
its model (:meth:`InferenceLogWriter.recover`) — a segment whose ``.done`` file exists
is only deleted, so no row is written twice.  A request whose ``meta.tags`` has a
``request_id`` (the router sets one, kept across its retries) is logged under it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import fcntl
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SECONDS = 1.0
DEFAULT_MAX_ROWS = 5000
#: ``meta.tags`` key of a request that must not be logged (``false``)
NO_LOG_TAG = "mlops_log"


def _wants_log(meta: Any) -> bool:
    """False for a request tagged ``{"mlops_log": false}`` (a drift check's reference rows)."""
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return not (isinstance(tags, dict) and tags.get(NO_LOG_TAG) is False)


def _request_id(meta: Any) -> str | None:
    """The request id the router (or the client) set in ``meta.tags.request_id``."""
    tags = meta.get("tags") if isinstance(meta, dict) else None
    value = tags.get("request_id") if isinstance(tags, dict) else None
    return str(value)[:128] if value else None


LOG_COLUMNS = ("request_id", "row", "ts", "model_version", "latency_ms", "prediction")
_RESERVED = re.compile("|".join(LOG_COLUMNS) + r"|prediction_\d+")
_ERROR_LOG_INTERVAL_S = 60.0
_SEQ = itertools.count()  # per process; the pid in the file name tells processes apart


# ------------------------------------------------------------------ bad input and the signature

#: MLflow column types -> Seldon tensor datatypes (``seldon_core.metadata.TENSOR_DATA_TYPES``)
_COLUMN_DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
_NUMPY_DATATYPES = {
    "float64": "FP64",
    "float32": "FP32",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint64": "UINT64",
    "uint32": "UINT32",
    "uint16": "UINT16",
    "uint8": "UINT8",
    "bool": "BOOL",
}
_NUMERIC_COLUMNS = frozenset({"double", "float", "long", "integer"})


class BadModelInput(ValueError):
    """The request does not fit the model's signature: the client's error (HTTP 400)."""

    status_code = 400
    reason = "MICROSERVICE_BAD_DATA"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": {
                "code": self.status_code,
                "info": str(self),
                "reason": self.reason,
                "status": "FAILURE",
            }
        }


class Spec(NamedTuple):
    """One input or output of an MLflow signature: a column (``ColSpec``) or a tensor (``TensorSpec``)."""

    name: str | None
    type: str  # the MLflow column type, or the tensor's numpy dtype
    shape: list[int] | None  # tensors only
    required: bool

    @property
    def tensor(self) -> bool:
        return self.shape is not None

    @property
    def numeric(self) -> bool:
        if self.tensor:
            return self.type in _NUMPY_DATATYPES and self.type != "bool"
        return self.type in _NUMERIC_COLUMNS

    def describe(self) -> str:
        if self.tensor:
            return f"{self.name or 'a tensor'} ({self.type}, shape {self.shape})"
        return f"{self.name} ({self.type})"

    def metadata(self, index: int, what: str) -> dict[str, Any]:
        """Seldon's tensor metadata (``seldon_core.metadata.METADATA_TENSOR_SCHEMA``)."""
        if self.tensor:
            datatype = _NUMPY_DATATYPES.get(self.type, "BYTES")
            return {"name": self.name or f"{what}_{index}", "datatype": datatype, "shape": list(self.shape)}
        datatype = _COLUMN_DATATYPES.get(self.type, "BYTES")
        return {"name": self.name or f"{what}_{index}", "datatype": datatype, "shape": [-1]}


def parse_signature(signature: dict[str, Any] | None) -> tuple[list[Spec], list[Spec]]:
    """``(inputs, outputs)`` of an MLflow signature as saved in ``MLmodel`` (JSON strings)."""

    def specs(raw: Any) -> list[Spec]:
        if not raw:
            return []
        items = json.loads(raw) if isinstance(raw, str) else raw
        out = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "tensor":
                tensor = item.get("tensor-spec") or {}
                shape = [int(d) for d in tensor.get("shape") or []]
                out.append(Spec(item.get("name"), str(tensor.get("dtype")), shape, True))
            else:
                kind = item.get("type")
                kind = kind if isinstance(kind, str) else json.dumps(kind)
                out.append(Spec(item.get("name"), kind, None, bool(item.get("required", True))))
        return out

    signature = signature or {}
    return specs(signature.get("inputs")), specs(signature.get("outputs"))


def read_signature(model_uri: str | None) -> tuple[list[Spec], list[Spec]]:
    """The signature in the ``MLmodel`` file of a local model folder (no MLflow import); empty otherwise."""
    path = os.path.join(str(model_uri or ""), "MLmodel")
    if not model_uri or not os.path.isfile(path):
        return [], []
    try:
        import yaml

        with open(path) as f:
            mlmodel = yaml.safe_load(f) or {}
        return parse_signature(mlmodel.get("signature"))
    except Exception:  # an unreadable signature: metadata stays empty, requests are not checked
        logger.exception("could not read the signature of %s", path)
        return [], []


def _error_blueprint():
    """Flask handlers seldon registers (``model_error_handler``): a BadModelInput answers 400."""
    from flask import Blueprint, jsonify

    blueprint = Blueprint("mlops_model_errors", __name__)

    @blueprint.app_errorhandler(BadModelInput)
    def bad_input(error: BadModelInput):  # type: ignore[no-untyped-def]
        logger.warning("bad request: %s", error)
        response = jsonify(error.to_dict())
        response.status_code = error.status_code
        return response

    return blueprint


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _positive(value: Any, name: str, default: float, cast: type) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = cast(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        logger.warning("%s=%r is not a positive number; using %s", name, value, default)
        return default
    return number


# ------------------------------------------------------------------ inference log


def _float_matrix(rows: np.ndarray) -> np.ndarray:
    """The request's rows as float64; values that are not numbers become NaN (logged as null)."""
    try:
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        frame = pd.DataFrame(rows)
        return frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def _feature_names(names: list[str]) -> list[str]:
    """Column names for a request's features: a name taken by a log column (or ``prediction_<k>``)
    becomes ``feature_<name>``; a repeated name gets ``_1``, ``_2`` ... (same input, same names)."""
    out: list[str] = []
    taken: set[str] = set()
    for name in names:
        base = f"feature_{name}" if _RESERVED.fullmatch(name) else name
        candidate, i = base, 0
        while candidate in taken or _RESERVED.fullmatch(candidate):
            i += 1
            candidate = f"{base}_{i}"
        taken.add(candidate)
        out.append(candidate)
    return out


JOURNAL_DIR = ".journal"
JOURNAL_SUFFIX = ".jsonl"
#: beside a segment being written to Parquet: the file its rows go to (``<segment>.done``)
DONE_SUFFIX = ".done"


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _writer_alive(pid_text: str, ticks: str) -> bool:
    """The writer ``<pid>-<start ticks>`` still runs (a reused pid is another process)."""
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == ticks


def _journal_line(record: tuple) -> bytes:
    request_id, ts_ms, version, latency_ms, names, rows, out = record
    rows = np.asarray(rows)
    out = np.asarray(out)
    return (
        json.dumps(
            {
                "id": request_id,
                "ts": ts_ms,
                "v": version,
                "ms": latency_ms,
                "names": list(names),
                "rows": rows.tolist(),
                "out": out.tolist() if out.dtype.kind in "biuf" else [str(v) for v in out.reshape(-1)],
            },
            default=str,
        ).encode()
        + b"\n"
    )


def _read_journal(path: str) -> list[tuple]:
    """The records of a journal segment; a last line cut off by the kill is left out (it was
    never answered: the answer leaves after the write)."""
    batch = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                r = json.loads(line)
            except ValueError:
                continue
            batch.append(
                (
                    r["id"],
                    r["ts"],
                    r["v"],
                    r["ms"],
                    r["names"],
                    np.asarray(r["rows"], dtype=object),
                    np.asarray(r["out"]),
                )
            )
    return batch


def _remember(log_dir: str, segment: str, final: str) -> None:
    """Note, before the rename, that ``segment``'s rows go to ``final`` (``<segment>.done``)."""
    with open(os.path.join(log_dir, JOURNAL_DIR, segment + DONE_SUFFIX), "w") as f:
        f.write(os.path.relpath(final, log_dir))


def _committed(log_dir: str, segment: str) -> bool:
    """``segment``'s Parquet file exists already (its writer died before deleting the segment)."""
    try:
        with open(os.path.join(log_dir, JOURNAL_DIR, segment + DONE_SUFFIX)) as f:
            name = f.read().strip()
    except OSError:
        return False
    return bool(name) and os.path.exists(os.path.join(log_dir, name))


def _forget(log_dir: str, segment_path: str) -> None:
    """A segment written to Parquet: delete it, then its ``.done`` note."""
    for path in (segment_path, segment_path + DONE_SUFFIX):
        with contextlib.suppress(OSError):
            os.unlink(path)


class InferenceLogWriter:
    """Per-process buffer of predicted rows, flushed to hourly Parquet partitions.

    ``append`` is the only method on the request path: one list append under a
    lock.  Everything else (numeric conversion, Arrow, I/O) happens in the
    writer thread or at exit.
    """

    def __init__(self, log_dir: str, flush_seconds: float, max_rows: int) -> None:
        self.log_dir = log_dir
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self._reset()
        if hasattr(os, "register_at_fork"):
            # a forked child must not inherit the parent's rows, a possibly held lock or a
            # (dead) thread; it starts its own writer on its first append
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffer: list[tuple] = []
        self._rows = 0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_error = -math.inf
        self.dropped_rows = 0
        #: this process's journal: ``<pid>-<start time>`` names it for good
        self._writer_id = f"{self._pid}-{_start_ticks(self._pid)}"
        self._segment_seq = next(_SEQ)
        self._segment_fd: int | None = None
        self.recovered_rows = 0

    # -- request path -------------------------------------------------------------------
    def append(
        self,
        request_id: str,
        ts_ms: int,
        model_version: str,
        latency_ms: float,
        names: list[str],
        rows: np.ndarray,
        out: np.ndarray,
    ) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook
            self._reset()
        record = (request_id, ts_ms, model_version, latency_ms, names, rows, out)
        line = _journal_line(record)
        with self._lock:
            self._journal(line)
            self._buffer.append(record)
            self._rows += len(rows)
            full = self._rows >= self.max_rows
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        if start:
            self._start(self._thread)
        if full:
            self._wake.set()

    def _start(self, thread: threading.Thread) -> None:
        import multiprocessing.util

        thread.start()
        atexit.register(self.close)
        # seldon's gRPC servers are multiprocessing children: they end with os._exit,
        # which skips atexit but runs multiprocessing's finalisers
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    # -- the journal: what is answered is on disk before the answer leaves -------------------
    @property
    def journal_dir(self) -> str:
        return os.path.join(self.log_dir, JOURNAL_DIR)

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.journal_dir, f"{self._writer_id}-{seq:06d}{JOURNAL_SUFFIX}")

    def _journal(self, line: bytes) -> None:
        """Append one record to this process's open journal segment (the caller holds the lock):
        one ``write`` to a file opened ``O_APPEND``, so a process killed right after it (SIGKILL)
        keeps the record in the kernel's page cache and on disk."""
        try:
            if self._segment_fd is None:
                os.makedirs(self.journal_dir, exist_ok=True)
                self._segment_fd = os.open(
                    self._segment_path(self._segment_seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
                )
            os.write(self._segment_fd, line)
        except OSError:  # the Parquet write still gets the rows; only a crash now could lose them
            logger.exception("inference log: could not journal a request in %s", self.journal_dir)

    def _rotate(self) -> str | None:
        """Close the open segment (the caller holds the lock): its rows are the batch being flushed.
        :return: its path, deleted once the batch's Parquet file is in place."""
        fd, self._segment_fd = self._segment_fd, None
        path = self._segment_path(self._segment_seq)
        self._segment_seq = next(_SEQ)
        if fd is None:
            return None
        os.close(fd)
        return path

    def recover(self) -> int:
        """
        Write the journals of log writers that died (killed before their buffer reached Parquet)
        as Parquet files, then delete them. A segment whose Parquet file was already written (the
        writer died between the rename and the delete) is only deleted: no row twice.
        :return: rows recovered.
        """
        try:
            names = sorted(os.listdir(self.journal_dir))
        except OSError:
            return 0
        recovered = 0
        for name in names:
            if not name.endswith(JOURNAL_SUFFIX):
                if name.endswith(DONE_SUFFIX) and name[: -len(DONE_SUFFIX)] not in names:
                    with contextlib.suppress(OSError):  # its segment is gone: a leftover note
                        os.unlink(os.path.join(self.journal_dir, name))
                continue
            writer, _, seq = name[: -len(JOURNAL_SUFFIX)].rpartition("-")
            pid_text, _, ticks = writer.partition("-")
            if writer == self._writer_id or _writer_alive(pid_text, ticks):
                continue
            path = os.path.join(self.journal_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # recovered by another server meanwhile
            try:
                # one recoverer per segment: another model server of this log may be at it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_nlink == 0:
                    continue  # recovered and deleted while we waited
                if not _committed(self.log_dir, name):
                    batch = _read_journal(path)
                    if batch:
                        with self._write_lock:
                            self._write(batch, segment=name)
                        recovered += sum(len(r[5]) for r in batch)
                _forget(self.log_dir, path)
            except BlockingIOError:
                continue
            except Exception:
                logger.exception("inference log: could not recover the journal %s", path)
            finally:
                os.close(fd)
        if recovered:
            logger.warning("inference log: recovered %d rows a killed model server had answered", recovered)
        self.recovered_rows += recovered
        return recovered

    # -- writer -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.recover()
        except Exception:
            logger.exception("inference log: journal recovery failed in %s", self.log_dir)
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the writer thread of this process and write what is left (idempotent; called at
        exit). Rows appended after it stay in memory until an explicit :meth:`flush`."""
        if self._pid != os.getpid():
            return
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=30)
        self.flush()

    def flush(self) -> str | None:
        """Write the buffered rows as one file; return its path (None when nothing to write)."""
        if self._pid != os.getpid():
            return None
        with self._lock:
            batch, self._buffer = self._buffer, []
            self._rows = 0
            segment = self._rotate() if batch else None
        if not batch:
            return None
        try:
            with self._write_lock:
                final = self._write(batch, segment=os.path.basename(segment) if segment else None)
        except Exception:
            n = sum(len(r[5]) for r in batch)
            self.dropped_rows += n
            now = time.monotonic()
            if now - self._last_error >= _ERROR_LOG_INTERVAL_S:
                self._last_error = now
                logger.exception(
                    "inference log: could not write %d rows to %s (dropped %d rows so far)",
                    n,
                    self.log_dir,
                    self.dropped_rows,
                )
            if segment:  # the rows are counted as dropped: recovering them later would be a surprise
                _forget(self.log_dir, segment)
            return None
        if segment:
            _forget(self.log_dir, segment)
        return final

    def _table(self, batch: list[tuple]):
        import pyarrow as pa

        request_ids: list[str] = []
        versions: list[str] = []
        row_idx, ts, latency, preds = [], [], [], []
        pred_cols: dict[int, list[np.ndarray]] = {}
        features: dict[str, list[tuple[int, np.ndarray]]] = {}  # name -> [(offset, values)]
        offset = 0
        for request_id, ts_ms, version, latency_ms, names, rows, out in batch:
            x = _float_matrix(rows)
            n = x.shape[0]
            y = np.asarray(out)
            if y.ndim == 1:
                y = y.reshape(-1, 1)
            if y.ndim != 2 or y.shape[0] != n:
                y = np.full((n, 1), np.nan)
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError):
                y = pd.DataFrame(y).apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            request_ids.extend([request_id] * n)
            versions.extend([version] * n)
            row_idx.append(np.arange(n, dtype=np.int64))
            ts.append(np.full(n, ts_ms, dtype=np.int64))
            latency.append(np.full(n, latency_ms, dtype=np.float64))
            preds.append(y[:, -1])
            if y.shape[1] > 1:
                for k in range(y.shape[1]):
                    pred_cols.setdefault(k, []).append((offset, y[:, k]))
            cols = list(names) if len(names) == x.shape[1] else [f"f{i}" for i in range(x.shape[1])]
            for j, name in enumerate(_feature_names(cols)):
                features.setdefault(name, []).append((offset, x[:, j]))
            offset += n

        def sparse(parts: list[tuple[int, np.ndarray]]):
            values = np.full(offset, np.nan)
            mask = np.ones(offset, dtype=bool)  # True = null
            for start, v in parts:
                values[start : start + len(v)] = v
                mask[start : start + len(v)] = False
            mask |= np.isnan(values)  # not sent, or not a number
            return pa.array(values, type=pa.float64(), mask=mask if mask.any() else None)

        arrays = {
            "request_id": pa.array(request_ids, type=pa.string()),
            "row": pa.array(np.concatenate(row_idx), type=pa.int64()),
            "ts": pa.array(np.concatenate(ts), type=pa.timestamp("ms", tz="UTC")),
            "model_version": pa.array(versions, type=pa.string()),
            "latency_ms": pa.array(np.concatenate(latency), type=pa.float64()),
            "prediction": pa.array(np.concatenate(preds), type=pa.float64()),
        }
        for k, parts in sorted(pred_cols.items()):
            arrays[f"prediction_{k}"] = sparse(parts)
        for name, parts in features.items():
            arrays[name] = sparse(parts)
        return pa.table(arrays)

    def _write(self, batch: list[tuple], segment: str | None = None) -> str:
        import pyarrow.parquet as pq

        table = self._table(batch)
        pid = os.getpid()
        seq = next(_SEQ)
        tmp_dir = self.log_dir
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, f".part-{pid}-{seq:06d}.parquet.tmp")
        try:
            pq.write_table(table, tmp)
            # name (and partition) from the time of the rename: names sort in the order the
            # files become visible
            now = _dt.datetime.now(_dt.UTC)
            part_dir = os.path.join(self.log_dir, now.strftime("hour=%Y-%m-%dT%H"))
            os.makedirs(part_dir, exist_ok=True)
            final = os.path.join(
                part_dir, f"part-{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{pid}-{seq:06d}.parquet"
            )
            if segment:  # recovery skips a segment whose file is in place (no row twice)
                _remember(self.log_dir, segment, final)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return final


class MlflowModel:
    """Seldon python model wrapping ``mlflow.pyfunc.load_model(MODEL_URI)``."""

    def __init__(self, **parameters: Any) -> None:
        # Seldon passes ``--parameters`` / PREDICTIVE_UNIT_PARAMETERS as kwargs;
        # they may override the environment (model_uri, model_version, ...).
        self.model_uri = parameters.get("model_uri") or _env("MODEL_URI")
        self.model_version = str(parameters.get("model_version") or _env("MODEL_VERSION", "unknown"))
        self.model_name = str(parameters.get("model_name") or _env("MODEL_NAME", "mlflow-model"))
        self.inference_log_dir = parameters.get("inference_log_dir") or _env("INFERENCE_LOG_DIR")
        names = parameters.get("class_names") or _env("CLASS_NAMES")
        self._class_names = [n.strip() for n in names.split(",") if n.strip()] if names else None
        self.model = None
        self._inputs, self._outputs = read_signature(self.model_uri)
        self._input_names: list[str] | None = self._named_columns(self._inputs)
        self._local = threading.local()
        self._log_writer: InferenceLogWriter | None = None
        if self.inference_log_dir:
            os.makedirs(self.inference_log_dir, exist_ok=True)
            flush_s = _positive(
                parameters.get("inference_log_flush_seconds") or _env("INFERENCE_LOG_FLUSH_SECONDS"),
                "INFERENCE_LOG_FLUSH_SECONDS",
                DEFAULT_FLUSH_SECONDS,
                float,
            )
            max_rows = _positive(
                parameters.get("inference_log_max_rows") or _env("INFERENCE_LOG_MAX_ROWS"),
                "INFERENCE_LOG_MAX_ROWS",
                DEFAULT_MAX_ROWS,
                int,
            )
            self._log_writer = InferenceLogWriter(str(self.inference_log_dir), flush_s, max_rows)

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        if self.model is not None:
            return
        if not self.model_uri:
            raise RuntimeError("MODEL_URI is not set: cannot load the MLflow model")
        started = time.perf_counter()
        import mlflow.pyfunc  # heavy import (several seconds), deferred until a worker loads

        self.model = mlflow.pyfunc.load_model(self.model_uri)
        if self._log_writer is not None:
            # a restarted server writes the journal its killed predecessor left now, not only
            # once it logs its first request (it may get none for a while)
            threading.Thread(target=self._recover_log, name="inference-log-recovery", daemon=True).start()
        signature = self.model.metadata.signature
        if signature is not None:  # the loaded model's own signature wins (MODEL_URI may be remote)
            self._inputs, self._outputs = parse_signature(signature.to_dict())
        self._input_names = self._named_columns(self._inputs)
        logger.info(
            "Loaded MLflow model %s (version %s) in %.0f ms",
            self.model_uri,
            self.model_version,
            (time.perf_counter() - started) * 1000.0,
        )

    @staticmethod
    def _named_columns(inputs: list[Spec]) -> list[str] | None:
        """The input columns of a named column-based signature (None: requests bring the names)."""
        if inputs and all(not s.tensor and s.name for s in inputs):
            return [str(s.name) for s in inputs]
        return None

    def _expects(self) -> str:
        """What the model reads, for error messages."""
        if not self._inputs:
            return "the model has no signature"
        if self._input_names:
            return "the model expects columns " + ", ".join(s.describe() for s in self._inputs)
        return "the model expects " + ", ".join(s.describe() for s in self._inputs)

    # --------------------------------------------------------------- predict
    def _rows(self, X: Any) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim == 0:
            return arr.reshape(1, 1)
        if arr.ndim == 1:
            return arr.reshape(1, -1)  # a single row sent as a flat list
        if arr.ndim > 2:
            raise BadModelInput(
                f"expected 2-D tabular input (rows of values), got shape {arr.shape}; {self._expects()}"
            )
        return arr

    def _frame(self, arr: np.ndarray, features_names: Iterable[str] | None) -> pd.DataFrame:
        if arr.dtype.kind in "biuf":
            arr = arr.astype(np.float32)
        names = [str(n) for n in (features_names or [])]
        width = arr.shape[1]
        if names and len(names) != width:
            raise BadModelInput(
                f"got {len(names)} feature names for {width} values per row; {self._expects()}"
            )
        if not names and self._input_names:
            if len(self._input_names) != width:
                raise BadModelInput(
                    f"got {width} values per row and no names; {self._expects()} "
                    f"({len(self._input_names)} values per row, or send data.names)"
                )
            names = list(self._input_names)
        tensor = self._inputs[0] if len(self._inputs) == 1 and self._inputs[0].tensor else None
        if tensor is not None and len(tensor.shape) == 2 and tensor.shape[1] > 0 and tensor.shape[1] != width:
            raise BadModelInput(f"got {width} values per row; {self._expects()}")
        return pd.DataFrame(arr, columns=names or None)

    def _numbers(self, frame: pd.DataFrame, columns: list[Any]) -> pd.DataFrame:
        """``columns`` of ``frame`` as numbers (null stays null). :raises BadModelInput: one is not."""
        for column in columns:
            values = frame[column]
            if values.dtype.kind in "biuf":
                continue
            # seldon turns an ndarray mixing numbers and strings into strings: "17" is a number
            converted = pd.to_numeric(
                values.where(values.map(lambda v: not isinstance(v, bool))), errors="coerce"
            )
            bad = values.notna() & converted.isna() & ~values.isin(["nan", "NaN", "None", "null", ""])
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                name = f"column {column!r}" if isinstance(column, str) else f"value {column} of each row"
                raise BadModelInput(
                    f"{name} takes numbers, row {row} has {values.iloc[row]!r}; {self._expects()}"
                )
            frame[column] = converted.astype(np.float32)
        return frame

    def _model_input(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The columns of the model's signature, in its order, when the request sends more.

        A client may send columns the model does not read (an event time, an entity key): they
        are logged with the prediction — drift monitoring reads them — but not given to a model
        that would misread them (a tensor-based model takes every column it is handed).

        :raises BadModelInput: a column of the signature is missing, or a number column holds
            something else.
        """
        names = self._input_names
        if names and not isinstance(frame.columns, pd.RangeIndex) and list(frame.columns) != names:
            missing = [n for n in names if n not in frame.columns]
            required = [n for n, s in zip(names, self._inputs, strict=True) if s.required]
            if any(n in required for n in missing):
                raise BadModelInput(
                    f"the request lacks the model's input columns {missing}; {self._expects()}"
                )
            frame = frame[[n for n in names if n in frame.columns]].copy()
        if names:
            numeric = [s.name for s in self._inputs if s.numeric and s.name in frame.columns]
            return self._numbers(frame, numeric)
        if len(self._inputs) == 1 and self._inputs[0].tensor and self._inputs[0].numeric:
            return self._numbers(frame.copy(), list(frame.columns))
        return frame

    @staticmethod
    def _is_schema_error(err: Exception) -> bool:
        """MLflow refused the input against the signature (before the model ran)."""
        return (
            type(err).__name__ == "MlflowException"
            and getattr(err, "error_code", None) == "INVALID_PARAMETER_VALUE"
        )

    @staticmethod
    def _to_array(output: Any) -> np.ndarray:
        if isinstance(output, (pd.DataFrame, pd.Series)):
            out = output.to_numpy()
        elif hasattr(output, "detach") and hasattr(output, "numpy"):  # a torch tensor
            out = output.detach().cpu().numpy()
        else:
            out = np.asarray(output)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.reshape(-1)
        return out

    def predict(self, X: Any, features_names: Iterable[str] | None = None, **kwargs: Any) -> np.ndarray:
        if self.model is None:
            self.load()
        # the router's id (kept on a retry of the same request), else a new one
        request_id = _request_id(kwargs.get("meta")) or str(uuid.uuid4())
        self._local.request_id = request_id
        ts_ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        rows = self._rows(X)
        frame = self._frame(rows, features_names)
        model_input = self._model_input(frame)
        try:
            out = self._to_array(self.model.predict(model_input))
        except Exception as err:
            if self._is_schema_error(err):
                raise BadModelInput(f"{getattr(err, 'message', err)}; {self._expects()}") from err
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self._log_writer is not None and _wants_log(kwargs.get("meta")):
            self._log(request_id, ts_ms, frame.columns, rows, out, latency_ms)
        return out

    # ------------------------------------------------------------ inference log
    def _log(
        self,
        request_id: str,
        ts_ms: int,
        columns: pd.Index,
        rows: np.ndarray,
        out: np.ndarray,
        latency_ms: float,
    ) -> None:
        try:
            # unnamed features: the frame has a RangeIndex; the writer names them f0..fn
            names = [str(c) for c in columns] if not isinstance(columns, pd.RangeIndex) else []
            # rows as received (before the float32 cast); converted in the writer thread
            self._log_writer.append(request_id, ts_ms, self.model_version, latency_ms, names, rows, out)
        except Exception:  # logging must never fail a prediction
            logger.exception("failed to buffer a request for the inference log in %s", self.inference_log_dir)

    def _recover_log(self) -> None:
        try:
            self._log_writer.recover()
        except Exception:
            logger.exception("inference log: journal recovery failed in %s", self.inference_log_dir)

    def flush_inference_log(self) -> str | None:
        """Write the buffered inference-log rows now; the file's path (None if nothing was buffered)."""
        return self._log_writer.flush() if self._log_writer is not None else None

    # ------------------------------------------------------ seldon extensions
    def class_names(self) -> list[str]:
        # Only consulted by seldon for 2-D outputs (more than one column).
        if self._class_names:
            return list(self._class_names)
        from seldon_core.user_model import SeldonNotImplementedError

        raise SeldonNotImplementedError("class_names not configured")

    def tags(self) -> dict[str, str]:
        # Seldon calls tags() once while building the response, in the thread
        # that ran predict(); pop so a later non-predict response can't reuse it.
        tags = {"model_version": self.model_version}
        request_id = self._local.__dict__.pop("request_id", None)
        if request_id:
            tags["request_id"] = request_id
        return tags

    def health_status(self) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError("model not loaded")
        return {"status": "ok", "model_version": self.model_version}

    @property
    def model_error_handler(self):  # type: ignore[no-untyped-def]
        """Registered by seldon on its Flask app: bad input answers 400 ``MICROSERVICE_BAD_DATA``."""
        return _error_blueprint()

    def init_metadata(self) -> dict[str, Any]:
        # Called by seldon when the app is built, i.e. before load(): the signature comes from the
        # MLmodel file of a local MODEL_URI (read in __init__)
        custom = {"model_uri": str(self.model_uri or "")}
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": "mlflow",
            "inputs": [spec.metadata(i, "input") for i, spec in enumerate(self._inputs)],
            "outputs": [spec.metadata(i, "output") for i, spec in enumerate(self._outputs)],
            "custom": custom,
        }
