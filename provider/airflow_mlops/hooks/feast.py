"""Feast 0.67: the feature store of a ``feast`` connection.

``import feast`` costs ~20 s, so the store is built on first use, never at DAG-parse time.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings, storage
from airflow_mlops._imports import require
from airflow_mlops.exceptions import MlopsError

if TYPE_CHECKING:
    import pandas as pd

#: environment variable feature definitions may use to locate the provider's snapshots
DATA_DIR_ENV = "MLOPS_DATA_DIR"
#: Feast's file offline store selects event times in ``[start, end]`` (both inclusive); the
#: provider's intervals are ``[start, end)``, so Feast is asked for ``[start, end - TICK]``
TICK = timedelta(microseconds=1)
#: each ``store.materialize`` call costs ~50-100 ms however few rows it writes (registry
#: update, source scan; bench/data.py), so the default keeps a monthly interval in one call and
#: cuts a long backfill into month-sized steps
DEFAULT_CHUNK = timedelta(days=31)

_REDIS_PASSWORD = re.compile(r"(password=)([^,]*)", re.IGNORECASE)


def redact_redis(connection_string: str) -> str:
    """``host:port,password=...`` with the password replaced by ``***``, for logs and errors."""
    return _REDIS_PASSWORD.sub(r"\1***", connection_string)


def redact_url(url: str) -> str:
    """A registry URL (``postgresql://user:password@host/db``) with its password replaced by ``***``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def chunk_interval(
    start: datetime, end: datetime, chunk: timedelta | None
) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into consecutive ``[a, b)`` pieces of at most ``chunk`` (one piece if None)."""
    if chunk is not None and chunk <= timedelta(0):
        raise ValueError(f"chunk must be a positive timedelta, got {chunk}.")
    pieces, a = [], start
    while a < end:
        b = end if chunk is None else min(a + chunk, end)
        pieces.append((a, b))
        a = b
    return pieces


class _HeldLock:
    """A registry's lock within this process: threads queue on ``thread_lock``; ``depth`` re-enters."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0


#: the registry store the hook configures for local registry files (see hooks/feast_registry.py)
ATOMIC_REGISTRY_STORE = "airflow_mlops.hooks.feast_registry.AtomicFileRegistryStore"
_registry_locks: dict[str, _HeldLock] = {}


def is_local_registry(registry_path: str) -> bool:
    """A registry file on this host's file system (not ``s3://``, ``gs://``, a SQL registry...)."""
    return "://" not in registry_path or registry_path.startswith("file://")


#: URL schemes of a database holding a SQL registry (SQLAlchemy's dialects, with a driver or not)
_SQL_REGISTRY_SCHEMES = ("postgresql", "mysql", "sqlite")


def is_sql_registry(registry_path: str) -> bool:
    """A SQL registry (``postgresql://``, ``postgresql+psycopg2://``, ``mysql+pymysql://``...)."""
    scheme, separator, _ = registry_path.partition("://")
    return bool(separator) and scheme.split("+", 1)[0] in _SQL_REGISTRY_SCHEMES


def registry_settings(registry_path: str, cache_ttl_seconds: int = 5) -> dict[str, Any]:
    """
    Feast's ``registry`` settings for ``registry_path``: a local file (replaced atomically, see
    :mod:`.feast_registry`), a SQL registry — what several hosts share, each change a
    transaction of its own — or a file in an object store (Feast's own S3/GCS stores).
    A SQL registry's cache lives ``cache_ttl_seconds`` (Feast's 0 would mean "for ever").
    """
    if is_local_registry(registry_path):
        return {"path": registry_path, "registry_store_type": ATOMIC_REGISTRY_STORE}
    if is_sql_registry(registry_path):
        return {"registry_type": "sql", "path": registry_path, "cache_ttl_seconds": cache_ttl_seconds}
    return {"path": registry_path}


@contextlib.contextmanager
def registry_lock(registry_path: str) -> Iterator[None]:
    """
    Hold the exclusive lock of a local registry file (``<registry>.lock``, ``flock``).

    Feast changes the file registry by read-modify-write of the whole file, from the copy the
    process read earlier: two tasks materializing at once would each put back a registry without
    the other's change (its materialization record, the watermark). Writers take this lock,
    re-read the file and then change it. Re-entrant within a process; a no-op for remote
    registries, whose stores Feast owns.
    """
    if not is_local_registry(registry_path):
        yield
        return
    import fcntl

    path = Path(registry_path.removeprefix("file://"))
    held = _registry_locks.setdefault(str(path), _HeldLock())
    with held.thread_lock:
        held.depth += 1
        try:
            if held.depth > 1:
                yield
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name(path.name + ".lock"), "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        finally:
            held.depth -= 1


