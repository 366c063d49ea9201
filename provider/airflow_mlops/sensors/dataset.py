"""Wait for a new version of a dataset snapshot written by ``IngestOperator``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

if TYPE_CHECKING:
    from airflow.sdk import Context


class DatasetVersionSensor(BaseSensorOperator):
    """
    Wait until a version of ``dataset`` is stored that is newer than the one you know of.

    "Newer" means ingested after ``after_version`` was, or after the instant ``after``
    (the later of the two when both are given); with neither, any stored version will do.
    A version is ready once its manifest exists (the manifest is written last). The result
    (XCom ``return_value``) is the manifest of the newest such version: ``version``,
    ``path`` (its immutable Parquet file), ``rows``, ``interval_start``, ``interval_end``,
    ``schema``, ``source``, ``ingested_at``, ...

    :param dataset: name of the dataset (templated).
    :param output_dir: root of the snapshots (templated); defaults to ``[mlops] data_dir``/datasets.
    :param after_version: a version already seen (templated); wait for one ingested later.
    :param after: an instant, datetime or ISO-8601 (templated); wait for a version ingested later.
    :param interval_start: only versions of this interval (templated, with ``interval_end``);
        every interval when None. ``"{{ data_interval_start }}"`` waits for the run's interval.
    :param interval_end: end of that interval (templated).
    :param deferrable: wait in the triggerer (``DatasetVersionTrigger``) instead of a worker slot.
        Default: ``[operators] default_deferrable`` (False).
    """

    template_fields: Sequence[str] = (
        "dataset",
        "output_dir",
        "after_version",
        "after",
        "interval_start",
        "interval_end",
    )
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        dataset: str,
        output_dir: str | None = None,
        after_version: str | None = None,
        after: datetime | str | None = None,
        interval_start: datetime | str | None = None,
        interval_end: datetime | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (interval_start is None) != (interval_end is None):
            raise ValueError(f"{self.task_id}: give both interval_start and interval_end, or neither.")
        self.dataset = dataset
        self.output_dir = output_dir
        self.after_version = after_version
        self.after = after
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.deferrable = deferrable

    # -- what to look for ------------------------------------------------------------------

    def _root(self) -> str:
        from airflow_mlops.datasets import default_root

        return self.output_dir or default_root()

    def _interval(self) -> tuple[datetime, datetime] | None:
        from airflow_mlops._time import to_utc

        if self.interval_start is None or self.interval_end is None:
            return None
        return to_utc(self.interval_start), to_utc(self.interval_end)

    def _threshold(self) -> datetime | None:
        """The instant a version must be ingested after: the later of ``after`` and ``after_version``'s."""
        from airflow_mlops._time import to_utc
        from airflow_mlops.datasets import version_ingested_at

        candidates = []
        if self.after:
            candidates.append(to_utc(self.after))
        if self.after_version:
            candidates.append(version_ingested_at(self._root(), self.dataset, self.after_version))
        return max(candidates) if candidates else None

    # -- poke mode -------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        from airflow_mlops.datasets import find_new_snapshot

        snapshot = find_new_snapshot(self._root(), self.dataset, self._interval(), self._threshold())
        if snapshot is None:
            self.log.info("No new version of %r yet under %s", self.dataset, self._root())
            return PokeReturnValue(is_done=False)
        self.log.info("New version %s of %r: %s", snapshot["version"], self.dataset, snapshot["path"])
        return PokeReturnValue(is_done=True, xcom_value=snapshot)

    # -- deferrable mode -------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        from airflow_mlops.sensors._events import backstop_timeout

        self.defer(trigger=self._trigger(), method_name="execute_complete", timeout=backstop_timeout(self))

    def _trigger(self):
        from airflow_mlops.triggers.dataset import DatasetVersionTrigger

        interval = self._interval()
        threshold = self._threshold()
        timeout_at = datetime.now(UTC) + timedelta(seconds=self.timeout)
        return DatasetVersionTrigger(
            root=self._root(),
            dataset=self.dataset,
            interval_start=interval[0].isoformat() if interval else None,
            interval_end=interval[1].isoformat() if interval else None,
            after=threshold.isoformat() if threshold else None,
            poll_interval=self.poke_interval,
            timeout_at=timeout_at.isoformat(),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_mlops.sensors._events import raise_for_trigger_event

        if (event or {}).get("status") == "success":
            snapshot = event["snapshot"]
            self.log.info("New version %s of %r: %s", snapshot["version"], self.dataset, snapshot["path"])
            return snapshot
        raise_for_trigger_event(
            self, event, "Check that the ingesting DAG ran, or raise this sensor's timeout."
        )
