"""Retrain the flight-delay model when served traffic drifts: no person in the loop.

Scheduled on the ``flights_delay_drift`` Asset, whose watcher (``DriftEventTrigger``, in the
triggerer) tests every 2,000 requests the deployment serves against the training data. The
event carries the drifted window; the model is retrained on the whole months it spans, gated
against the current champion on their holdout (overall and per airport and airline), and
deployed only if it wins: otherwise the gate skips ``deploy`` and the champion keeps serving.

Triggered by hand (the Trigger button, or Retrain on the MLOps page) it retrains on the
**Month of data** picked in the form, by default the month the replay clock gives the run's
date (see ``flights_delay_pipeline``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG
from include.flights_pipeline import CLOCK, DEFAULT_ARGS, DRIFT, pick_months, train_register_deploy

with DAG(
    dag_id="flights_delay_retrain",
    description="Retrain, gate and redeploy the flight-delay model on a drifted window",
    doc_md=__doc__,
    schedule=[DRIFT],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # retries sized to an outage budget of ~25 minutes (include/flights_pipeline.py, docs/reliability.md)
    default_args=DEFAULT_ARGS,
    params={"month": CLOCK.month_param()},
    tags=["mlops", "example"],
) as dag:
    # it reads the drift event (its window): the drift Asset is its inlet, in lineage too
    months = pick_months.override(inlets=[DRIFT])()
    train_register_deploy(months["start"], months["end"])