def _interval_end(feast_end: datetime) -> datetime:
    """The ``[start, end)`` end of an interval this hook recorded as ``end - TICK`` in the registry."""
    return feast_end + TICK if feast_end.microsecond == 999_999 else feast_end


def last_end_of(feature_view: Any) -> datetime | None:
    """Most recent materialization end recorded in the registry for ``feature_view`` (None: never)."""
    from airflow_mlops._time import to_utc

    ends = [end for _, end in getattr(feature_view, "materialization_intervals", [])]
    return _interval_end(to_utc(max(ends))) if ends else None


def read_last_materialized_end(registry_path: str, project: str, feature_view: str) -> datetime | None:
    """
    Read the registry file directly (no connection, no cache): what the freshness trigger polls.

    :raises LookupError: the registry has no such feature view in ``project``.
    """
    require("feast", "feast")
    from feast.errors import FeatureViewNotFoundException
    from feast.infra.registry.registry import Registry
    from feast.repo_config import RegistryConfig

    if is_sql_registry(registry_path):
        from feast.infra.registry.sql import SqlRegistry, SqlRegistryConfig

        config = SqlRegistryConfig(**registry_settings(registry_path, cache_ttl_seconds=1))
        registry = SqlRegistry(config, project, None)
    else:
        registry = Registry(project, RegistryConfig(path=registry_path, cache_ttl_seconds=0), repo_path=None)
    try:
        view = registry.get_feature_view(feature_view, project, allow_cache=False)
    except FeatureViewNotFoundException as err:
        raise LookupError(
            f"Feature view '{feature_view}' is not in project '{project}' of registry "
            f"{redact_url(registry_path)}: run FeastApplyOperator first, or check the view and project names."
        ) from err
    return last_end_of(view)


def definition_version(feature_view: Any) -> str:
    """12 hex digits of a hash of the view's definition: unchanged while the definition is."""
    import hashlib

    spec = feature_view.to_proto().spec
    # what is not the definition: the project, and the sources' registry bookkeeping (timestamps)
    spec.project = ""
    for source in (spec.batch_source, spec.stream_source):
        source.project = ""
        source.ClearField("meta")
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:12]


