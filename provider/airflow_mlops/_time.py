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
    context: Any,
    start: datetime | str | None,
    end: datetime | str | None,
    task_id: str,
    names: tuple[str, str] = ("interval_start", "interval_end"),
) -> tuple[datetime, datetime]:
    """
    ``[start, end)`` from explicit values, else from the run's data interval.

    A run has no usable data interval when it was triggered with ``logical_date`` null (none at
    all) or is a manual run of a DAG with ``schedule=None`` or an Asset schedule (an empty one,
    from the logical date to itself): the error then says why and what to pass.
    """
    explicit = start is not None or end is not None
    start = start or context.get("data_interval_start")
    end = end or context.get("data_interval_end")
    fix = (
        f"pass {names[0]} and {names[1]} to the task (e.g. from Params: "
        f"{names[0]}='{{{{ params.start }}}}'), or give the DAG a time schedule such as '@daily', "
        "whose runs each cover an interval."
    )
    if start is None or end is None:
        raise ValueError(
            f"{task_id}: this run has no data interval (it was triggered with logical_date null), so "
            f"there is no time range to work on; {fix}"
        )
    start, end = to_utc(start), to_utc(end)
    if end <= start and not explicit:
        raise ValueError(
            f"{task_id}: this run's data interval is empty ({start.isoformat()} to itself): a manual "
            f"run of a DAG with schedule=None or an Asset schedule covers no time; {fix}"
        )
    if end <= start:
        raise ValueError(
            f"{task_id}: interval end {end.isoformat()} is not after its start {start.isoformat()}; "
            f"pass a {names[0]} before {names[1]}."
        )
    return start, end
