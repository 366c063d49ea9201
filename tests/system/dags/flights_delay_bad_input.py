"""Test DAG: the flight-delay pipeline fed a month whose ``arr_delay`` column is broken.

Copied next to the example DAGs by the system test. A unit slipped into the delay values
("12.0 min"): validation must fail with a readable message and nothing may be registered.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG
from include.flights_pipeline import pick_months, train_register_deploy

BAD_MODEL_NAME = "flights_delay_bad_input"


def flights_with_broken_arr_delay(start, end):
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(start, end)
    df["arr_delay"] = df["arr_delay"].map(lambda minutes: f"{minutes} min")
    return df


with DAG(
    dag_id="flights_delay_bad_input",
    schedule=None,
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["test"],
) as dag:
    months = pick_months()
    train_register_deploy(
        months["start"],
        months["end"],
        model_name=BAD_MODEL_NAME,
        deployment_name="flights-delay-bad-input",
        flights_source=flights_with_broken_arr_delay,
    )