class FeastHook(BaseHook):
    """
    Build a Feast ``FeatureStore`` from a ``feast`` connection.

    Connection extras: ``repo_path`` (folder of feature definitions), ``project``,
    ``registry_path``, ``online_store`` (``sqlite`` default or ``redis``), ``online_store_path``
    (SQLite file), ``redis_connection_string`` (``host:port,db=N[,password=...]``; a password in
    the connection's password field is added to it). The offline store is the file store:
    feature views read Parquet files. Redis passwords are registered with Airflow's secrets
    masker and never logged.

    :param feast_conn_id: the ``feast`` connection.
    :param repo_path: overrides the connection's feature repo folder.
    """

    conn_name_attr = "feast_conn_id"
    default_conn_name = "feast_default"
    conn_type = "feast"
    hook_name = "Feast"

    def __init__(self, feast_conn_id: str = default_conn_name, repo_path: str | None = None) -> None:
        super().__init__()
        self.feast_conn_id = feast_conn_id
        self._repo_path = repo_path

    @cached_property
    def connection(self):
        return self.get_connection(self.feast_conn_id)

    @cached_property
    def extras(self) -> dict[str, Any]:
        return self.connection.extra_dejson

    @property
    def repo_path(self) -> Path:
        path = self._repo_path or self.extras.get("repo_path")
        if not path:
            raise ValueError(
                f"Connection '{self.feast_conn_id}' names no feature repo: set extra 'repo_path' "
                "or pass repo_path to the operator."
            )
        return Path(path).resolve()

    @property
    def project(self) -> str:
        return self.extras.get("project") or "flights"

    @property
    def registry_path(self) -> str:
        return self.extras.get("registry_path") or str(settings.data_dir() / "feast" / "registry.db")

    def _redis_connection_string(self) -> str:
        conn = self.extras.get("redis_connection_string") or "127.0.0.1:6379"
        password = getattr(self.connection, "password", None)
        if password and not _REDIS_PASSWORD.search(conn):
            conn = f"{conn},password={password}"
        match = _REDIS_PASSWORD.search(conn)
        if match and match.group(2):
            from airflow.sdk.log import mask_secret

            mask_secret(match.group(2))  # whatever logs it later (Feast, redis-py) shows ***
        return conn

    def online_store_config(self) -> dict[str, Any]:
        """Feast's ``online_store`` settings. May hold a Redis password: log :meth:`describe` instead."""
        kind = (self.extras.get("online_store") or "sqlite").lower()
        if kind == "redis":
            return {"type": "redis", "connection_string": self._redis_connection_string()}
        if kind != "sqlite":
            raise ValueError(
                f"Unsupported online_store '{kind}' in '{self.feast_conn_id}': use sqlite or redis."
            )
        default = settings.data_dir() / "feast" / "online_store.db"
        return {"type": "sqlite", "path": str(self.extras.get("online_store_path") or default)}

    def describe(self) -> str:
        """Project, registry and online store in one line, the passwords redacted."""
        online = self.online_store_config()
        where = online.get("path") or redact_redis(online.get("connection_string", ""))
        kind = online["type"]
        registry = redact_url(self.registry_path)
        return f"project '{self.project}', registry {registry}, {kind} online store {where}"

    @cached_property
    def repo_config(self):
        feast = require("feast", "feast")
        if is_local_registry(self.registry_path):
            Path(self.registry_path.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
        online = self.online_store_config()
        if online["type"] == "sqlite":
            Path(online["path"]).parent.mkdir(parents=True, exist_ok=True)
        registry = registry_settings(self.registry_path)
        return feast.RepoConfig(
            project=self.project,
            registry=registry,
            provider="local",
            online_store=online,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=self.repo_path,
        )

    @cached_property
    def store(self):
        feast = require("feast", "feast")
        self.log.info("Feast store: %s", self.describe())
        store = feast.FeatureStore(config=self.repo_config)
        # A materialization flips its views to MATERIALIZING in the shared registry, and Feast
        # 0.67 then refuses every read of them — historical retrieval in another task, online
        # lookups of a deployment — until it ends. Keep serving the last materialized values
        # (Feast's ``serve_features_while_materializing``; set on the registry object, which
        # honours it, because RegistryConfig warns that the option targets SQL registries).
        store.registry.serve_features_while_materializing = True
        self._lock_registry_changes(store.registry)
        return store

    def _lock_registry_changes(self, registry: Any) -> None:
        """
        Make the changes a materialization commits (state, interval) locked read-modify-writes.

        Other tasks change the same file meanwhile; without a fresh read under the lock, this
        store would write back its cached copy and undo theirs (:func:`registry_lock`).
        """
        if not is_local_registry(self.registry_path):
            return
        for name in ("apply_feature_view", "apply_materialization"):
            change = getattr(registry, name)
            signature = inspect.signature(change)

            def locked(*args: Any, _change=change, _signature=signature, **kwargs: Any):
                if not _signature.bind(*args, **kwargs).arguments.get("commit", True):
                    return _change(*args, **kwargs)  # part of a batch the caller commits
                with registry_lock(self.registry_path):
                    registry.refresh(self.project)
                    return _change(*args, **kwargs)

            setattr(registry, name, locked)

    @contextlib.contextmanager
    def _in_repo(self):
        """Let the definitions find the provider's data dir and import their sibling modules."""
        cwd = os.getcwd()
        # a folder, or the object store's URL: the definitions' file sources live there
        os.environ.setdefault(DATA_DIR_ENV, storage.location(storage.data_root()))
        # feast imports each definitions file as a module named by its path in the repo
        sys.path.insert(0, str(self.repo_path))
        try:
            with storage.aws_environ():  # for sources in an s3:// data dir (endpoint, credentials)
                yield
        finally:
            os.chdir(cwd)
            sys.path.remove(str(self.repo_path))

    def apply(self) -> dict[str, Any]:
        """
        Register the repo's definitions (``feast apply``).

        :return: ``feature_views`` and ``entities`` (names) and ``versions``: per feature view, a
            hash of its definition (schema, entities, ttl, source), the version a model's lineage
            records — Feast itself does not version views.
        """
        from feast.repo_operations import apply_total

        with self._in_repo(), registry_lock(self.registry_path):
            apply_total(self.repo_config, self.repo_path, skip_source_validation=False)
        # a fresh store sees what apply just wrote to the registry
        self.__dict__.pop("store", None)
        views = self.store.list_feature_views()
        return {
            "feature_views": sorted(fv.name for fv in views),
            "entities": sorted(e.name for e in self.store.list_entities()),
            "versions": {fv.name: definition_version(fv) for fv in sorted(views, key=lambda v: v.name)},
        }

    def view_lineage(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """
        What lineage says of each registered feature view (``names``, or all): ``name``,
        ``project``, ``source`` (the batch source's path, when it has one), ``fields`` (name,
        Feast type), ``entities``, ``ttl_seconds`` and ``version`` (:func:`definition_version`).
        """
        views = self.store.list_feature_views()
        described = []
        for fv in sorted(views, key=lambda v: v.name):
            if names is not None and fv.name not in names:
                continue
            source = getattr(fv, "batch_source", None)
            ttl = getattr(fv, "ttl", None)
            described.append(
                {
                    "name": fv.name,
                    "project": self.project,
                    "source": getattr(source, "path", None) or None,
                    "fields": [(f.name, str(f.dtype)) for f in fv.features],
                    "entities": list(fv.entities or []),
                    "ttl_seconds": int(ttl.total_seconds()) if ttl is not None else None,
                    "version": definition_version(fv),
                }
            )
        return described

    # -- materialization -------------------------------------------------------------------

    def feature_view(self, name: str):
        """The registered feature view, read from the registry file (not a cached copy)."""
        try:
            return self.store.registry.get_feature_view(name, self.store.project, allow_cache=False)
        except Exception as err:
            if type(err).__name__ != "FeatureViewNotFoundException":
                raise
            raise LookupError(
                f"Feature view '{name}' is not registered in Feast project '{self.store.project}': "
                "run FeastApplyOperator first, or check the name."
            ) from err

    def last_materialized_end(self, feature_view: str) -> datetime | None:
        """End of the view's most recent materialization (UTC), None if never materialized."""
        return last_end_of(self.feature_view(feature_view))

    @contextlib.contextmanager
    def _count_online_writes(self) -> Iterator[list[int]]:
        """
        Count the entity rows Feast hands to the online store while the block runs.

        Feast's ``materialize`` returns nothing, so the online store instance's
        ``online_write_batch`` is wrapped for the duration: the count is what Feast *offered*
        (the latest row per entity of the range). Redis then skips rows that are not newer than
        what it already holds; SQLite overwrites. Feast's provider is private API: if it moves,
        the count stays at 0 and the tests say so.
        """
        counter = [0]
        online_store = getattr(self.store._get_provider(), "online_store", None)
        if online_store is None:
            yield counter
            return
        original = online_store.online_write_batch

        def counting(*args: Any, **kwargs: Any) -> Any:
            data = kwargs["data"] if "data" in kwargs else args[2]
            counter[0] += len(data)
            return original(*args, **kwargs)

        online_store.online_write_batch = counting
        try:
            yield counter
        finally:
            del online_store.online_write_batch  # the class's method shows through again

    def materialize_range(self, feature_view: str, start: datetime, end: datetime) -> int:
        """
        Materialize one view's rows with event time in ``[start, end)``; returns the rows written.

        Feast records ``[start, end - 1 µs]`` in the registry's ``materialization_intervals``;
        :meth:`last_materialized_end` reads it back as ``end``.
        """
        # Feast reads an s3:// source itself (pyarrow, dask): the data connection as AWS variables
        with self._count_online_writes() as written, storage.aws_environ():
            self.store.materialize(start_date=start, end_date=end - TICK, feature_views=[feature_view])
        return written[0]

    def materialize(
        self,
        start: datetime,
        end: datetime,
        feature_views: list[str] | None = None,
        *,
        chunk: timedelta | None = DEFAULT_CHUNK,
        overlap: timedelta | None = None,
        incremental: bool = False,
        log: Callable[..., None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """
        Load the latest value per entity with event time in ``[start, end)`` into the online store.

        Each view is materialized in consecutive chunks of ``chunk`` (one ``store.materialize``
        per chunk), oldest first, so the last chunk holding an entity leaves its latest value.
        Why chunks rather than a subprocess: a chunk bounds the rows converted to protobuf and
        written per step, logs progress, and records its range in the registry as it finishes,
        so a retry (or ``incremental=True``) resumes after the last finished chunk; a subprocess
        would pay ``import feast`` (~20 s) again and need the store's secrets passed to it. Feast's
        file offline store still reads the whole source per chunk (dask), so the *source* must
        fit in the worker's memory; move big sources to a warehouse offline store.

        :param start: interval start (inclusive, UTC).
        :param end: interval end (exclusive, UTC).
        :param feature_views: view names; all registered views when None.
        :param chunk: longest range per ``store.materialize`` call; None: the whole range at once.
        :param overlap: also re-read ``[start - overlap, start)`` to pick up rows that arrived
            late with an old event time (values are the same, so re-reading is harmless).
        :param incremental: start each view where its last materialization ended (like
            ``feast materialize-incremental``); ``start`` is used for a never-materialized view.
        :param log: ``logger.info``-like callable for the per-chunk progress lines.
        :return: per view: ``start``, ``end`` (ISO), ``rows`` written, ``chunks``, ``seconds``,
            ``skipped`` (True when incremental found nothing left to do).
        """
        log = log or self.log.info
        names = feature_views or sorted(fv.name for fv in self.store.list_feature_views())
        report: dict[str, dict[str, Any]] = {}
        for name in names:
            view_start = start
            if incremental:
                view_start = self.last_materialized_end(name) or start
            if overlap:
                view_start -= overlap
            report[name] = self._materialize_view(name, view_start, end, chunk, log)
        return report

    def _materialize_view(
        self, name: str, start: datetime, end: datetime, chunk: timedelta | None, log: Callable[..., None]
    ) -> dict[str, Any]:
        pieces = chunk_interval(start, end, chunk)
        if not pieces:
            log("%s: already materialized up to %s, nothing to do", name, start.isoformat())
            return {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "rows": 0,
                "chunks": 0,
                "seconds": 0.0,
                "skipped": True,
            }
        total_rows, began = 0, time.monotonic()
        for i, (a, b) in enumerate(pieces, 1):
            t0 = time.monotonic()
            try:
                rows = self.materialize_range(name, a, b)
            except Exception as err:
                if not _store_unreachable(err):
                    raise
                raise self._unreachable(err, name, i, len(pieces), a, b) from err
            seconds = time.monotonic() - t0
            total_rows += rows
            log(
                "%s: chunk %d/%d [%s, %s): %d rows written in %.1f s (%.0f rows/s)",
                name,
                i,
                len(pieces),
                a.isoformat(),
                b.isoformat(),
                rows,
                seconds,
                rows / seconds if seconds else 0.0,
            )
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "rows": total_rows,
            "chunks": len(pieces),
            "seconds": round(time.monotonic() - began, 3),
            "skipped": False,
        }

    def _unreachable(
        self, err: BaseException, name: str, i: int, n: int, a: datetime, b: datetime
    ) -> MlopsError:
        """The error of a chunk whose online store could not be reached: what, where, what to do."""
        try:
            watermark = self.last_materialized_end(name)
        except Exception:  # noqa: BLE001 - the message still helps without it
            watermark = None
        done = (
            f"its watermark (last materialized end) is {watermark.isoformat()}"
            if watermark is not None
            else "it has no watermark yet (nothing materialized)"
        )
        detail = redact_redis(f"{type(err).__module__}.{type(err).__qualname__}: {err}")
        return MlopsError(
            f"Feast online store unreachable while materializing '{name}' chunk {i}/{n} "
            f"[{a.isoformat()}, {b.isoformat()}): {detail}. Store: {self.describe()}. The chunks "
            f"before it are written and recorded: {done}. Start the online store (or fix the "
            f"online store settings of connection '{self.feast_conn_id}'), then retry the task; "
            "with incremental=True it resumes from the watermark, otherwise it rewrites the "
            "interval (idempotent)."
        )

    # -- reading features ------------------------------------------------------------------

    def online_features(self, features: list[str], entity_rows: list[dict[str, Any]]) -> dict[str, list]:
        """Online values, column-wise: ``{column: [value per entity row]}`` (entity keys included)."""
        return self.store.get_online_features(features=features, entity_rows=entity_rows).to_dict()

    def online_features_for(
        self, entity_rows: list[dict[str, Any]], feature_refs: list[str]
    ) -> list[dict[str, Any]]:
        """Online values for a request, one dict per entity row (None where the store has no value)."""
        columns = self.online_features(feature_refs, entity_rows)
        return [{key: values[i] for key, values in columns.items()} for i in range(len(entity_rows))]

    def historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """
        Point-in-time-correct feature values for each distinct row of ``entity_df``.

        ``entity_df`` holds the join keys and ``event_timestamp`` (UTC; naive means UTC). Each
        row gets the latest value at or before its timestamp and no older than the view's
        ``ttl``, else missing (NaN). Feast's file offline store *drops* an entity row for which
        every candidate value is older than the ttl; the row is put back here with missing
        features, so a label set never loses labels silently.
        """
        import pandas as pd

        from airflow_mlops import lineage

        # hook-level lineage: a @task reading features has the views as its inputs
        views = sorted({ref.split(":", 1)[0] for ref in features if ":" in ref})
        lineage.record_hook_lineage(
            inputs=[lineage.feature_view_dataset(view, self.project) for view in views], context=self
        )
        entities = entity_df.drop_duplicates().copy()
        entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True)
        with storage.aws_environ():
            df = self.store.get_historical_features(entity_df=entities, features=features).to_df()
        if len(df) == len(entities):
            return df
        self.log.warning(
            "Feast returned %d of %d entity rows (no value within the ttl); returning the others "
            "with missing features.",
            len(df),
            len(entities),
        )
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
        return entities.merge(df, on=list(entities.columns), how="left")

    def test_connection(self) -> tuple[bool, str]:
        """
        Read the registry (list its feature views) and reach the online store.

        A local registry file must exist (Feast would otherwise create an empty one and the
        test would pass on a wrong path); a Redis online store must answer ``PING`` (2 s timeout).
        """
        try:
            registry = self.registry_path
            if "://" not in registry and not Path(registry).is_file():
                return (
                    False,
                    f"Feast registry {registry} does not exist: run `feast apply` or fix registry_path.",
                )
            views = self.store.list_feature_views()
            checks = [f"Feast registry {registry} readable: {len(views)} feature view(s)"]
            online = self.online_store_config()
            if online["type"] == "redis":
                where = redact_redis(online["connection_string"])
                try:
                    _redis_client(online["connection_string"]).ping()
                except Exception as err:
                    return (
                        False,
                        f"{checks[0]}, but the Redis online store {where} does not answer PING: {err}",
                    )
                checks.append(f"Redis online store {where} answers PING")
            else:
                checks.append(f"SQLite online store {online['path']}")
            return True, "; ".join(checks) + "."
        except Exception as err:  # report, do not raise, as Airflow's UI expects
            return False, redact_redis(str(err))


#: exception class names (anywhere in the MRO) that mean the online store could not be reached:
#: Feast's stores raise their clients' own (``redis.exceptions.ConnectionError`` is no OSError)
_UNREACHABLE = frozenset({"ConnectionError", "TimeoutError", "BusyLoadingError", "ConnectionRefusedError"})


def _store_unreachable(err: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError) or any(
            klass.__name__ in _UNREACHABLE for klass in type(current).__mro__
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _redis_client(connection_string: str, timeout: float = 2):
    """A redis-py client for Feast's ``host:port,db=N,password=...,ssl=true`` connection string."""
    import redis

    first, *options = [part.strip() for part in connection_string.split(",") if part.strip()]
    host, _, port = first.rpartition(":") if ":" in first else (first, "", "6379")
    kwargs: dict[str, Any] = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip().lower()
        if key == "db":
            kwargs["db"] = int(value)
        elif key == "password":
            kwargs["password"] = value
        elif key == "username":
            kwargs["username"] = value
        elif key == "ssl":
            kwargs["ssl"] = value.strip().lower() in ("true", "1", "yes")
    return redis.Redis(socket_connect_timeout=timeout, socket_timeout=timeout, **kwargs)
