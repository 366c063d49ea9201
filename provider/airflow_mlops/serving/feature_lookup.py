"""Pre-processing step of a served model: complete request rows with Feast online features.

A client sends what it knows about each row (entity keys and request-time features); the
rest of the model's inputs are read from Feast's online store, once per request for all
rows, and the rows are turned into the model's input matrix, in the model's column order::

    lookup = FeatureLookup(
        repo_path="dags/feature_repo",
        features=["weather_hourly:temp", ..., "carrier_daily:carrier_flights", ...],
        request_features=["hour", "day_of_week", "distance"],
        output_order=["hour", "day_of_week", "distance", "temp", ..., "carrier_flights", ...],
        feast_conn_id="feast_default",
    )
    lookup.warm()  # at process start: import feast (~20 s), open the store, check the views
    result = lookup.transform([{"origin": "JFK", "carrier": "UA", "hour": 14, "day_of_week": 2,
                                "distance": 1400}])
    names, matrix = result                 # ["hour", ..., "carrier_delayed_share"], [[14.0, ...]]
    result.missing_entities                # [] or [{"row": 0, "feature_view": ..., "entity": {...}}]
    model_request(result)                  # {"data": {"names": names, "ndarray": matrix}}

Which keys a row needs: the join keys of every feature view named in ``features`` (read
from the Feast registry: ``origin`` for ``weather_hourly``, ``carrier`` for
``carrier_daily``) and every ``request_features`` name. Other keys are ignored.

Missing values: a feature the online store has no value for is ``None`` in the matrix
(the example model imputes missing inputs with its training mean). When a row's entity has
no value at all in a view (an unknown airport, a view never materialized for that key),
the row is also listed in ``missing_entities``, so a caller can reject or flag it. Feast
serves the latest materialized value whatever its age (a view's ``ttl`` applies to historical
retrieval, not to these online reads): keeping the store fresh is the materializing DAG's job,
watched by ``FeastFeatureFreshnessSensor``.

Only the standard library is imported here; Feast (``import feast`` ≈20 s) is imported on
the first :meth:`FeatureLookup.warm` or :meth:`FeatureLookup.transform`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: the keys of :meth:`FeatureLookup.to_dict`
CONFIG_KEYS = ("repo_path", "features", "request_features", "output_order", "feast_conn_id")
#: how many bad rows a validation error lists before "and N more"
_MAX_LISTED = 5
#: exception classes (by name, anywhere in the class's MRO: Feast's stores raise their clients'
#: own, e.g. ``redis.exceptions.ConnectionError``, which is not an OSError) that mean the online
#: store could not be reached, as opposed to a read it answered with an error
_UNAVAILABLE = frozenset(
    {"ConnectionError", "TimeoutError", "BusyLoadingError", "OperationalError", "ConnectionRefusedError"}
)
_PASSWORD = re.compile(r"(password=)[^,\s]*", re.IGNORECASE)


class FeatureStoreError(RuntimeError):
    """
    The online store failed a read. ``unavailable``: it could not be reached (a server down, a
    timeout, a locked or missing database) — retrying later may work; else it answered an error.
    """

    def __init__(self, message: str, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable

    @classmethod
    def wrap(cls, err: BaseException, store: str) -> FeatureStoreError:
        unavailable = isinstance(err, OSError | TimeoutError) or any(
            klass.__name__ in _UNAVAILABLE for klass in type(err).__mro__
        )
        what = "is unavailable" if unavailable else "failed a read"
        detail = _PASSWORD.sub(r"\1***", f"{type(err).__module__}.{type(err).__qualname__}: {err}")
        return cls(f"the feature store ({store}) {what}: {detail}", unavailable)


class LookupResult(tuple):
    """
    ``(names, matrix)`` — unpacks like a 2-tuple — plus ``missing_entities``.

    * ``names``: the model's input columns (``output_order``).
    * ``matrix``: one list of ``float | None`` per request row, in request order.
    * ``missing_entities``: one entry per (row, feature view) whose entity has no value in the
      online store, ordered by row then view:
      ``{"row": 3, "feature_view": "weather_hourly", "entity": {"origin": "XXX"}}``.
    """

    missing_entities: list[dict[str, Any]]

    def __new__(
        cls, names: list[str], matrix: list[list[float | None]], missing_entities: list[dict[str, Any]]
    ) -> LookupResult:
        self = super().__new__(cls, (names, matrix))
        self.missing_entities = missing_entities
        return self

    def __getnewargs__(self) -> tuple:
        return (self[0], self[1], self.missing_entities)

    @property
    def names(self) -> list[str]:
        return self[0]

    @property
    def matrix(self) -> list[list[float | None]]:
        return self[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"names": [...], "ndarray": [[...]], "missing_entities": [...]}``."""
        return {"names": self.names, "ndarray": self.matrix, "missing_entities": self.missing_entities}


