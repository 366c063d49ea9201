"""Versioned Parquet snapshots: the dataset version is a hash of the content.

Layout under ``<root>/<dataset>/``::

    data/<interval>/<version>.parquet     one immutable file per (interval, version)
    manifests/<interval>/<version>.json   version, schema, rows, source, interval, run ids, ingested_at
    manifests/<interval>/CURRENT          the version ``current/`` holds for the interval
    current/<interval>.parquet            the latest version ingested for the interval (a hardlink
                                          of, or else a copy of, its ``data/`` file): a Feast
                                          FileSource points here and sees one version per interval

``<interval>`` is ``<start>_<end>`` as ``YYYYmmddTHHMMSS`` in UTC, so keys sort by time.
Writing the same content twice yields the same version and writes nothing; every file is
replaced atomically, so readers never see a partial file. ``current/`` holds Parquet files
only (temporary files start with ``.``, which Parquet dataset readers skip).

``<root>`` is a folder or an object-store URL (``s3://bucket/prefix``, :mod:`airflow_mlops.storage`):
there a file is written whole by one PUT (no temporary object), ``current/`` is a server-side
copy, and the paths handed on (``Snapshot.path``, ``manifest``) are URLs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops import storage

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.storage import StorePath

#: name of the per-interval pointer file naming the version that ``current/`` holds
CURRENT_POINTER = "CURRENT"
_VERSION_RE = re.compile(r"[0-9a-f]{16}")

#: an interval given to the readers: its key, or its ``(start, end)`` as datetimes or ISO strings
IntervalLike = str | tuple[datetime | str, datetime | str]


@dataclass(frozen=True)
class Snapshot:
    """One stored version of a dataset for one interval."""

    dataset: str
    version: str
    path: str
    manifest: str
    rows: int
    interval_start: str
    interval_end: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def content_version(df: pd.DataFrame) -> str:
    """A stable 16-hex-digit hash of the frame's schema and values (row order included)."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def interval_key(start: datetime, end: datetime) -> str:
    return f"{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}"


def _to_key(interval: IntervalLike) -> str:
    if isinstance(interval, str):
        return interval
    from airflow_mlops._time import to_utc

    start, end = interval
    return interval_key(to_utc(start), to_utc(end))


def default_root() -> str:
    """Where snapshots go when no root is given: ``[mlops] data_dir``/``datasets`` (a folder or a URL)."""
    return storage.location(storage.data_root() / "datasets")


def current_path(root: str | Path, dataset: str, start: datetime, end: datetime) -> StorePath:
    """The file of ``current/`` that holds the latest version of ``[start, end)``."""
    return storage.as_path(root) / dataset / "current" / f"{interval_key(start, end)}.parquet"


class DataWriteError(OSError):
    """
    A file of a dataset (or a task's output) could not be written: the folder is not writable,
    a path that must be a folder is a file, or the disk is full. Names the path and what to do;
    nothing half-written is left behind, and what was current stays current. An ``OSError``, so
    callers that catch those keep working.
    """

    def __init__(self, path: StorePath | str, err: OSError) -> None:
        self.path = storage.as_path(path)
        where = storage.location(path)  # an object store's URL without the connection id
        reason = err.strerror or str(err) or type(err).__name__
        detail = f" ({err.filename})" if err.filename and str(err.filename) not in (str(path), where) else ""
        errno_ = err.errno if err.errno is not None else _errno_of(err)
        if storage.is_remote(self.path):
            fix = (
                "check that the bucket exists and that the connection of [mlops] data_conn_id "
                f"({storage.data_conn_id()!r}: endpoint, credentials) may write to it, then retry the task"
            )
        elif errno_ in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free space on that disk (or raise the quota / file-size limit), then retry the task"
        elif errno_ in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = (
                "make the folder writable by the Airflow worker's user, or point [mlops] data_dir "
                "(AIRFLOW__MLOPS__DATA_DIR) or the operator's root at a writable folder"
            )
        elif errno_ in (errno.ENOTDIR, errno.EEXIST):
            fix = (
                "a part of that path is a file where a folder is expected: move the file away, or "
                "point [mlops] data_dir (AIRFLOW__MLOPS__DATA_DIR) or the operator's root elsewhere"
            )
        else:
            fix = "check the path and the disk, then retry the task"
        super().__init__(
            errno_,
            f"Cannot write {where}: {reason}{detail}. Nothing was left half-written and what was there "
            f"before (the current version) is unchanged; {fix}.",
        )
        self.filename = where

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _errno_of(err: BaseException) -> int | None:
    """The errno of ``err`` or of an OSError it wraps (pyarrow raises its own ``OSError`` text)."""
    for candidate in (err, err.__cause__, err.__context__):
        if isinstance(candidate, OSError) and candidate.errno is not None:
            return candidate.errno
    text = str(err)
    for name in ("ENOSPC", "EFBIG", "EDQUOT", "EACCES", "EROFS", "ENOTDIR"):
        if os.strerror(getattr(errno, name)) in text:
            return getattr(errno, name)
    return None


