"""Where tasks hand each other files: ``[mlops] data_dir``, a local folder or an object store.

::

    [mlops]
    data_dir = /srv/mlops                 # a folder (embedded default: $AIRFLOW_HOME/mlops)
    data_dir = s3://ml-bucket/mlops       # an object store (gs://, abfs://... likewise), read and
    data_conn_id = aws_default            # written with Airflow's ObjectStoragePath and this connection

A *location* is the string a task hands on (an XCom, a manifest, an Asset event): a plain
folder path or a URL without credentials (``s3://ml-bucket/mlops/datasets/...``). :func:`as_path`
turns it back into a path object — :class:`pathlib.Path` for a folder,
:class:`airflow.sdk.ObjectStoragePath` with ``[mlops] data_conn_id`` for a URL — and the two
share the pathlib API this module and :mod:`airflow_mlops.datasets` use. Work that needs a local
file (pandas' writer, a runtime's input) goes through :func:`local_copy` / :func:`upload`.

Only the standard library at module level (operators import this at parse time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    #: a folder or an object in a store: both answer the pathlib calls used here
    StorePath = Path | ObjectStoragePath


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` names an object store (``s3://``...), not a local file or ``file://``."""
    if isinstance(location, Path):
        return False
    scheme = urlsplit(os.fspath(location)).scheme
    # one letter: a Windows drive (C:\\...), not a scheme
    return len(scheme) > 1 and scheme not in ("file", "local")


def data_conn_id() -> str | None:
    """``[mlops] data_conn_id``: the connection an object-store ``data_dir`` is reached with."""
    from airflow_mlops import settings

    return settings._conf("data_conn_id") or None


def as_path(location: str | os.PathLike) -> StorePath:
    """
    The path object of a location: a :class:`~pathlib.Path` for a local one (``file://`` URLs
    included), an ``ObjectStoragePath`` on ``[mlops] data_conn_id`` for an object-store URL.
    """
    if not isinstance(location, (str, Path)) and hasattr(location, "protocol"):
        return location  # already an ObjectStoragePath
    text = os.fspath(location)
    if not is_url(text):
        split = urlsplit(text)
        return Path(split.path if split.scheme in ("file", "local") else text)
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(text, conn_id=data_conn_id())


def location(path: str | os.PathLike) -> str:
    """
    The string to hand on for ``path``: the folder path, or ``scheme://bucket/key`` without the
    ``conn_id@`` that ``str(ObjectStoragePath)`` puts in (readers attach ``[mlops] data_conn_id``).
    """
    if isinstance(path, (str, Path)):
        return os.fspath(path)
    protocol = getattr(path, "protocol", "") or ""
    if protocol in ("", "file", "local"):
        return str(path.path)
    return f"{protocol}://{path.path}"


def is_remote(path: Any) -> bool:
    """Whether ``path`` (a path object or a location) is in an object store."""
    return not isinstance(path, Path) and (not isinstance(path, str) or is_url(path))


def data_root_is_remote() -> bool:
    """Whether ``[mlops] data_dir`` names an object store: read from the configuration alone
    (no path object built, so cheap and safe on an event loop)."""
    from airflow_mlops import settings

    return is_url(settings._conf("data_dir") or "")


def data_root() -> StorePath:
    """
    The root under which tasks hand each other files: ``[mlops] data_dir`` as a path object
    (a local folder by default, see :func:`airflow_mlops.settings.data_dir`).
    """
    from airflow_mlops import settings

    if data_root_is_remote():
        return as_path(settings._conf("data_dir").rstrip("/"))
    return settings.data_dir()


def upload(local: str | os.PathLike, dest: StorePath) -> None:
    """
    Put the local file ``local`` at ``dest`` in one write: an object store's PUT replaces an
    object whole, so readers see the old or the new content, never part of it.
    """
    dest.fs.put_file(os.fspath(local), dest.path)


