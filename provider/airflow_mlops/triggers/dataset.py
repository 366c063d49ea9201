"""Wait, in the triggerer, for a new version of a dataset snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class DatasetVersionTrigger(BaseTrigger):
    """
    Fire once when a version of ``dataset`` ingested after ``after`` is stored under ``root``.

    Side-effect free and safe to run twice: it only reads manifests. Its single event's
    payload is ``{"status": "success", "snapshot": <manifest>}``, ``{"status": "timeout",
    "message": ...}`` once ``timeout_at`` has passed, or ``{"status": "error", "message": ...}``.

    :param root: root folder of the datasets (``IngestOperator``'s ``output_dir``).
    :param dataset: name of the dataset.
    :param interval_start: only versions of the interval starting here (ISO-8601); any
        interval when None.
    :param interval_end: end of that interval (ISO-8601); given together with ``interval_start``.
    :param after: only versions whose ``ingested_at`` is strictly later (ISO-8601); any
        version when None.
    :param poll_interval: seconds between two looks at the manifests.
    :param timeout_at: ISO-8601 instant after which the trigger gives up (a fixed instant, so a
        trigger restarted by the triggerer does not wait longer); never when None.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        interval_start: str | None = None,
        interval_end: str | None = None,
        after: str | None = None,
        poll_interval: float = 60.0,
        timeout_at: str | None = None,
    ) -> None:
        super().__init__()
        if (interval_start is None) != (interval_end is None):
            raise ValueError("DatasetVersionTrigger: give both interval_start and interval_end, or neither.")
        self.root = root
        self.dataset = dataset
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.after = after
        self.poll_interval = poll_interval
        self.timeout_at = timeout_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "root": self.root,
                "dataset": self.dataset,
                "interval_start": self.interval_start,
                "interval_end": self.interval_end,
                "after": self.after,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
            },
        )

    def _find(self) -> dict[str, Any] | None:
        from airflow_mlops.datasets import find_new_snapshot

        interval = (self.interval_start, self.interval_end) if self.interval_start is not None else None
        return find_new_snapshot(self.root, self.dataset, interval, self.after)

    def _describe(self) -> str:
        interval = f" of [{self.interval_start}, {self.interval_end})" if self.interval_start else ""
        after = f" ingested after {self.after}" if self.after else ""
        return f"version of {self.dataset!r}{interval}{after} under {self.root}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        while True:
            try:
                # listing and reading small JSON files: cheap, but off the event loop all the same
                snapshot = await asyncio.to_thread(self._find)
            except Exception as error:  # a corrupt manifest, an unreadable folder: report, don't hang
                yield TriggerEvent(
                    {"status": "error", "message": f"Looking for a {self._describe()} failed: {error!r}"}
                )
                return
            if snapshot is not None:
                self.log.info("Found a %s: %s", self._describe(), snapshot["version"])
                yield TriggerEvent({"status": "success", "snapshot": snapshot})
                return
            now = datetime.now(UTC)
            if deadline is not None and now >= deadline:
                yield TriggerEvent(
                    {"status": "timeout", "message": f"No {self._describe()} by {self.timeout_at}."}
                )
                return
            wait = self.poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, (deadline - now).total_seconds()))
            self.log.debug("No %s yet; next look in %.1f s", self._describe(), wait)
            await asyncio.sleep(wait)
