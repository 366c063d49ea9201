"""Read the serving runtime's inference log (control-plane side).

The Seldon model (``runtimes/seldon_model.py``) writes Parquet files partitioned by the UTC hour in
which each file was written::

    <log_dir>/hour=YYYY-MM-DDTHH/part-<UTC write time, µs>-<pid>-<seq>.parquet

with one row per predicted row: ``request_id``, ``row``, ``ts`` (UTC, ms), ``model_version``,
``latency_ms``, ``prediction`` and one float64 column per feature. Files appear atomically (they
are renamed into place), and ``(partition, file name)`` sorts in the order they were written, so
the relative path of the last file consumed (``"hour=.../part-....parquet"``) is a cursor:
:func:`list_files` returns the files strictly after it.

pandas and pyarrow are imported inside the functions (this module is imported by triggers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

PARTITION_PREFIX = "hour="
FILE_PREFIX = "part-"
FILE_SUFFIX = ".parquet"
LOG_COLUMNS = ("request_id", "row", "ts", "model_version", "latency_ms", "prediction")
DEFAULT_MIN_ROWS = 1000


class InferenceLogError(ValueError):
    """An unreadable log file or a cursor that is not a log file's relative path."""


def _cursor_key(log_dir: Path, after: str | os.PathLike[str]) -> tuple[str, str]:
    path = PurePath(after)
    if path.is_absolute():
        try:
            path = path.relative_to(log_dir)
        except ValueError as err:
            raise InferenceLogError(
                f"cursor {str(after)!r} is not inside the inference log {log_dir}"
            ) from err
    parts = PurePosixPath(path.as_posix()).parts
    if len(parts) != 2 or not parts[0].startswith(PARTITION_PREFIX):
        raise InferenceLogError(
            f"cursor {str(after)!r} is not the relative path of an inference-log file "
            f"('{PARTITION_PREFIX}YYYY-MM-DDTHH/{FILE_PREFIX}...{FILE_SUFFIX}')"
        )
    return parts[0], parts[1]


