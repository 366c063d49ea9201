"""Wait, in the triggerer, until a Feast feature view has been materialized recently enough."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def staleness(last_end: datetime | None, reference: datetime) -> timedelta | None:
    """How far the view's last materialization end lies behind ``reference`` (None: never materialized)."""
    return None if last_end is None else reference - last_end


def is_fresh(last_end: datetime | None, reference: datetime, max_staleness: timedelta) -> bool:
    lag = staleness(last_end, reference)
    return lag is not None and lag <= max_staleness


class FeastFreshnessTrigger(BaseTrigger):
    """
    Poll a Feast registry until ``feature_view``'s most recent materialization end is within
    ``max_staleness`` of the reference time, then fire one event.

    The registry is read directly from its file in a worker thread (``asyncio.to_thread``; Feast
    is synchronous) with no cache, so no connection or secret is needed here. Feast rewrites the
    file in place (truncate, then write) when a materialization finishes, so a read that fails
    is retried up to ``READ_ATTEMPTS`` times in a row before the trigger reports an error. The
    trigger only reads: running it twice is harmless. Event payload: ``status`` (``success``, ``timeout`` or
    ``error``), ``feature_view``, ``last_end`` (ISO or None), ``reference``, ``staleness_s``,
    ``message``.

    :param feature_view: the view to watch.
    :param project: its Feast project.
    :param registry_path: the registry file (``registry.db``) of the ``feast`` connection.
    :param max_staleness_s: largest accepted ``reference - last end``, in seconds.
    :param reference: ISO time to measure staleness against; None: the current time at each poll.
    :param poll_interval: seconds between registry reads.
    :param deadline: ISO time after which a ``timeout`` event fires; None: wait forever. An
        absolute time, so a restarted trigger does not wait longer.
    """

    #: consecutive failed registry reads tolerated (a concurrent rewrite) before an error event
    READ_ATTEMPTS = 3
    #: seconds before re-reading after a failed read
    RETRY_DELAY = 1.0

    def __init__(
        self,
        feature_view: str,
        project: str,
        registry_path: str,
        max_staleness_s: float,
        reference: str | None = None,
        poll_interval: float = 60.0,
        deadline: str | None = None,
    ) -> None:
        super().__init__()
        self.feature_view = feature_view
        self.project = project
        self.registry_path = registry_path
        self.max_staleness_s = max_staleness_s
        self.reference = reference
        self.poll_interval = poll_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and the ``__init__`` arguments, to rebuild this trigger in the triggerer."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "feature_view": self.feature_view,
                "project": self.project,
                "registry_path": self.registry_path,
                "max_staleness_s": self.max_staleness_s,
                "reference": self.reference,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    def _reference(self) -> datetime:
        return datetime.fromisoformat(self.reference) if self.reference else datetime.now(UTC)

    def _event(self, status: str, last_end: datetime | None, message: str) -> TriggerEvent:
        reference = self._reference()
        lag = staleness(last_end, reference)
        return TriggerEvent(
            {
                "status": status,
                "feature_view": self.feature_view,
                "last_end": last_end.isoformat() if last_end else None,
                "reference": reference.isoformat(),
                "staleness_s": lag.total_seconds() if lag is not None else None,
                "message": message,
            }
        )

    async def _last_end(self) -> datetime | None:
        from airflow_mlops.hooks.feast import read_last_materialized_end

        return await asyncio.to_thread(
            read_last_materialized_end, self.registry_path, self.project, self.feature_view
        )

    async def _read_with_retries(self) -> datetime | None:
        for attempt in range(1, self.READ_ATTEMPTS + 1):
            try:
                return await self._last_end()
            except Exception as err:
                if attempt == self.READ_ATTEMPTS:
                    raise
                self.log.warning("Reading the Feast registry failed (%s); retrying", err)
                await asyncio.sleep(min(self.poll_interval, self.RETRY_DELAY))
        raise AssertionError("unreachable")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield exactly one event: success, timeout or error."""
        max_staleness = timedelta(seconds=self.max_staleness_s)
        deadline = datetime.fromisoformat(self.deadline) if self.deadline else None
        try:
            while True:
                last_end = await self._read_with_retries()
                if is_fresh(last_end, self._reference(), max_staleness):
                    yield self._event("success", last_end, f"{self.feature_view} is fresh")
                    return
                if deadline is not None and datetime.now(UTC) >= deadline:
                    yield self._event(
                        "timeout", last_end, f"{self.feature_view} was not fresh by {self.deadline}"
                    )
                    return
                self.log.info(
                    "%s last materialized up to %s; not within %s yet, next check in %s s",
                    self.feature_view,
                    last_end,
                    max_staleness,
                    self.poll_interval,
                )
                await asyncio.sleep(self.poll_interval)
        except Exception as err:  # one error event: the task reports it, the trigger stops
            yield self._event("error", None, f"{type(err).__name__}: {err}")
