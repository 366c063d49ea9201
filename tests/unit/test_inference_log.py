"""airflow_mlops.inference_log: the control-plane reader of the serving runtime's Parquet log,
on real Parquet files (written here in the writer's layout, and by the writer itself)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow_mlops import inference_log
from airflow_mlops.inference_log import (
    InferenceLogError,
    cursor_of,
    list_files,
    next_window,
    read,
    read_window,
)


def _write(
    log_dir: Path,
    when: str,
    n: int,
    *,
    version: str = "1",
    features: tuple[str, ...] = ("temp", "wind"),
    pid: int = 100,
    seq: int = 0,
    request_id: str | None = None,
) -> Path:
    """One log file as the Seldon model writes it: ``when`` is its UTC write time."""
    stamp = pd.Timestamp(when)
    part = log_dir / stamp.strftime("hour=%Y-%m-%dT%H")
    part.mkdir(parents=True, exist_ok=True)
    path = part / f"part-{stamp.strftime('%Y%m%dT%H%M%S.%fZ')}-{pid}-{seq:06d}.parquet"
    rid = request_id or f"req-{stamp.value}"
    columns = {
        "request_id": pa.array([rid] * n, pa.string()),
        "row": pa.array(np.arange(n), pa.int64()),
        "ts": pa.array([stamp.value // 1_000_000] * n, pa.timestamp("ms", tz="UTC")),
        "model_version": pa.array([version] * n, pa.string()),
        "latency_ms": pa.array(np.full(n, 1.25), pa.float64()),
        "prediction": pa.array(np.linspace(0, 1, n), pa.float64()),
    }
    for j, name in enumerate(features):
        columns[name] = pa.array(np.arange(n, dtype=np.float64) + j, pa.float64())
    pq.write_table(pa.table(columns), path)
    return path


def _rel(log_dir: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(log_dir).as_posix() for p in paths]


# --------------------------------------------------------------------------- list_files


def test_list_files_sorted_across_partitions_and_ignores_other_files(tmp_path: Path) -> None:
    c = _write(tmp_path, "2026-11-22T06:00:00.000001Z", 2)
    a = _write(tmp_path, "2026-11-22T05:00:01.5Z", 2)
    b = _write(tmp_path, "2026-11-22T05:59:59.999999Z", 2)
    # same microsecond, two processes: the pid breaks the tie, deterministically
    d = _write(tmp_path, "2026-11-22T06:00:00.000001Z", 2, pid=200)
    # a write in progress, a legacy JSON-lines file, stray files and folders
    (tmp_path / ".part-100-000001.parquet.tmp").write_bytes(b"partial")
    (a.parent / ".part-20261122T050002.000000Z-1-000009.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "2026-11-22-05.jsonl").write_text("{}\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "part-x.parquet").write_bytes(b"")
    (a.parent / "README").write_text("x")

    assert list_files(tmp_path) == [a, b, c, d]
    assert list_files(tmp_path, after=cursor_of(tmp_path, b)) == [c, d]
    assert list_files(tmp_path, after=cursor_of(tmp_path, d)) == []
    # strictly after: the cursor file itself is never returned
    assert list_files(tmp_path, after=_rel(tmp_path, [a])[0]) == [b, c, d]
    # an absolute path inside the log works as a cursor too
    assert list_files(tmp_path, after=a) == [b, c, d]
    # a cursor whose file is gone (cleaned up) still orders correctly
    assert list_files(tmp_path, after="hour=2026-11-22T05/part-20261122T053000.000000Z-1-000000.parquet") == [
        b,
        c,
        d,
    ]


def test_settled_stops_at_the_first_file_named_too_recently(tmp_path: Path) -> None:
    """A reader that moves a cursor (the publisher) takes files named ``seconds`` ago only: a file
    named earlier but renamed into place later would otherwise fall behind the cursor."""
    a = _write(tmp_path, "2026-11-22T05:59:59.000000Z", 2)
    b = _write(tmp_path, "2026-11-22T06:00:00.400000Z", 2)
    c = _write(tmp_path, "2026-11-22T06:00:00.900000Z", 2, pid=200)
    now = pd.Timestamp("2026-11-22T06:00:01Z").timestamp()
    files = list_files(tmp_path)
    assert inference_log.settled(files, 1.0, now=now) == [a]
    assert inference_log.settled(files, 0.5, now=now) == [a, b]
    assert inference_log.settled(files, 0.0, now=now) == [a, b, c]
    assert inference_log.write_time(b.name) == pd.Timestamp("2026-11-22T06:00:00.4Z").timestamp()
    assert inference_log.write_time("part-x.parquet") is None


def test_list_files_missing_or_empty_dir(tmp_path: Path) -> None:
    assert list_files(tmp_path / "nope") == []
    assert list_files(tmp_path) == []
    assert list_files(tmp_path, after="hour=2026-11-22T05/part-x.parquet") == []


@pytest.mark.parametrize(
    "cursor",
    ["part-20261122T050000.000000Z-1-000000.parquet", "2026/part-x.parquet", "hour=x/y/part-z.parquet"],
)
def test_bad_cursor(tmp_path: Path, cursor: str) -> None:
    with pytest.raises(InferenceLogError, match="cursor"):
        list_files(tmp_path, after=cursor)


def test_absolute_cursor_outside_the_log(tmp_path: Path) -> None:
    with pytest.raises(InferenceLogError, match="not inside"):
        list_files(tmp_path / "log", after=tmp_path / "other" / "hour=x" / "part-y.parquet")


# --------------------------------------------------------------------------- read


def test_read_concatenates_with_a_column_union(tmp_path: Path) -> None:
    a = _write(tmp_path, "2026-11-22T05:00:00Z", 2, features=("temp", "wind"))
    b = _write(tmp_path, "2026-11-22T05:00:01Z", 3, features=("temp", "humid"))
    df = read([a, b])
    assert list(df.columns) == [*inference_log.LOG_COLUMNS, "temp", "wind", "humid"]
    assert len(df) == 5
    assert df["wind"].isna().tolist() == [False, False, True, True, True]
    assert df["humid"].isna().tolist() == [True, True, False, False, False]
    assert df["row"].tolist() == [0, 1, 0, 1, 2]
    assert str(df["ts"].dt.tz) == "UTC"
    assert df["ts"].iloc[0] == pd.Timestamp("2026-11-22T05:00:00Z")
    assert df["prediction"].dtype == np.float64 and df["temp"].dtype == np.float64


def test_read_no_files_is_an_empty_frame_with_the_log_columns() -> None:
    df = read([])
    assert df.empty and list(df.columns) == list(inference_log.LOG_COLUMNS)


def test_read_corrupt_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "hour=2026-11-22T05" / "part-20261122T050000.000000Z-1-000000.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet")
    with pytest.raises(InferenceLogError, match="part-20261122T050000"):
        read([bad])
    with pytest.raises(InferenceLogError, match="part-20261122T050000"):
        read_window(tmp_path, min_rows=1)


# --------------------------------------------------------------------------- read_window


def test_read_window_takes_whole_files_until_min_rows(tmp_path: Path) -> None:
    files = [_write(tmp_path, f"2026-11-22T05:59:5{i}Z", 4) for i in range(3)]
    files.append(_write(tmp_path, "2026-11-22T06:00:01Z", 4))

    df, last = read_window(tmp_path, min_rows=6)
    assert len(df) == 8 and last == cursor_of(tmp_path, files[1])
    assert df["request_id"].nunique() == 2

    df, last = read_window(tmp_path, after=last, min_rows=8)  # across the hour boundary
    assert len(df) == 8 and last == "hour=2026-11-22T06/" + files[3].name
    assert df["request_id"].tolist()[-1] == f"req-{pd.Timestamp('2026-11-22T06:00:01Z').value}"

    # nothing new: no window, and no cursor (the caller keeps its own)
    df, cursor = read_window(tmp_path, after=last, min_rows=1)
    assert df.empty and cursor is None
    assert list(df.columns) == list(inference_log.LOG_COLUMNS)


def test_read_window_not_enough_rows_yet_then_enough(tmp_path: Path) -> None:
    _write(tmp_path, "2026-11-22T05:00:00Z", 3)
    df, last = read_window(tmp_path, min_rows=5)
    assert df.empty and last is None
    second = _write(tmp_path, "2026-11-22T05:00:01Z", 3)
    df, last = read_window(tmp_path, min_rows=5)
    assert len(df) == 6 and last == cursor_of(tmp_path, second)


def test_read_window_counts_only_the_model_version(tmp_path: Path) -> None:
    _write(tmp_path, "2026-11-22T05:00:00Z", 5, version="1")
    _write(tmp_path, "2026-11-22T05:00:01Z", 5, version="2")
    f3 = _write(tmp_path, "2026-11-22T05:00:02Z", 5, version="1")
    _write(tmp_path, "2026-11-22T05:00:03Z", 5, version="1")

    df, last = read_window(tmp_path, min_rows=10, model_version="1")
    assert len(df) == 10 and set(df["model_version"]) == {"1"} and last == cursor_of(tmp_path, f3)

    # version 2 only has 5 rows after the start; with the cursor past them, none
    df, last2 = read_window(tmp_path, min_rows=5, model_version="2")
    assert len(df) == 5 and set(df["model_version"]) == {"2"}
    df, none = read_window(tmp_path, after=last2, min_rows=1, model_version="2")
    assert df.empty and none is None
    df, none = read_window(tmp_path, min_rows=6, model_version="2")
    assert df.empty and none is None


def test_read_window_rejects_min_rows_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_rows"):
        read_window(tmp_path, min_rows=0)


# --------------------------------------------------------------------------- next_window


def test_next_window_has_exactly_rows_and_splits_a_big_file(tmp_path: Path) -> None:
    big = _write(tmp_path, "2026-11-22T05:00:00Z", 5)  # one request of 5 rows
    small = _write(tmp_path, "2026-11-22T05:00:01Z", 3)

    df, cursor = next_window(tmp_path, rows=2)
    assert df["row"].tolist() == [0, 1] and cursor == {"after": None, "skip": 2}
    df, cursor = next_window(tmp_path, rows=2, **cursor)
    assert df["row"].tolist() == [2, 3] and cursor == {"after": None, "skip": 4}
    # the rest of the big file, then the small one's first row
    df, cursor = next_window(tmp_path, rows=2, **cursor)
    assert df["row"].tolist() == [4, 0] and cursor == {"after": cursor_of(tmp_path, big), "skip": 1}
    # a window that ends with its last file: the cursor moves past it, skip 0
    df, cursor = next_window(tmp_path, rows=2, **cursor)
    assert df["row"].tolist() == [1, 2] and cursor == {"after": cursor_of(tmp_path, small), "skip": 0}
    assert next_window(tmp_path, rows=1, **cursor) is None
    # every row was in exactly one window
    assert len(read(list_files(tmp_path))) == 8


def test_next_window_waits_for_enough_rows_of_the_version(tmp_path: Path) -> None:
    _write(tmp_path, "2026-11-22T05:00:00Z", 3, version="1")
    other = _write(tmp_path, "2026-11-22T05:00:01Z", 4, version="2")
    assert next_window(tmp_path, rows=4, model_version="1") is None
    _write(tmp_path, "2026-11-22T05:00:02Z", 3, version="1")
    df, cursor = next_window(tmp_path, rows=4, model_version="1")
    assert len(df) == 4 and set(df["model_version"]) == {"1"} and df["row"].tolist() == [0, 1, 2, 0]
    # the other version's file is passed over; one row of the last file is used
    assert cursor == {"after": cursor_of(tmp_path, other), "skip": 1}
    with pytest.raises(ValueError, match="rows"):
        next_window(tmp_path, rows=0)


def test_next_window_counts_a_prediction_logged_twice_once(tmp_path: Path) -> None:
    """A model server killed after logging a request but before answering it: the router retries
    the request (same request id) on the restarted server, which logs it again; the journal of
    the dead one is replayed too. Both copies are in the log; a window counts the rows once."""
    first = _write(tmp_path, "2026-11-22T05:00:00Z", 3, request_id="retried", pid=100)
    _write(tmp_path, "2026-11-22T05:00:01Z", 3, request_id="retried", pid=200)  # the retry's copy
    _write(tmp_path, "2026-11-22T05:00:02Z", 2, request_id="next", pid=200)
    df, cursor = next_window(tmp_path, rows=4)
    assert list(zip(df["request_id"], df["row"], strict=True)) == [
        ("retried", 0), ("retried", 1), ("retried", 2), ("next", 0)
    ]  # fmt: skip
    assert cursor["skip"] == 1 and cursor["after"] != cursor_of(tmp_path, first)
    # one file repeating a row of itself, too
    other = tmp_path / "other"
    path = _write(other, "2026-11-22T06:00:00Z", 2, request_id="x")
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table]), path)
    df, _ = next_window(other, rows=2)
    assert df["row"].tolist() == [0, 1]
    assert next_window(other, rows=3) is None  # 4 rows written, 2 distinct
    # a client reusing its own request id for other data loses nothing: not the same rows
    reused = tmp_path / "reused"
    _write(reused, "2026-11-22T07:00:00Z", 2, request_id="mine")
    again = _write(reused, "2026-11-22T07:00:01Z", 2, request_id="mine")
    table = pq.read_table(again)
    pq.write_table(table.set_column(table.column_names.index("temp"), "temp", pa.array([9.0, 9.5])), again)
    df, _ = next_window(reused, rows=4)
    assert df["temp"].tolist()[2:] == [9.0, 9.5]


# --------------------------------------------------------------------------- with the real writer


def test_reads_what_the_serving_runtime_writes(tmp_path: Path) -> None:
    """Round trip through runtimes/seldon_model.InferenceLogWriter (numpy/pandas/pyarrow only)."""
    from airflow_mlops.runtimes.seldon_model import InferenceLogWriter

    writer = InferenceLogWriter(str(tmp_path), flush_seconds=3600, max_rows=10**6)
    ts = time.time_ns() // 1_000_000
    writer.append("r1", ts, "7", 2.5, ["temp", "wind"], np.array([[1, 2], [3, 4]]), np.array([0.25, 0.75]))
    writer.append("r2", ts, "7", 1.0, [], np.array([[5.0, 6.0, 7.0]]), np.array([[0.1, 0.9]]))
    first = writer.flush()
    writer.append("r3", ts, "8", 1.0, ["temp", "wind"], np.array([["9", "x"]], dtype=object), np.array([0.5]))
    second = writer.flush()
    writer.close()
    assert writer.flush() is None  # nothing buffered

    files = list_files(tmp_path)
    assert [str(f) for f in files] == [first, second]
    assert not list(tmp_path.glob(".*.tmp"))
    df = read(files)
    assert df["request_id"].tolist() == ["r1", "r1", "r2", "r3"]
    assert df["row"].tolist() == [0, 1, 0, 0]
    assert df["model_version"].tolist() == ["7", "7", "7", "8"]
    assert df["prediction"].tolist() == [0.25, 0.75, 0.9, 0.5]  # multi-output: the last column
    assert df["prediction_0"].iloc[2] == 0.1 and df["prediction_1"].iloc[2] == 0.9
    assert df["temp"].tolist()[:2] == [1.0, 3.0] and df["temp"].iloc[3] == 9.0
    assert np.isnan(df["wind"].iloc[3])  # not a number
    assert df[["f0", "f1", "f2"]].iloc[2].tolist() == [5.0, 6.0, 7.0]  # unnamed features
    assert df["latency_ms"].tolist() == [2.5, 2.5, 1.0, 1.0]
    assert (df["ts"] == pd.Timestamp(ts, unit="ms", tz="UTC")).all()

    df, last = read_window(tmp_path, min_rows=1, model_version="8")
    assert df["request_id"].tolist() == ["r3"] and last == cursor_of(tmp_path, second)
