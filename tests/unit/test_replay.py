"""The replay clock: every way a run can start maps onto a month of the data, or fails clearly."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow_mlops._time import resolve_interval
from airflow_mlops.replay import REPLAY, ReplayClock

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
CLOCK = ReplayClock("2013-01-01", "2014-01-01", name="nycflights13")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def month_of(interval) -> tuple[datetime, datetime]:
    return interval.start, interval.end


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # the scheduler's @monthly run for November 2026
        ({"data_interval_start": utc(2026, 11, 1), "data_interval_end": utc(2026, 12, 1)}, (2013, 11)),
        # the Trigger button on 5 December 2026: Airflow infers the interval [Nov 1, Dec 1)
        (
            {
                "data_interval_start": utc(2026, 11, 1),
                "data_interval_end": utc(2026, 12, 1),
                "logical_date": utc(2026, 12, 5, 14),
            },
            (2013, 11),
        ),
        # REST with logical_date null: no data interval, only the run's creation time
        ({"run_after": utc(2026, 12, 5, 14, 3)}, (2013, 11)),
        # a manual run of a schedule=None DAG: an empty interval at the logical date
        (
            {
                "data_interval_start": utc(2026, 3, 9),
                "data_interval_end": utc(2026, 3, 9),
                "logical_date": utc(2026, 3, 9),
            },
            (2013, 2),
        ),
        # January wraps to the previous December of the data
        ({"run_after": utc(2027, 1, 2)}, (2013, 12)),
        # an explicit interval inside the data is used as it is
        ({"data_interval_start": utc(2013, 6, 1), "data_interval_end": utc(2013, 7, 1)}, (2013, 6)),
        # the form's month wins over every date
        ({"month": "2013-05", "run_after": utc(2026, 12, 5)}, (2013, 5)),
        ({"month": REPLAY, "run_after": utc(2026, 8, 31)}, (2013, 7)),
    ],
)
def test_every_way_a_run_starts_maps_onto_one_month_of_the_data(kwargs, expected):
    picked = CLOCK.interval(**kwargs)
    year, month = expected
    assert month_of(picked) == (utc(year, month, 1), utc(year + (month == 12), month % 12 + 1, 1))
    assert picked.label == f"{year}-{month:02d}"
    assert picked.reason


def test_an_explicit_interval_of_several_months_is_kept_and_shifts_from_its_last_month():
    picked = CLOCK.interval(
        data_interval_start="2013-01-01T00:00:00Z", data_interval_end="2013-04-01T00:00:00Z"
    )
    assert month_of(picked) == (utc(2013, 1, 1), utc(2013, 4, 1))
    assert picked.label == "2013-01 … 2013-03"
    assert CLOCK.shift(picked, 1).label == "2013-04"


@pytest.mark.parametrize(
    ("month", "offset", "expected"), [("2013-11", 6, "2013-05"), ("2013-01", 6, "2013-07")]
)
def test_the_drift_check_month_wraps_into_the_data(month, offset, expected):
    assert CLOCK.shift(CLOCK.pick(month), offset).label == expected


def test_a_month_outside_the_data_names_the_months_to_pick():
    with pytest.raises(
        ValueError, match=r"'2014-01' is not a month of nycflights13: pick one of 2013-01 … 2013-12"
    ):
        CLOCK.interval(month="2014-01")


def test_a_run_without_any_date_asks_for_a_month():
    with pytest.raises(ValueError, match="pick a month"):
        CLOCK.interval()


def test_the_clock_refuses_data_bounds_that_are_not_months():
    with pytest.raises(ValueError, match="firsts of months"):
        ReplayClock("2013-01-15", "2014-01-01")


def test_the_month_param_lists_every_month_of_the_data_for_the_trigger_form():
    schema = CLOCK.month_param().dump()["schema"]
    assert schema["enum"] == [REPLAY, *(f"2013-{m:02d}" for m in range(1, 13))]
    assert schema["values_display"]["2013-07"] == "July 2013"
    assert CLOCK.month_param().resolve() == REPLAY


# --- the example DAGs' first task -------------------------------------------------------------


@pytest.fixture
def pick_months():
    sys.path.insert(0, str(DAGS_DIR))
    try:
        from include.flights_pipeline import pick_months
    finally:
        sys.path.remove(str(DAGS_DIR))
    return pick_months.function


def test_pick_months_of_a_run_triggered_with_logical_date_null(pick_months):
    months = pick_months(
        check_offset_months="6", params={"month": REPLAY}, dag_run=SimpleNamespace(run_after=utc(2026, 12, 5))
    )
    assert (months["start"], months["end"]) == ("2013-11-01T00:00:00+00:00", "2013-12-01T00:00:00+00:00")
    assert (months["check_start"], months["check_end"]) == (
        "2013-05-01T00:00:00+00:00",
        "2013-06-01T00:00:00+00:00",
    )


def test_pick_months_of_a_drift_event_takes_the_drifted_window_in_whole_months(pick_months):
    event = SimpleNamespace(
        extra={
            "payload": {"window": {"start": "2013-06-20T05:00:00+00:00", "end": "2013-07-02T00:00:00+00:00"}}
        }
    )
    months = pick_months(
        params={"month": REPLAY},
        triggering_asset_events={"flights_delay_drift": [event]},
        dag_run=SimpleNamespace(run_after=utc(2026, 12, 5)),
    )
    assert (months["start"], months["end"]) == ("2013-06-01T00:00:00+00:00", "2013-08-01T00:00:00+00:00")
    assert "drift event" in months["reason"]


# --- operators' interval defaults ----------------------------------------------------------------


def test_an_operator_in_a_run_without_a_data_interval_says_why_and_what_to_pass():
    with pytest.raises(ValueError, match=r"logical_date null.*pass interval_start and interval_end"):
        resolve_interval({}, None, None, "ingest")


def test_an_operator_in_a_manual_run_of_an_unscheduled_dag_says_why_and_what_to_pass():
    context = {"data_interval_start": utc(2026, 3, 9), "data_interval_end": utc(2026, 3, 9)}
    with pytest.raises(ValueError, match=r"schedule=None.*covers no time.*pass interval_start"):
        resolve_interval(context, None, None, "ingest")


def test_explicit_bounds_in_the_wrong_order_are_named():
    with pytest.raises(ValueError, match="is not after its start"):
        resolve_interval({}, "2013-02-01", "2013-01-01", "ingest")


def test_the_interval_error_names_the_arguments_of_the_operator_that_raises_it():
    with pytest.raises(ValueError, match=r"pass start and end to the task .*start='\{\{ params.start \}\}'"):
        resolve_interval({}, None, None, "feast_materialize", names=("start", "end"))


def test_a_drift_check_event_whose_window_ends_on_the_first_of_a_month_retrains_on_its_month_only(
    pick_months,
):
    event = SimpleNamespace(
        extra={"window": {"start": "2013-07-01T00:00:00+00:00", "end": "2013-08-01T00:00:00+00:00"}}
    )
    months = pick_months(params={}, triggering_asset_events={"drift": [event]})
    assert (months["start"], months["end"]) == ("2013-07-01T00:00:00+00:00", "2013-08-01T00:00:00+00:00")
