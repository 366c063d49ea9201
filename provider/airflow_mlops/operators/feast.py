"""Feast: register feature definitions and materialize a data interval into the online store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_mlops._time import resolve_interval
from airflow_mlops.hooks.feast import DEFAULT_CHUNK
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.feast import FeastHook


class _FeastOperator(MlopsBaseOperator):
    """Common arguments: the ``feast`` connection and an optional feature repo override."""

    template_fields: Sequence[str] = ("repo_path",)
    ui_color = "#e8f4fd"

    def __init__(self, *, feast_conn_id: str = "feast_default", repo_path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.feast_conn_id = feast_conn_id
        self.repo_path = repo_path

    #: the feature views this task applied or materialized (:meth:`FeastHook.view_lineage`)
    _views: list[dict[str, Any]] | None = None

    @property
    def hook(self) -> FeastHook:
        from airflow_mlops.hooks.feast import FeastHook

        return FeastHook(feast_conn_id=self.feast_conn_id, repo_path=self.repo_path)

    def _view_datasets(self, rows: dict[str, int] | None = None) -> tuple[list[Any], list[Any]]:
        """The views' sources (snapshot datasets) in, the views out (schema, definition version)."""
        from airflow_mlops import lineage

        inputs, outputs, seen = [], [], set()
        for view in self._views or []:
            source = view.get("source")
            if source and (dataset := lineage.path_dataset(source)) not in seen:
                seen.add(dataset)
                inputs.append(lineage.input_dataset(dataset))
            facets = {
                "schema": lineage.schema_facet(view["fields"]),
                "version": lineage.version_facet(view["version"]),
            }
            stats = {}
            if rows is not None and view["name"] in rows:
                stats["outputStatistics"] = lineage.output_statistics(rows=rows[view["name"]])
            dataset = lineage.feature_view_dataset(view["name"], view["project"])
            outputs.append(lineage.output_dataset(dataset, facets, stats))
        return inputs, outputs


class FeastApplyOperator(_FeastOperator):
    """
    Register the feature repo's entities and feature views (``feast apply``).

    :param feast_conn_id: the ``feast`` connection (stores, registry, repo folder).
    :param repo_path: feature definitions folder, overriding the connection's ``repo_path``.
    """

    def execute(self, context: Context) -> dict[str, list[str]]:
        hook = self.hook
        applied = hook.apply()
        self.log.info("Applied feature views %s, entities %s", applied["feature_views"], applied["entities"])
        self._views = hook.view_lineage(applied["feature_views"])
        return applied

    def openlineage(self, stage: str) -> Any:
        """The views' source datasets in, the feature views out (schema, definition hash as version)."""
        from airflow_mlops import lineage

        return lineage.operator_lineage(*self._view_datasets()) if self._views else None


class FeastMaterializeOperator(_FeastOperator):
    """
    Materialize the feature values of a data interval ``[start, end)`` into the online store.

    Interval-keyed and safe to retry: the online store receives the latest row per entity of
    the interval, so running the same interval again writes the same values. The interval is
    cut into ``chunk``-long pieces, each one ``store.materialize`` call with a progress line
    (view, range, rows written, rows/s) and its range recorded in the registry as it finishes;
    see :meth:`FeastHook.materialize` for why chunks and not a subprocess.

    Note the stores differ on *older* intervals: Redis keeps a value newer than the one offered,
    SQLite overwrites, so re-materializing an old interval after a newer one moves SQLite back.

    :param feast_conn_id: the ``feast`` connection (stores, registry, repo folder).
    :param repo_path: feature definitions folder, overriding the connection's ``repo_path``.
    :param feature_views: names of the views to materialize; all when None (templated).
    :param start: interval start (templated); defaults to the run's data interval start.
    :param end: interval end, exclusive (templated); defaults to the run's data interval end.
    :param chunk: longest range per Feast call (default 31 days: a monthly interval is one call,
        a year's backfill twelve); None: the whole range at once.
    :param overlap: also re-read this long before the start, to pick up rows that arrived late
        with an old event time (for example ``timedelta(hours=6)``).
    :param incremental: start each view where its last materialization ended, like
        ``feast materialize-incremental`` (``start`` is used for a view never materialized);
        ``end`` is still the interval end.
    :return: XCom ``start``, ``end`` (the requested interval), ``feature_views``, ``rows``
        (total written) and ``views``: per view ``start``, ``end``, ``rows``, ``chunks``,
        ``seconds``, ``skipped``.
    """

    template_fields: Sequence[str] = (*_FeastOperator.template_fields, "feature_views", "start", "end")

    def __init__(
        self,
        *,
        feature_views: list[str] | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        chunk: timedelta | None = DEFAULT_CHUNK,
        overlap: timedelta | None = None,
        incremental: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if chunk is not None and chunk <= timedelta(0):
            raise ValueError(f"{kwargs.get('task_id')}: chunk must be a positive timedelta or None.")
        if overlap is not None and overlap < timedelta(0):
            raise ValueError(f"{kwargs.get('task_id')}: overlap must not be negative.")
        self.feature_views = feature_views
        self.start = start
        self.end = end
        self.chunk = chunk
        self.overlap = overlap
        self.incremental = incremental

    def execute(self, context: Context) -> dict[str, Any]:
        start, end = resolve_interval(context, self.start, self.end, self.task_id, names=("start", "end"))
        hook = self.hook
        self.log.info(
            "Materializing %s for [%s, %s)%s%s, %s chunks; %s",
            self.feature_views or "all feature views",
            start.isoformat(),
            end.isoformat(),
            " incrementally" if self.incremental else "",
            f" with {self.overlap} overlap" if self.overlap else "",
            self.chunk or "no",
            hook.describe(),
        )
        views = hook.materialize(
            start,
            end,
            self.feature_views,
            chunk=self.chunk,
            overlap=self.overlap,
            incremental=self.incremental,
            log=self.log.info,
        )
        rows = sum(v["rows"] for v in views.values())
        self.log.info("Materialized %d rows into the online store: %s", rows, views)
        self._views = hook.view_lineage(sorted(views))
        self._rows = {name: view["rows"] for name, view in views.items()}
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "feature_views": sorted(views),
            "rows": rows,
            "views": views,
        }

    _rows: dict[str, int] | None = None

    def openlineage(self, stage: str) -> Any:
        """
        The views' sources (the snapshot datasets their Feast sources read) in, the feature views
        out, with the rows written to the online store; before the run, the named views only.
        """
        from airflow_mlops import lineage

        if stage != "start" and self._views:
            return lineage.operator_lineage(*self._view_datasets(self._rows))
        if not self.feature_views:
            return None
        project = self.hook.project
        return lineage.operator_lineage(
            outputs=[
                lineage.output_dataset(lineage.feature_view_dataset(name, project))
                for name in self.feature_views
            ]
        )