class Mirror:
    """
    Keep copies of a local folder's files in a folder of the store: each :meth:`sync` uploads the
    files matching ``patterns`` (in that order) that are new or changed (size or modification
    time) since they were last uploaded by this object, each whole. For records one host writes
    and others read (a drift watcher's windows, read by the MLOps page wherever it runs); a new
    ``Mirror`` (a restarted process) uploads everything once again, to the same keys.

    :param local: the folder.
    :param dest: its copy in the store.
    :param patterns: globs relative to ``local``; order them so that a file a reader needs
        first (a report) goes up before the one that points to it (its window record).
    """

    def __init__(self, local: str | os.PathLike, dest: StorePath, patterns: tuple[str, ...]) -> None:
        self.local, self.dest, self.patterns = Path(local), dest, patterns
        self._sent: dict[str, tuple[int, int]] = {}

    def sync(self) -> int:
        """Upload what changed; how many files."""
        count = 0
        for pattern in self.patterns:
            for path in sorted(self.local.glob(pattern)):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # replaced or removed meanwhile: the next sync sees it
                    continue
                key, mark = path.relative_to(self.local).as_posix(), (stat.st_size, stat.st_mtime_ns)
                if self._sent.get(key) != mark:
                    upload(path, self.dest / key)
                    self._sent[key] = mark
                    count += 1
        return count


def copy(src: StorePath, dest: StorePath) -> None:
    """Make ``dest`` hold ``src`` (in the same store): a server-side copy, whole or not at all."""
    src.fs.copy(src.path, dest.path)


def fetch(location: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """
    A local path holding ``location`` (a file, or a folder and everything under it): the path
    itself when it is local, else a download into ``folder`` (created) under the same name.

    :raises FileNotFoundError: nothing is stored at ``location``.
    """
    path = as_path(location)
    if isinstance(path, Path):
        return path
    if not path.exists():
        raise FileNotFoundError(
            f"Nothing is stored at {location!s} (read with [mlops] data_conn_id={data_conn_id()!r}): "
            "check the upstream task that wrote it and the connection's endpoint and bucket."
        )
    target = Path(folder) / (path.name or "data")
    target.parent.mkdir(parents=True, exist_ok=True)
    # under a hidden name first: a download cut short is never taken for the file
    partial = target.with_name(f".{target.name}.partial")
    _remove(partial)
    if path.is_dir():
        path.fs.get(path.path.rstrip("/") + "/", os.fspath(partial), recursive=True)
    else:
        path.fs.get_file(path.path, os.fspath(partial))
    _remove(target)
    partial.replace(target)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """:func:`fetch` into a temporary folder that is removed when the block ends."""
    path = as_path(location)
    if isinstance(path, Path):
        yield path
        return
    staging = tempfile.mkdtemp(prefix="mlops-stage-")
    try:
        yield fetch(path, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def output_folder(dest: StorePath) -> Iterator[Path]:
    """
    A local folder to write ``dest``'s files in (work that needs local files: Great Expectations'
    Data Docs build, a runtime's report). ``dest`` itself when it is local (created); with an
    object store a temporary folder, uploaded to ``dest`` file by file when the block ends
    without an error, and removed either way.
    """
    if isinstance(dest, Path):
        dest.mkdir(parents=True, exist_ok=True)
        yield dest
        return
    staging = Path(tempfile.mkdtemp(prefix="mlops-out-"))
    try:
        yield staging
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            upload(file, dest / file.relative_to(staging).as_posix())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_all(locations: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """
    ``locations`` with each object-store URL among its values replaced by a local copy under
    ``folder/<key>/`` (one folder per key: two inputs may share a file name); other values as they are.
    """
    return {
        key: os.fspath(fetch(value, Path(folder) / key))
        if isinstance(value, str) and is_url(value)
        else value
        for key, value in locations.items()
    }


def aws_environment() -> dict[str, str]:
    """
    The data connection as the AWS SDK's environment variables (``AWS_ACCESS_KEY_ID``...,
    ``AWS_ENDPOINT_URL_S3``), for libraries that reach an ``s3://`` data dir on their own rather
    than through ``ObjectStoragePath`` (Feast's offline store: dask and pyarrow); empty for a
    local data dir or another store. The secret is masked in Airflow's logs.
    """
    from airflow_mlops import settings

    if urlsplit(settings._conf("data_dir")).scheme not in ("s3", "s3a"):
        return {}
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.log import mask_secret

    hook = S3Hook(aws_conn_id=data_conn_id())
    credentials = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key}
    mask_secret(credentials.secret_key)
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
        mask_secret(credentials.token)
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    return {key: value for key, value in env.items() if value}


@contextmanager
def aws_environ() -> Iterator[dict[str, str]]:
    """:func:`aws_environment` set in ``os.environ`` for the block, then put back as it was."""
    env = aws_environment()
    saved = {key: os.environ[key] for key in env if key in os.environ}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)
