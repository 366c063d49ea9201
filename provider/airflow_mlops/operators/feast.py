"""Feast: register feature definitions and materialize a data interval into the online store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops._time import resolve_interval
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

    @property
    def hook(self) -> FeastHook:
        from airflow_mlops.hooks.feast import FeastHook

        return FeastHook(feast_conn_id=self.feast_conn_id, repo_path=self.repo_path)


class FeastApplyOperator(_FeastOperator):
    """
    Register the feature repo's entities and feature views (``feast apply``).

    :param feast_conn_id: the ``feast`` connection (stores, registry, repo folder).
    :param repo_path: feature definitions folder, overriding the connection's ``repo_path``.
    """

    def execute(self, context: Context) -> dict[str, list[str]]:
        applied = self.hook.apply()
        self.log.info("Applied feature views %s, entities %s", applied["feature_views"], applied["entities"])
        return applied


class FeastMaterializeOperator(_FeastOperator):
    """
    Materialize feature values of a data interval into the online store.

    Materializing the same interval twice writes the same values (safe to retry).

    :param feature_views: names of the views to materialize; all when None.
    :param start: start of the interval (templated); defaults to the run's data interval.
    :param end: end of the interval (templated); defaults to the run's data interval.
    """

    template_fields: Sequence[str] = (*_FeastOperator.template_fields, "feature_views", "start", "end")

    def __init__(
        self,
        *,
        feature_views: list[str] | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feature_views = feature_views
        self.start = start
        self.end = end

    def execute(self, context: Context) -> dict[str, Any]:
        start, end = resolve_interval(context, self.start, self.end, self.task_id)
        self.log.info("Materializing %s for [%s, %s]", self.feature_views or "all feature views", start, end)
        self.hook.materialize(start, end, self.feature_views)
        return {"start": start.isoformat(), "end": end.isoformat(), "feature_views": self.feature_views}