def _atomic_write(path: StorePath, write: Callable[[str], Any]) -> None:
    """
    Write through a temporary file in the same folder so readers never see a partial file (in
    an object store: a local temporary file, then one PUT).

    :raises DataWriteError: the folder cannot be made or written, or the disk is full (the
        temporary file is removed, ``path`` keeps what it held).
    """
    remote = storage.is_remote(path)
    staging = tmp = None
    try:
        if remote:
            # an object store replaces an object whole in one PUT: write a local file, upload it
            staging = tempfile.mkdtemp(prefix="mlops-put-")
            tmp = os.path.join(staging, f"part{path.suffix}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # the temporary name must not end in .parquet: readers of a folder (Feast's file
            # source, dask) pick up every *.parquet file, hidden ones included
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"{path.suffix}.tmp")
            os.close(fd)
        write(tmp)
        if remote:
            storage.upload(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, DataWriteError):
            raise
        raise DataWriteError(path, err) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        elif tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _link_or_copy(src: StorePath, dst: StorePath) -> None:
    """Atomically make ``dst`` hold ``src``: a hardlink (no extra space), or a copy where links fail."""
    if storage.is_remote(dst):
        try:
            storage.copy(src, dst)
        except OSError as err:
            raise DataWriteError(dst, err) from err
        return
    tmp = dst.parent / f".tmp-{uuid.uuid4().hex}{dst.suffix}.tmp"  # not *.parquet: see _atomic_write
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # a filesystem without hardlinks (some network and FUSE mounts)
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as err:
        raise DataWriteError(dst, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_version(base: StorePath, key: str) -> str | None:
    pointer = base / "manifests" / key / CURRENT_POINTER
    try:
        return pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def _set_current(base: StorePath, key: str, version: str, data_path: StorePath) -> bool:
    """Point ``current/<key>.parquet`` at ``version``; returns whether anything changed."""
    view = base / "current" / f"{key}.parquet"
    if _current_version(base, key) == version and view.exists():
        return False
    # the view first, then the pointer: a reader that follows the pointer finds the version's
    # immutable data/ file, and a Feast reader of current/ never sees two versions at once
    _link_or_copy(data_path, view)
    _atomic_write(base / "manifests" / key / CURRENT_POINTER, lambda tmp: Path(tmp).write_text(version))
    return True


def write_snapshot(
    df: pd.DataFrame,
    root: str | Path,
    dataset: str,
    start: datetime,
    end: datetime,
    lineage: dict[str, Any] | None = None,
) -> tuple[Snapshot, bool]:
    """
    Store ``df`` as the snapshot of ``dataset`` for ``[start, end)`` and make it the current one.

    :param df: the interval's rows.
    :param root: root folder (or object-store URL) of the datasets.
    :param dataset: name of the dataset (folder under ``root``).
    :param start: start of the interval (timezone-aware).
    :param end: end of the interval.
    :param lineage: extra manifest fields (``source``, ``dag_id``, ``run_id``, ...).
    :return: the snapshot and whether a new version was written (False when this content
        exists; ``current/`` is still pointed at it, so re-ingesting an older content makes it
        current again without writing it twice).
    """
    version = content_version(df)
    base = storage.as_path(root) / dataset
    key = interval_key(start, end)
    data_path = base / "data" / key / f"{version}.parquet"
    manifest_path = base / "manifests" / key / f"{version}.json"
    snapshot = Snapshot(
        dataset=dataset,
        version=version,
        path=storage.location(data_path),
        manifest=storage.location(manifest_path),
        rows=len(df),
        interval_start=start.isoformat(),
        interval_end=end.isoformat(),
    )
    written = not (data_path.exists() and manifest_path.exists())
    if written:
        _atomic_write(data_path, lambda tmp: df.to_parquet(tmp, index=False))
        manifest = {
            **snapshot.to_dict(),
            "schema": {str(c): str(t) for c, t in df.dtypes.items()},
            "ingested_at": datetime.now(UTC).isoformat(),
            **(lineage or {}),
        }
        # the manifest last: its presence is what marks the version as complete
        _atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    _set_current(base, key, version, data_path)
    from airflow_mlops import lineage

    # hook-level lineage: a @task that writes a snapshot has the dataset as its output
    lineage.record_hook_lineage(outputs=[lineage.path_dataset(snapshot.path)])
    return snapshot, written


def read_table(path: str | Path, **options: Any) -> pd.DataFrame:
    """
    ``pandas.read_parquet(path)``, reported to Airflow's hook lineage as the task's input.

    For ``@task`` functions, which no OpenLineage extractor describes: a snapshot file counts as
    its dataset (``<root>/<dataset>``), any other file as itself, named as the provider's
    operators name them (:mod:`airflow_mlops.lineage`), so the edges of the lineage graph join.
    """
    from airflow_mlops import lineage

    lineage.record_hook_lineage(inputs=[lineage.path_dataset(storage.location(path))])
    return load_parquet(path, **options)


def load_parquet(path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """``pandas.read_parquet`` of a local file or an object-store URL (through ``[mlops] data_conn_id``)."""
    import pandas as pd

    source = storage.as_path(path)
    if storage.is_remote(source):
        with source.open("rb") as file:
            return pd.read_parquet(file, **options)
    return pd.read_parquet(source, **options)


def write_table(df: pd.DataFrame, path: str | Path) -> str:
    """
    Write ``df`` to the Parquet file ``path`` (atomically, without the index) and report it to
    Airflow's hook lineage as the task's output; returns the path.
    """
    from airflow_mlops import lineage

    target = storage.as_path(path)
    _atomic_write(target, lambda tmp: df.to_parquet(tmp, index=False))
    lineage.record_hook_lineage(outputs=[lineage.path_dataset(storage.location(target))])
    return storage.location(target)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at ``path``, with ``ingested_at`` filled from the file time for old manifests."""
    path = storage.as_path(path)
    manifest = json.loads(path.read_text())
    if "ingested_at" not in manifest:
        manifest["ingested_at"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
    return manifest


def _ingested_at(manifest: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(manifest["ingested_at"])


def list_snapshots(
    root: str | Path, dataset: str, interval: IntervalLike | None = None
) -> list[dict[str, Any]]:
    """
    The manifests of every stored version, oldest ingested first.

    :param root: root folder of the datasets.
    :param dataset: name of the dataset.
    :param interval: only this interval (its key, or ``(start, end)``); every interval when None.
    """
    manifests = storage.as_path(root) / dataset / "manifests"
    if interval is not None:
        folders = [manifests / _to_key(interval)]
    else:
        folders = sorted(manifests.glob("*"), key=lambda p: p.name)
    found = [
        read_manifest(path)
        for folder in folders
        for path in sorted(folder.glob("*.json"), key=lambda p: p.name)
        if _VERSION_RE.fullmatch(path.stem)
    ]
    return sorted(found, key=lambda m: (_ingested_at(m), m["version"]))


def latest_snapshot(
    root: str | Path, dataset: str, interval: IntervalLike | None = None
) -> dict[str, Any] | None:
    """
    The manifest of the version ``current/`` holds: for ``interval``, or else for the latest interval.

    Its ``path`` is the version's immutable ``data/`` file, so a reader keeps reading exactly
    that version even if the interval is re-ingested meanwhile.

    :param root: root folder of the datasets.
    :param dataset: name of the dataset.
    :param interval: the interval (its key, or ``(start, end)``); the latest interval when None.
    :return: the manifest, or None when nothing was ingested (for that interval).
    """
    base = storage.as_path(root) / dataset
    if interval is not None:
        keys = [_to_key(interval)]
    else:  # keys sort by start, then end
        keys = sorted((p.name for p in (base / "manifests").glob("*") if p.is_dir()), reverse=True)
    for key in keys:
        version = _current_version(base, key)
        if version is not None:
            return read_manifest(base / "manifests" / key / f"{version}.json")
    return None


def find_new_snapshot(
    root: str | Path,
    dataset: str,
    interval: IntervalLike | None = None,
    after: datetime | str | None = None,
) -> dict[str, Any] | None:
    """
    The most recently ingested version stored after ``after`` (any version when None).

    :param root: root folder of the datasets.
    :param dataset: name of the dataset.
    :param interval: only versions of this interval; every interval when None.
    :param after: only versions whose ``ingested_at`` is strictly later.
    :return: its manifest, or None.
    """
    from airflow_mlops._time import to_utc

    threshold = to_utc(after) if after is not None else None
    newer = [
        m for m in list_snapshots(root, dataset, interval) if threshold is None or _ingested_at(m) > threshold
    ]
    return newer[-1] if newer else None


def version_ingested_at(
    root: str | Path, dataset: str, version: str, interval: IntervalLike | None = None
) -> datetime:
    """When ``version`` was stored; raises ``FileNotFoundError`` naming the dataset when it was not."""
    for manifest in list_snapshots(root, dataset, interval):
        if manifest["version"] == version:
            return _ingested_at(manifest)
    raise FileNotFoundError(
        f"Version {version!r} of dataset {dataset!r} is not stored under "
        f"{storage.location(storage.as_path(root) / dataset)}; "
        "pass a version that was ingested (the 'version' XCom of the IngestOperator), or 'after' instead."
    )


def snapshot_event_extra(snapshot: Snapshot) -> dict[str, Any]:
    """What an ingesting task puts on its Asset events, read back by ``snapshot_from_asset_events``."""
    return {
        "dataset": snapshot.dataset,
        "version": snapshot.version,
        "rows": snapshot.rows,
        "path": snapshot.path,
        "manifest": snapshot.manifest,
        "interval": {"start": snapshot.interval_start, "end": snapshot.interval_end},
    }


def snapshot_from_asset_events(events: Any, asset: Any) -> dict[str, Any]:
    """
    The snapshot an Asset event announced: the manifest of exactly that version.

    In a DAG scheduled on the dataset's Asset::

        @task
        def train(triggering_asset_events=None):
            snapshot = snapshot_from_asset_events(triggering_asset_events, FLIGHTS)
            df = pd.read_parquet(snapshot["path"])

    :param events: ``triggering_asset_events`` or ``inlet_events`` from the task context (a
        mapping of Asset to its events, oldest first).
    :param asset: the dataset's ``Asset``.
    :return: the manifest of the newest event's version (``path`` is its immutable file).
    """
    try:
        asset_events = list(events[asset])
    except KeyError:
        asset_events = []
    if not asset_events:
        name = getattr(asset, "name", asset)
        raise LookupError(
            f"No event of asset {name!r} in the given events; schedule the DAG on the asset "
            "(schedule=[asset]) or list it in the task's inlets."
        )
    extra = dict(getattr(asset_events[-1], "extra", None) or {})
    if "manifest" not in extra:
        raise LookupError(
            f"The newest event of asset {getattr(asset, 'name', asset)!r} carries no 'manifest' "
            f"(extra keys: {sorted(extra)}); it was not emitted by an IngestOperator of this provider."
        )
    manifest = read_manifest(extra["manifest"])
    if manifest["version"] != extra.get("version", manifest["version"]):
        raise ValueError(
            f"The manifest {extra['manifest']} holds version {manifest['version']}, the event "
            f"announced {extra['version']}; the snapshot folder was modified by hand."
        )
    return manifest
