"""Ingest one data interval into a versioned Parquet snapshot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops._time import resolve_interval
from airflow_mlops.assets import attach_outlet_extra
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context


class IngestOperator(MlopsBaseOperator):
    """
    Read the rows of one data interval and store them as a content-addressed snapshot.

    The snapshot's version is a hash of its content: re-ingesting an interval whose data did
    not change yields the same version and writes nothing; changed data yields a new version
    and the old one is kept. The version, row count and path go to XCom and onto the event
    of every Asset in ``outlets``.

    :param dataset: name of the dataset (folder under ``output_dir``).
    :param source: callable ``(start, end) -> pandas.DataFrame`` returning the interval's rows,
        or an import path ``"package.module:function"`` to such a callable.
    :param timestamp_column: column that places a row in time; rows outside
        ``[interval_start, interval_end)`` are dropped.
    :param interval_start: start of the interval (templated); defaults to the run's data interval.
    :param interval_end: end of the interval (templated); defaults to the run's data interval.
    :param output_dir: root of the snapshots; defaults to ``[mlops] data_dir``/datasets.
    :param on_empty: ``"fail"`` (default) or ``"skip"`` (skip this and downstream tasks) when
        the interval has no rows.
    """

    template_fields: Sequence[str] = ("dataset", "interval_start", "interval_end", "output_dir")

    def __init__(
        self,
        *,
        dataset: str,
        source: Callable[[datetime, datetime], pd.DataFrame] | str,
        timestamp_column: str,
        interval_start: datetime | str | None = None,
        interval_end: datetime | str | None = None,
        output_dir: str | None = None,
        on_empty: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_empty not in ("fail", "skip"):
            raise ValueError(f"on_empty must be 'fail' or 'skip', got {on_empty!r}")
        self.dataset = dataset
        self.source = source
        self.timestamp_column = timestamp_column
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.output_dir = output_dir
        self.on_empty = on_empty

    def _source_callable(self) -> Callable[[datetime, datetime], pd.DataFrame]:
        if callable(self.source):
            return self.source
        import importlib

        module, sep, name = self.source.partition(":")
        if not sep:
            module, _, name = self.source.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def _read(self, start: datetime, end: datetime) -> pd.DataFrame:
        import pandas as pd

        df = self._source_callable()(start, end)
        if self.timestamp_column not in df.columns:
            raise ValueError(
                f"{self.task_id}: the source returned no '{self.timestamp_column}' column "
                f"(columns: {', '.join(map(str, df.columns))}); set timestamp_column."
            )
        ts = pd.to_datetime(df[self.timestamp_column], utc=True)
        inside = (ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))
        return df.loc[inside].reset_index(drop=True)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops import settings
        from airflow_mlops.datasets import write_snapshot

        start, end = resolve_interval(context, self.interval_start, self.interval_end, self.task_id)
        df = self._read(start, end)
        if df.empty:
            message = f"No rows of '{self.dataset}' in [{start}, {end})."
            if self.on_empty == "skip":
                raise AirflowSkipException(message)
            raise ValueError(f"{message} Check the source, or pass on_empty='skip'.")
        lineage = {
            "dag_id": context["dag"].dag_id,
            "run_id": context["run_id"],
            "task_id": self.task_id,
            "source": self.source
            if isinstance(self.source, str)
            else getattr(self.source, "__qualname__", "?"),
        }
        root = self.output_dir or str(settings.data_dir() / "datasets")
        snapshot, written = write_snapshot(df, root, self.dataset, start, end, lineage)
        self.log.info(
            "%s %s version %s: %d rows at %s",
            "Wrote" if written else "Unchanged, reused",
            self.dataset,
            snapshot.version,
            snapshot.rows,
            snapshot.path,
        )
        result = {**snapshot.to_dict(), "written": written}
        attach_outlet_extra(
            context, self.outlets, {"version": snapshot.version, "rows": snapshot.rows, "path": snapshot.path}
        )
        return result