def cursor_of(log_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The cursor string of a log file: its path relative to ``log_dir``, with ``/``."""
    return "/".join(_cursor_key(Path(log_dir), path))


def list_files(log_dir: Any, after: str | os.PathLike[str] | None = None) -> list[Any]:
    """The complete log files, sorted by (partition, file name), strictly after the cursor ``after``
    (the relative path of the last file consumed; an absolute path inside ``log_dir`` works too).

    Temporary files of a write in progress (they do not end in ``.parquet``) and anything outside
    the ``hour=...`` partitions are ignored; a missing ``log_dir`` holds no files.

    :param log_dir: a folder, or an ``ObjectStoragePath`` (a log published to the object store,
        :mod:`airflow_mlops.serving.publish`): the same layout, the same cursors.
    """
    from airflow_mlops import storage

    root = log_dir if storage.is_remote(log_dir) else Path(log_dir)
    cursor = _cursor_key(root, after) if after is not None else None
    since = cursor[0] if cursor is not None else ""  # older partitions are not even listed
    entries = _scan(root, since) if isinstance(root, Path) else _list_store(root, since)
    found = [
        ((partition, name), path)
        for (partition, name), path in entries
        if name.startswith(FILE_PREFIX)
        and name.endswith(FILE_SUFFIX)
        and (cursor is None or (partition, name) > cursor)
    ]
    found.sort(key=lambda kp: kp[0])
    return [p for _, p in found]


def _scan(root: Path, since: str) -> Iterator[tuple[tuple[str, str], Path]]:
    """``((partition, name), path)`` of the files in ``root``'s partitions from ``since`` on
    (``os.scandir``: a watcher looks every second)."""
    if not root.is_dir():
        return
    with os.scandir(root) as partitions:
        for part in partitions:
            if part.name.startswith(PARTITION_PREFIX) and part.name >= since and part.is_dir():
                with os.scandir(part.path) as entries:
                    yield from (((part.name, e.name), Path(e.path)) for e in entries if e.is_file())


def _list_store(root: Any, since: str) -> Iterator[tuple[tuple[str, str], Any]]:
    """``((partition, name), path)`` of the objects in ``root``'s partitions from ``since`` on,
    in the object store."""
    if not root.exists():
        return
    for part in root.iterdir():
        if part.name.startswith(PARTITION_PREFIX) and part.name >= since:
            yield from (((part.name, stored.name), stored) for stored in part.iterdir())


def write_time(name: str) -> float | None:
    """The UTC write time in a log file's name (``part-20261122T051502.123456Z-...``), as epoch
    seconds; None for a name without one."""
    from datetime import UTC, datetime

    stamp = name.removeprefix(FILE_PREFIX).split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def settled(files: list[Path], seconds: float, now: float | None = None) -> list[Path]:
    """``files`` (as :func:`list_files` sorts them) up to the first one named less than ``seconds``
    ago. A file is named just before it is renamed into place, so a writer paused in between may
    put a file in *before* one already listed; a reader whose cursor moved past that one would
    skip it for good. Files named ``seconds`` ago are all in place."""
    import time

    cutoff = (time.time() if now is None else now) - seconds
    out = []
    for path in files:
        written = write_time(path.name)
        if written is not None and written > cutoff:
            break
        out.append(path)
    return out


def _empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype="object"),
            "row": pd.Series(dtype="int64"),
            "ts": pd.Series(dtype="datetime64[ms, UTC]"),
            "model_version": pd.Series(dtype="object"),
            "latency_ms": pd.Series(dtype="float64"),
            "prediction": pd.Series(dtype="float64"),
        }
    )


def _read_table(path: Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as err:  # pyarrow raises several types for corrupt / non-parquet files
        raise InferenceLogError(f"cannot read inference-log file {path}: {err}") from err


def _to_frame(tables: list) -> pd.DataFrame:
    import pyarrow as pa

    if not tables:
        return _empty()
    # files of requests with other feature names have other columns: union, missing = null
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()


def read(files: list[str | os.PathLike[str]]) -> pd.DataFrame:
    """All rows of ``files`` in the given order as one DataFrame (columns: the union of the files'
    columns, null where a file lacks one; ``ts`` as a UTC datetime). No files: an empty frame with
    the fixed log columns."""
    return _to_frame([_read_table(Path(f)) for f in files])


def _version_rows(table, model_version: str | None):
    """The rows of ``table`` that belong to ``model_version`` (all of them when None)."""
    if model_version is None:
        return table
    return table.take(_matching_positions(table, model_version))


def read_window(
    log_dir: str | os.PathLike[str],
    after: str | os.PathLike[str] | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    model_version: str | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """The next window of at least ``min_rows`` logged rows after the cursor ``after``.

    Whole files are taken in order until at least ``min_rows`` rows (of ``model_version`` when
    given; the other versions' rows are left out of the frame) are collected. Returns the rows and
    the new cursor (the relative path of the last file taken, to pass as ``after`` next time), or
    an empty frame and ``None`` when the files after the cursor do not hold ``min_rows`` rows yet
    (the cursor must then stay where it is).
    """
    import pyarrow.parquet as pq

    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, got {min_rows}")
    root = Path(log_dir)
    files = list_files(root, after)
    take: list[Path] = []
    count = 0
    for path in files:
        if model_version is None:
            try:
                count += pq.ParquetFile(path).metadata.num_rows
            except Exception as err:
                raise InferenceLogError(f"cannot read inference-log file {path}: {err}") from err
        else:
            versions = _read_table(path, columns=["model_version"])
            count += len(_version_rows(versions, model_version))
        take.append(path)
        if count >= min_rows:
            break
    if count < min_rows:
        return _empty(), None
    tables = [_version_rows(_read_table(p), model_version) for p in take]
    return _to_frame(tables), cursor_of(root, take[-1])


def _matching_positions(table, model_version: str | None):
    """Row positions of ``table`` that belong to ``model_version`` (all rows when None)."""
    import numpy as np

    if model_version is None:
        return np.arange(table.num_rows)
    import pyarrow.compute as pc

    if "model_version" not in table.column_names:
        raise InferenceLogError("the table has no model_version column: not an inference-log file")
    mask = pc.fill_null(pc.equal(table["model_version"], model_version), False)
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def _first_seen(table, positions, seen: set[int]):
    """``positions`` of ``table`` whose row was not logged before (in ``seen`` or earlier in
    ``positions``); adds them to ``seen``. A row repeats an earlier one when all of it but the
    moment it was logged (``ts``, ``latency_ms``) is the same: request id, row, version,
    prediction and every feature. So a client that reuses its own request ids for other data
    loses nothing; only the same answered row, logged twice, counts once."""
    import numpy as np
    import pandas as pd

    if len(positions) == 0 or not {"request_id", "row"} <= set(table.column_names):
        return positions
    what = sorted(c for c in table.column_names if c not in ("ts", "latency_ms"))
    frame = table.select(what).take(positions).to_pandas()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    keep = []
    for position, digest in zip(positions, hashes, strict=True):
        if int(digest) not in seen:
            seen.add(int(digest))
            keep.append(position)
    return np.asarray(keep, dtype=np.int64)


def next_window(
    log_dir: str | os.PathLike[str],
    rows: int,
    after: str | os.PathLike[str] | None = None,
    skip: int = 0,
    model_version: str | None = None,
    unreadable: list[tuple[Path, str]] | None = None,
) -> tuple[pd.DataFrame, dict[str, str | int | None]] | None:
    """Exactly the next ``rows`` logged rows (of ``model_version`` when given) after a cursor.

    The cursor is ``(after, skip)``: ``after`` the last file consumed entirely (as for
    :func:`list_files`), ``skip`` how many rows of the file after it were consumed already. A
    window may therefore end inside a file — one request of 5,000 rows makes two and a half
    windows of 2,000, not one of 5,000 — and the rest of that file starts the next window.

    A row logged twice — a model server killed after logging a prediction but before answering
    it, whose request the router then retried (same request id) on another replica or on the
    restarted one — counts once in the window that holds both copies (see :func:`_first_seen`).

    :param unreadable: when given, a file that cannot be read as an inference-log file (corrupt,
        not Parquet, no ``model_version`` column) is appended to it as ``(path, reason)`` and
        counts as holding no rows — a window that goes on past it leaves the cursor after it —
        instead of raising :class:`InferenceLogError`.
    :return: the rows and the new cursor ``{"after", "skip"}``, or None when there are fewer than
        ``rows`` rows after the cursor yet (the caller's cursor then stays where it is).
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    root = Path(log_dir)
    tables = []
    seen: set[int] = set()
    count, previous = 0, (str(after) if after is not None else None)
    for i, path in enumerate(list_files(root, after)):
        start = skip if i == 0 else 0
        try:
            table = _read_table(path)
            if model_version is not None and "model_version" not in table.column_names:
                raise InferenceLogError(f"inference-log file {path} has no model_version column")
        except InferenceLogError as err:
            if unreadable is None:
                raise
            unreadable.append((path, str(err)))
            previous = cursor_of(root, path)
            continue
        table = table.slice(start)
        positions = _first_seen(table, _matching_positions(table, model_version), seen)
        need = rows - count
        if len(positions) < need:
            tables.append(table.take(positions))
            count += len(positions)
            previous = cursor_of(root, path)
            continue
        consumed = int(positions[need - 1]) + 1  # raw rows of this file used, from ``start``
        tables.append(table.take(positions[:need]))
        if consumed == table.num_rows:
            return _to_frame(tables), {"after": cursor_of(root, path), "skip": 0}
        return _to_frame(tables), {"after": previous, "skip": start + consumed}
    return None