def rows_from_request(body: Any) -> list[dict[str, Any]]:
    """
    The rows of a Seldon protocol request ``{"jsonData": {"rows": [{...}, ...]}}``.

    :raises ValueError: the body has another shape (the message shows the expected one).
    """
    expected = 'expected {"jsonData": {"rows": [{"origin": "JFK", "carrier": "UA", "hour": 14, ...}, ...]}}'
    if not isinstance(body, Mapping) or not isinstance(body.get("jsonData"), Mapping):
        raise ValueError(f"Request has no 'jsonData' object: {expected}.")
    rows = body["jsonData"].get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"Request's jsonData has no non-empty 'rows' list: {expected}.")
    return rows


def model_request(result: LookupResult) -> dict[str, Any]:
    """The Seldon protocol request for the model server: ``{"data": {"names", "ndarray"}}``."""
    names, matrix = result
    return {"data": {"names": list(names), "ndarray": matrix}}


def _parse_ref(ref: Any) -> tuple[str, str]:
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ValueError(f"Feature reference {ref!r} is not of the form 'feature_view:feature'.")
    view, name = ref.split(":")
    return view, name


def _str_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {value!r}.")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"{what} must be non-empty strings, got {bad!r}.")
    duplicates = sorted({v for v in value if list(value).count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} lists {duplicates} more than once.")
    return list(value)


class FeatureLookup:
    """
    Turn request rows into a model input matrix, reading Feast online features by entity key.

    The store comes from the ``feast`` connection through
    :class:`~airflow_mlops.hooks.feast.FeastHook` (the store the materializing tasks write).
    With ``feast_conn_id=None``: a ``feature_store.yaml`` in ``repo_path`` is used when there
    is one (plain ``feast.FeatureStore(repo_path=...)``), otherwise the hook's default
    connection ``feast_default``. Outside an Airflow task, connections are read from
    ``AIRFLOW_CONN_*`` environment variables and configured secrets backends only (not from
    the metadata database).

    Construction is cheap and does no I/O; the store is opened once, on :meth:`warm` or the
    first :meth:`transform`, and shared by every call (thread-safe opening).

    :param repo_path: folder of the feature definitions.
    :param features: Feast references ``"feature_view:feature"``.
    :param request_features: names taken from the request rows as they are (numbers).
    :param output_order: the model's input columns: each is a request feature or the bare name
        of one of ``features``, and every one of those appears exactly once.
    :param feast_conn_id: the ``feast`` connection (see above for None).
    """

    def __init__(
        self,
        repo_path: str,
        features: list[str],
        request_features: list[str],
        output_order: list[str],
        feast_conn_id: str | None = None,
    ) -> None:
        if not isinstance(repo_path, str | Path) or not str(repo_path):
            raise ValueError(f"repo_path must be a folder path, got {repo_path!r}.")
        if feast_conn_id is not None and (not isinstance(feast_conn_id, str) or not feast_conn_id):
            raise ValueError(f"feast_conn_id must be a connection id or None, got {feast_conn_id!r}.")
        self.repo_path = str(repo_path)
        self.features = _str_list(features, "features")
        self.request_features = _str_list(request_features, "request_features")
        self.output_order = _str_list(output_order, "output_order")
        self.feast_conn_id = feast_conn_id
        if not self.features:
            raise ValueError("features is empty: name at least one 'feature_view:feature'.")

        #: bare output name -> ("request", name) or ("feast", "view__feature")
        self._sources: dict[str, tuple[str, str]] = {}
        self._views: list[str] = []  # in order of first mention
        for ref in self.features:
            view, name = _parse_ref(ref)
            if view not in self._views:
                self._views.append(view)
            if name in self._sources:
                raise ValueError(
                    f"Feature name '{name}' comes from more than one feature view "
                    f"({self._sources[name][1].split('__')[0]} and {view}): the model's columns "
                    "need distinct names."
                )
            self._sources[name] = ("feast", f"{view}__{name}")
        for name in self.request_features:
            if name in self._sources:
                raise ValueError(f"'{name}' is both a request feature and the Feast feature {name!r}.")
            self._sources[name] = ("request", name)
        unknown = [n for n in self.output_order if n not in self._sources]
        unused = [n for n in self._sources if n not in self.output_order]
        if unknown or unused:
            raise ValueError(
                "output_order must list every request feature and Feast feature (bare name) once: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown {unknown}" if unknown else "",
                        f"not listed {unused}" if unused else "",
                    )
                    if part
                )
                + "."
            )

        self._lock = threading.Lock()
        self._store: Any = None
        self._store_description = ""
        #: per view: [(join key, feast ValueType name)]
        self._entity_keys: dict[str, list[tuple[str, str]]] = {}

    # -- configuration ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-ready; :meth:`from_dict` rebuilds the lookup from it."""
        return {
            "repo_path": self.repo_path,
            "features": list(self.features),
            "request_features": list(self.request_features),
            "output_order": list(self.output_order),
            "feast_conn_id": self.feast_conn_id,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> FeatureLookup:
        if not isinstance(config, Mapping):
            raise ValueError(f"A FeatureLookup configuration is a JSON object, got {type(config).__name__}.")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        missing = [k for k in CONFIG_KEYS[:4] if k not in config]
        if unknown or missing:
            raise ValueError(
                f"FeatureLookup configuration: unknown keys {unknown}, missing keys {missing}; "
                f"expected {list(CONFIG_KEYS)} (feast_conn_id optional)."
            )
        return cls(**dict(config))

    def __repr__(self) -> str:
        return (
            f"FeatureLookup(repo_path={self.repo_path!r}, views={self._views}, "
            f"request_features={self.request_features}, feast_conn_id={self.feast_conn_id!r})"
        )

    @property
    def feature_views(self) -> list[str]:
        return list(self._views)

    # -- the store -------------------------------------------------------------------------

    def _open_store(self) -> tuple[Any, str]:
        repo = Path(self.repo_path)
        if self.feast_conn_id is None and (repo / "feature_store.yaml").is_file():
            from airflow_mlops._imports import require

            feast = require("feast", "feast")
            store = feast.FeatureStore(repo_path=str(repo.resolve()))
            return store, f"feature_store.yaml of {repo.resolve()} (project '{store.project}')"

        from airflow_mlops.hooks.feast import FeastHook

        conn_id = self.feast_conn_id or FeastHook.default_conn_name
        hook = FeastHook(feast_conn_id=conn_id, repo_path=self.repo_path)
        try:
            store = hook.store
        except Exception as err:
            if type(err).__name__ != "AirflowNotFoundException":
                raise
            raise LookupError(
                f"Feast connection '{conn_id}' is not defined here. Outside Airflow tasks, "
                f"connections come from environment variables (AIRFLOW_CONN_{conn_id.upper()}) "
                "and secrets backends, not from the metadata database; or put a feature_store.yaml "
                "in the repo and pass feast_conn_id=None."
            ) from err
        return store, hook.describe()

    def _read_views(self, store: Any) -> dict[str, list[tuple[str, str]]]:
        """Join keys and value types of each view, and a check that every feature exists."""
        wanted: dict[str, list[str]] = {}
        for ref in self.features:
            view, name = _parse_ref(ref)
            wanted.setdefault(view, []).append(name)
        keys: dict[str, list[tuple[str, str]]] = {}
        for view, names in wanted.items():
            try:
                fv = store.get_feature_view(view)
            except Exception as err:
                if type(err).__name__ != "FeatureViewNotFoundException":
                    raise
                raise LookupError(
                    f"Feature view '{view}' is not registered in Feast project '{store.project}': "
                    "run FeastApplyOperator first, or check the feature references."
                ) from err
            available = {f.name for f in fv.features}
            absent = [n for n in names if n not in available]
            if absent:
                raise LookupError(
                    f"Feature view '{view}' has no feature {absent}; it has {sorted(available)}."
                )
            keys[view] = [(col.name, col.dtype.to_value_type().name) for col in fv.entity_columns]
        return keys

    def _ensure_store(self) -> Any:
        if self._store is not None:
            return self._store
        with self._lock:
            if self._store is None:
                store, description = self._open_store()
                self._entity_keys = self._read_views(store)
                self._store_description = description
                self._store = store
        return self._store

    def warm(self) -> dict[str, Any]:
        """
        Import Feast, open the store, check the views and read once, so the first request is fast.

        :return: ``seconds`` spent, ``store`` (one line, no secrets), ``entity_keys`` per view.
        :raises LookupError: the connection, a feature view or a feature does not exist.
        """
        started = time.monotonic()
        store = self._ensure_store()
        # the first read opens the online store's connection and builds Feast's provider
        probe = {
            key: "" if kind == "STRING" else 0
            for keys in self._entity_keys.values()
            for key, kind in keys
            if kind in ("STRING", "INT64", "INT32")
        }
        if len(probe) == len(self.entity_keys):
            store.get_online_features(features=self.features, entity_rows=[probe], full_feature_names=True)
        return {
            "seconds": round(time.monotonic() - started, 3),
            "store": self._store_description,
            "entity_keys": {view: [k for k, _ in keys] for view, keys in self._entity_keys.items()},
        }

    @property
    def entity_keys(self) -> list[str]:
        """Join keys every row must carry (opens the store: they are read from the registry)."""
        self._ensure_store()
        seen: list[str] = []
        for keys in self._entity_keys.values():
            seen.extend(k for k, _ in keys if k not in seen)
        return seen

    # -- requests --------------------------------------------------------------------------

    def _what_to_send(self) -> str:
        parts = [
            f"{key} ({kind.lower()}, key of {view})"
            for view, keys in self._entity_keys.items()
            for key, kind in keys
        ]
        parts += [f"{name} (number)" for name in self.request_features]
        return "Each row needs " + ", ".join(parts)

    def _validate(self, rows: Any) -> list[str]:
        """The problems of each bad row (empty: all good)."""
        if not isinstance(rows, list):
            return [f"rows must be a list of JSON objects, got {type(rows).__name__}"]
        key_kinds: dict[str, str] = {}
        for keys in self._entity_keys.values():
            key_kinds.update(dict(keys))
        problems: list[str] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                problems.append(f"row {i} is not a JSON object")
                continue
            absent = [k for k in [*key_kinds, *self.request_features] if row.get(k) is None]
            wrong = []
            for key, kind in key_kinds.items():
                value = row.get(key)
                if value is None:
                    continue
                if kind == "STRING" and not isinstance(value, str):
                    wrong.append(f"{key}={value!r} (a string)")
                elif kind in ("INT64", "INT32") and (isinstance(value, bool) or not isinstance(value, int)):
                    wrong.append(f"{key}={value!r} (an integer)")
            for name in self.request_features:
                value = row.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    wrong.append(f"{name}={value!r} (a number)")
            if absent or wrong:
                what = []
                if absent:
                    what.append("lacks " + ", ".join(repr(k) for k in absent))
                if wrong:
                    what.append("needs " + ", ".join(wrong))
                problems.append(f"row {i} " + " and ".join(what))
        return problems

    def transform(self, rows: list[dict[str, Any]]) -> LookupResult:
        """
        The model input of ``rows``: ``(names, matrix)`` plus ``missing_entities`` (see
        :class:`LookupResult`), in one online read for all rows.

        :raises ValueError: a row lacks a join key or a request feature, or has a value of the
            wrong type; the message names the rows, the keys, and what each row must carry.
        :raises FeatureStoreError: the online store failed the read (``unavailable`` when it
            could not be reached: a Redis server down...).
        """
        store = self._ensure_store()
        problems = self._validate(rows)
        if problems:
            listed = "; ".join(problems[:_MAX_LISTED])
            more = f" (and {len(problems) - _MAX_LISTED} more rows)" if len(problems) > _MAX_LISTED else ""
            raise ValueError(f"Bad request rows: {listed}{more}. {self._what_to_send()}.")
        names = list(self.output_order)
        if not rows:
            return LookupResult(names, [], [])

        join_keys = self.entity_keys
        entity_rows = [{key: row[key] for key in join_keys} for row in rows]
        try:
            response = store.get_online_features(
                features=self.features, entity_rows=entity_rows, full_feature_names=True
            )
            columns = response.to_dict()
        except Exception as err:  # the store's own client errors (redis, sqlite, ...)
            raise FeatureStoreError.wrap(err, self._store_description or self.repo_path) from err
        index = {name: i for i, name in enumerate(response.proto.metadata.feature_names.val)}

        # a row's entity is missing from a view when none of the view's features was found
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        not_found = FieldStatus.NOT_FOUND
        missing: list[dict[str, Any]] = []
        view_statuses = {
            view: [
                response.proto.results[index[f"{view}__{name}"]].statuses
                for ref in self.features
                for v, name in [_parse_ref(ref)]
                if v == view
            ]
            for view in self._views
        }
        for i in range(len(rows)):
            for view in self._views:
                if all(statuses[i] == not_found for statuses in view_statuses[view]):
                    keys = [k for k, _ in self._entity_keys[view]]
                    missing.append(
                        {"row": i, "feature_view": view, "entity": {k: entity_rows[i][k] for k in keys}}
                    )

        getters = []
        for name in names:
            kind, key = self._sources[name]
            getters.append((kind == "request", key if kind == "request" else columns[key]))
        matrix = []
        for i, row in enumerate(rows):
            out: list[float | None] = []
            for from_request, source in getters:
                value = row[source] if from_request else source[i]
                if value is None:
                    out.append(None)
                else:
                    value = float(value)
                    out.append(None if math.isnan(value) else value)
            matrix.append(out)
        return LookupResult(names, matrix, missing)
