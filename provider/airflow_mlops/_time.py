"""Parsing of templated timestamps (rendered templates arrive as strings)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def to_utc(value: datetime | str) -> datetime:
    """A timezone-aware UTC datetime from a datetime or an ISO-8601 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def resolve_interval(
    context: Any, start: datetime | str | None, end: datetime | str | None, task_id: str
) -> tuple[datetime, datetime]:
    """``[start, end)`` from explicit values, else from the run's data interval."""
    start = start or context["data_interval_start"]
    end = end or context["data_interval_end"]
    if start is None or end is None:
        raise ValueError(f"{task_id}: the run has no data interval; pass the interval's start and end.")
    start, end = to_utc(start), to_utc(end)
    if end <= start:
        raise ValueError(f"{task_id}: interval end {end} is not after its start {start}.")
    return start, end
