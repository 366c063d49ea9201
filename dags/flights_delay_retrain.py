"""Retrain the flight-delay model when drift is announced: no person in the loop.

Scheduled on the ``flights_delay_drift`` Asset. The event's extra carries the drifted
window; the model is retrained on it, gated against the current champion on that window's
holdout (overall and per airport and airline), and deployed only if it wins: otherwise the
gate skips ``deploy`` and the champion keeps serving.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG
from include.flights_pipeline import DRIFT, train_register_deploy

# the window announced by the triggering drift event
WINDOW_START = "{{ (triggering_asset_events.values() | first | last).extra['window']['start'] }}"
WINDOW_END = "{{ (triggering_asset_events.values() | first | last).extra['window']['end'] }}"

with DAG(
    dag_id="flights_delay_retrain",
    description="Retrain, gate and redeploy the flight-delay model on a drifted window",
    schedule=[DRIFT],
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "example"],
) as dag:
    train_register_deploy(WINDOW_START, WINDOW_END)
