"""Versioned Parquet snapshots: the dataset version is a hash of the content.

Layout under ``<root>/<dataset>/``::

    data/<interval>/<version>.parquet     one file per (interval, version); a Feast FileSource
                                          can point at ``data/`` and read every interval
    manifests/<interval>/<version>.json   version, schema, rows, source, interval, run ids

Writing the same content twice yields the same version and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_snapshot(
    df: pd.DataFrame,
    root: str | Path,
    dataset: str,
    start: datetime,
    end: datetime,
    lineage: dict[str, Any] | None = None,
) -> tuple[Snapshot, bool]:
    """
    Store ``df`` as the snapshot of ``dataset`` for ``[start, end)``.

    :return: the snapshot and whether anything was written (False when this content exists).
    """
    version = content_version(df)
    base = Path(root) / dataset
    data_path = base / "data" / interval_key(start, end) / f"{version}.parquet"
    manifest_path = base / "manifests" / interval_key(start, end) / f"{version}.json"
    snapshot = Snapshot(
        dataset=dataset,
        version=version,
        path=str(data_path),
        manifest=str(manifest_path),
        rows=len(df),
        interval_start=start.isoformat(),
        interval_end=end.isoformat(),
    )
    if data_path.exists() and manifest_path.exists():
        return snapshot, False
    _atomic_write(data_path, lambda tmp: df.to_parquet(tmp, index=False))
    manifest = {
        **snapshot.to_dict(),
        "schema": {str(c): str(t) for c, t in df.dtypes.items()},
        **(lineage or {}),
    }
    _atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return snapshot, True


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
