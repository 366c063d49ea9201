"""Wait until a Feast feature view has been materialized recently enough to serve."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseSensorOperator

from airflow_mlops._time import to_utc

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.feast import FeastHook

#: ``relative_to`` values that are not a time
NOW, DATA_INTERVAL_END = "now", "data_interval_end"


class FeastFeatureFreshnessSensor(BaseSensorOperator):
    """
    Succeed once ``feature_view``'s most recent materialization end (the registry's
    ``materialization_intervals``) lies within ``max_staleness`` of the reference time.

    Use it before serving or training from the online store: "the weather features are at
    most an hour behind this run's data interval".

    :param feature_view: the Feast feature view to check (templated).
    :param max_staleness: largest accepted lag between the reference time and the view's
        last materialization end.
    :param relative_to: ``"now"`` (default), ``"data_interval_end"`` (the run's), or a time /
        ISO string (templated).
    :param feast_conn_id: the ``feast`` connection (registry and project).
    :param repo_path: feature definitions folder, overriding the connection's ``repo_path``.
    :param deferrable: wait in the triggerer (:class:`~airflow_mlops.triggers.feast.FeastFreshnessTrigger`)
        instead of holding a worker slot; ``poke_interval`` and ``timeout`` still apply.
        Default: ``[operators] default_deferrable`` (False).
    """

    template_fields: Sequence[str] = ("feature_view", "relative_to", "repo_path")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        feature_view: str,
        max_staleness: timedelta,
        relative_to: datetime | str = NOW,
        feast_conn_id: str = "feast_default",
        repo_path: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_staleness < timedelta(0):
            raise ValueError(f"{kwargs.get('task_id')}: max_staleness must not be negative.")
        self.feature_view = feature_view
        self.max_staleness = max_staleness
        self.relative_to = relative_to
        self.feast_conn_id = feast_conn_id
        self.repo_path = repo_path
        self.deferrable = deferrable

    @property
    def hook(self) -> FeastHook:
        from airflow_mlops.hooks.feast import FeastHook

        return FeastHook(feast_conn_id=self.feast_conn_id, repo_path=self.repo_path)

    def _reference(self, context: Context) -> datetime | None:
        """The fixed reference time, or None for "now" (re-read at every check)."""
        if self.relative_to in (None, "", NOW):
            return None
        if self.relative_to == DATA_INTERVAL_END:
            end = context.get("data_interval_end")
            if end is None:
                raise ValueError(
                    f"{self.task_id}: relative_to='data_interval_end' but the run has no data interval; "
                    "use 'now' or pass a time."
                )
            return to_utc(end)
        return to_utc(self.relative_to)

    def poke(self, context: Context) -> bool:
        from airflow_mlops.triggers.feast import is_fresh

        last_end = self.hook.last_materialized_end(self.feature_view)
        reference = self._reference(context) or datetime.now(UTC)
        fresh = is_fresh(last_end, reference, self.max_staleness)
        self.log.info(
            "%s last materialized up to %s; reference %s, max staleness %s: %s",
            self.feature_view,
            last_end,
            reference,
            self.max_staleness,
            "fresh" if fresh else "stale",
        )
        return fresh

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):  # no need to defer when it is already fresh
            return None
        from airflow_mlops.triggers.feast import FeastFreshnessTrigger

        hook = self.hook
        reference = self._reference(context)
        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout)
        self.defer(
            trigger=FeastFreshnessTrigger(
                feature_view=self.feature_view,
                project=hook.project,
                registry_path=hook.registry_path,
                max_staleness_s=self.max_staleness.total_seconds(),
                reference=reference.isoformat() if reference else None,
                poll_interval=self.poke_interval,
                deadline=deadline.isoformat(),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """Resume after the trigger: succeed on ``success``, fail on ``timeout`` or ``error``."""
        from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

        event = event or {}
        status = event.get("status")
        if status == "success":
            self.log.info("%s (last end %s)", event.get("message"), event.get("last_end"))
            return
        if status == "timeout":
            raise AirflowSensorTimeout(
                f"{self.task_id}: {event.get('message')}; last materialization end {event.get('last_end')}. "
                "Run FeastMaterializeOperator for the view, or raise max_staleness / timeout."
            )
        raise AirflowException(f"{self.task_id}: freshness check failed: {event.get('message', event)}")
