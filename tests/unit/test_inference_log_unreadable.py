"""``inference_log.next_window(unreadable=...)``: a file that cannot be read is skipped and named,
the files after it are read, and the cursor stays exact (real Parquet files in the writer's layout)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow_mlops.inference_log import InferenceLogError, cursor_of, next_window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_inference_log import _write  # noqa: E402  (the writer's layout, shared)


def _rows(df: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(df["request_id"], df["row"], strict=True))


@pytest.fixture
def log(tmp_path) -> tuple[Path, list[Path]]:
    """Three files of 6 rows, the middle one corrupt, then a Parquet file that is no log file."""
    root = tmp_path / "log"
    first = _write(root, "2026-01-01T10:00:00", 6)
    corrupt = _write(root, "2026-01-01T10:00:01", 6)
    corrupt.write_bytes(b"PAR1 torn")
    third = _write(root, "2026-01-01T10:00:02", 6)
    foreign = third.with_name(third.name.replace("-000000", "-000001"))
    pq.write_table(pa.table({"x": [1.0, 2.0]}), foreign)  # no model_version column
    fifth = _write(root, "2026-01-01T10:00:03", 6)
    return root, [first, corrupt, third, foreign, fifth]


def test_without_the_list_an_unreadable_file_still_raises(log):
    root, _ = log
    with pytest.raises(InferenceLogError, match="cannot read inference-log file"):
        next_window(root, rows=8)


def test_unreadable_files_are_skipped_named_and_passed_by_the_cursor(log):
    root, (first, corrupt, third, foreign, fifth) = log
    unreadable: list = []
    df, position = next_window(root, rows=8, model_version="1", unreadable=unreadable)
    # the first file whole, then 2 rows of the third: the corrupt one holds no rows
    expected = pd.concat([pd.read_parquet(first), pd.read_parquet(third).head(2)])
    assert _rows(df) == _rows(expected)
    assert position == {"after": cursor_of(root, corrupt), "skip": 2}
    assert [p for p, _ in unreadable] == [corrupt]

    # the next window starts exactly where this one ended, past the file with no model_version
    unreadable = []
    df, position = next_window(root, rows=8, model_version="1", unreadable=unreadable, **position)
    expected = pd.concat([pd.read_parquet(third).iloc[2:], pd.read_parquet(fifth).head(4)])
    assert _rows(df) == _rows(expected)
    assert position == {"after": cursor_of(root, foreign), "skip": 4}
    assert [p for p, _ in unreadable] == [foreign]
    assert "no model_version column" in unreadable[0][1]


def test_a_window_that_is_not_full_leaves_the_cursor_where_it_was(log):
    root, (_, corrupt, *_) = log
    unreadable: list = []
    assert next_window(root, rows=100, model_version="1", unreadable=unreadable) is None
    assert corrupt in [p for p, _ in unreadable]
