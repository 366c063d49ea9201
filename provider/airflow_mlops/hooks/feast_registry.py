"""Feast's file registry, written so that several task processes can share one ``registry.db``.

Feast rewrites the whole registry file for every change, in place (truncate, then write). A
process reading it meanwhile — another task, the freshness trigger, a deployment's feature
lookup — can parse half a file (``DecodeError: Wire format was corrupt``). This store writes a
temporary file beside it and renames it over the old one, so a reader sees the old registry or
the new, never part of one. :func:`airflow_mlops.hooks.feast.registry_lock` serialises the
read-modify-write of concurrent writers.

Feast imports this module itself (``registry_store_type`` of the hook's ``RepoConfig``); nothing
imports it at DAG-parse time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.utils import _utc_now


class AtomicFileRegistryStore(FileRegistryStore):
    """``FileRegistryStore`` that replaces the registry file by rename instead of rewriting it."""

    def _write_registry(self, registry_proto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        folder = self._filepath.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self._filepath.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(registry_proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            # mkstemp creates 0600; keep the mode the registry had (other users' processes read it)
            mode = self._filepath.stat().st_mode & 0o777 if self._filepath.exists() else 0o644
            os.chmod(tmp, mode)
            os.replace(tmp, self._filepath)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
