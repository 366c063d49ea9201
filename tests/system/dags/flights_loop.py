"""Test DAGs of the closed loop: serve a model, watch its traffic, retrain on drift.

Copied next to the example DAGs by the system test. ``flights_loop_train`` trains on the
interval it is triggered for (January–March 2013) and deploys ``flights-loop``; the
``flights_loop_drift`` Asset watches that deployment's inference log (``DriftEventTrigger`` in
the triggerer) and ``flights_loop_retrain`` is scheduled on it: the same wiring as the example
``flights_delay_retrain``, on a deployment of its own.

The first model is trained on January–March flights whose delays were shuffled between flights
(same rows, same weather, labels that say nothing): it scores at chance, so the retrained model,
on real June–July labels, wins the gate for a known reason and the test can assert the switch.
The served features, and so the drift, are those of the real months.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG
from include.flights_pipeline import drift_asset, pick_months, train_register_deploy

MODEL = "flights_loop"
DEPLOYMENT = "flights-loop"


def flights_with_shuffled_delays(start, end):
    """The interval's flights with ``arr_delay`` shuffled between them (seed 0): labels at chance."""
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(start, end)
    df["arr_delay"] = df["arr_delay"].sample(frac=1.0, random_state=0).to_numpy()
    return df


#: the test sends its two kinds of traffic seconds apart: leftovers of the first are dropped
#: after 10 s instead of joining the second's first window
LOOP_DRIFT = drift_asset(DEPLOYMENT, name="flights_loop_drift", max_window_age_seconds=10)

with DAG(
    dag_id="flights_loop_train",
    schedule=None,
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["test"],
):
    months = pick_months()  # the interval the test triggers it with (January–March 2013)
    train_register_deploy(
        months["start"], months["end"], MODEL, DEPLOYMENT, flights_source=flights_with_shuffled_delays
    )

with DAG(
    dag_id="flights_loop_retrain",
    schedule=[LOOP_DRIFT],
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["test"],
):
    months = pick_months()  # the drift event's window, in whole months
    train_register_deploy(months["start"], months["end"], MODEL, DEPLOYMENT)
