"""``[mlops] data_dir`` as an object store: an S3 bucket on moto's S3 API server, reached through an
Airflow ``aws`` connection (``[mlops] data_conn_id``).

moto (PyPI ``moto[server]``) is an in-memory S3 API server, not AWS or MinIO: what these tests
prove is that what tasks hand each other goes through the S3 API and the connection, and that
nothing of it stays on the worker's disk. The bucket is listed with boto3, never with the code
under test.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))

from s3_server import S3Server  # noqa: E402

RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
JOB = "object-store-dag-test"
POSTGRES_URL = os.environ.get("MLOPS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONN_ID = "mlops_store"
JAN = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 2, 1, tzinfo=UTC))
FEB = (datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))

_server: S3Server | None = None


def s3_server(root: Path) -> S3Server:
    """One moto server for the module (and its background job), started at first use."""
    global _server
    if _server is None:
        _server = S3Server(root / "moto.log").start()
    return _server


def store_env(server: S3Server, bucket: str, local: Path) -> dict[str, str]:
    """The configuration that points the provider at ``s3://<bucket>/mlops``."""
    return {
        f"AIRFLOW_CONN_{CONN_ID.upper()}": server.connection_uri(),
        "AIRFLOW__MLOPS__DATA_DIR": f"s3://{bucket}/mlops",
        "AIRFLOW__MLOPS__DATA_CONN_ID": CONN_ID,
        "AIRFLOW__MLOPS__LOCAL_DATA_DIR": str(local),
    }


def feast_registry_database() -> str:
    """A PostgreSQL database of its own for the job's Feast SQL registry, dropped when pytest exits."""
    import psycopg2
    from psycopg2 import sql

    name = f"mlops_test_feast_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()

    def drop() -> None:
        conn = psycopg2.connect(POSTGRES_URL)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()

    atexit.register(drop)
    base = POSTGRES_URL.rpartition("/")[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"{base}/{name}"


def start_jobs(jobs) -> None:
    if not (RUNTIMES / "drift" / "bin" / "python").exists():
        return
    work = jobs.workdir(JOB)
    server = s3_server(work)
    bucket = server.create_bucket("pipeline")
    # what several hosts share: a SQL registry (the file registry is one host's)
    feast = {"repo_path": str(REPO / "dags" / "feature_repo"), "registry_path": feast_registry_database()}
    jobs.submit(
        JOB,
        [jobs.python, jobs.script("object_store_dag_test"), work, work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES),
            AIRFLOW_CONN_FEAST_DEFAULT=json.dumps({"conn_type": "feast", "extra": feast}),
            PYTHONUNBUFFERED="1",
            **store_env(server, bucket, work / "local"),
        ),
        timeout=900,
    )


@pytest.fixture
def store(tmp_path, monkeypatch) -> tuple[S3Server, str, Path]:
    """A bucket of its own, the provider pointed at it in this process; (server, bucket, local dir)."""
    server = s3_server(tmp_path)
    bucket = server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")
    local = tmp_path / "local"
    for key, value in store_env(server, bucket, local).items():
        monkeypatch.setenv(key, value)
    return server, bucket, local


@pytest.fixture(scope="module")
def january() -> pd.DataFrame:
    from airflow_mlops.example_data.nycflights13 import load_flights

    return load_flights(*JAN)


def _object(server: S3Server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


# --- the data root and snapshots ---------------------------------------------------------------


def test_data_root_is_the_bucket_and_this_hosts_folder_is_local_data_dir(store):
    from airflow_mlops import settings, storage

    _, bucket, local = store
    assert storage.location(storage.data_root()) == f"s3://{bucket}/mlops"
    assert settings.data_dir() == local


def test_a_file_url_is_a_local_folder(tmp_path, monkeypatch):
    from airflow_mlops import settings, storage

    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", f"file://{tmp_path}/mlops")
    assert storage.data_root() == settings.data_dir() == tmp_path / "mlops"
    assert storage.as_path(f"file://{tmp_path}/x.parquet") == tmp_path / "x.parquet"
    assert not storage.is_remote(storage.data_root())


def test_a_snapshot_is_written_to_the_bucket_and_read_back_whole(store, january):
    from airflow_mlops import storage
    from airflow_mlops.datasets import read_table, write_snapshot

    server, bucket, local = store
    snapshot, written = write_snapshot(january, storage.data_root() / "datasets", "flights", *JAN)
    key = "20130101T000000_20130201T000000"
    assert written
    assert snapshot.path == f"s3://{bucket}/mlops/datasets/flights/data/{key}/{snapshot.version}.parquet"
    assert server.keys(bucket) == [
        f"mlops/datasets/flights/current/{key}.parquet",
        f"mlops/datasets/flights/data/{key}/{snapshot.version}.parquet",
        f"mlops/datasets/flights/manifests/{key}/CURRENT",
        f"mlops/datasets/flights/manifests/{key}/{snapshot.version}.json",
    ]
    expected = pd.read_parquet(io.BytesIO(january.to_parquet(index=False)))  # what Parquet gives back
    stored = pd.read_parquet(io.BytesIO(_object(server, bucket, snapshot.path.split(f"{bucket}/", 1)[1])))
    pd.testing.assert_frame_equal(stored, expected)
    pd.testing.assert_frame_equal(read_table(snapshot.path), expected)
    manifest = json.loads(
        _object(server, bucket, f"mlops/datasets/flights/manifests/{key}/{snapshot.version}.json")
    )
    assert (manifest["rows"], manifest["path"]) == (len(january), snapshot.path)
    assert not local.exists()  # nothing went to this host's disk


def test_rewriting_the_same_rows_writes_nothing_and_new_rows_become_current(store, january):
    from airflow_mlops import storage
    from airflow_mlops.datasets import latest_snapshot, list_snapshots, write_snapshot

    server, bucket, _ = store
    root = storage.location(storage.data_root() / "datasets")
    first, _ = write_snapshot(january, root, "flights", *JAN)
    keys = server.keys(bucket)
    again, written = write_snapshot(january, root, "flights", *JAN)
    assert (written, again.version, server.keys(bucket)) == (False, first.version, keys)

    changed = january.head(1000)
    second, written = write_snapshot(changed, root, "flights", *JAN)
    assert written and second.version != first.version
    current = _object(
        server, bucket, "mlops/datasets/flights/current/20130101T000000_20130201T000000.parquet"
    )
    assert len(pd.read_parquet(io.BytesIO(current))) == 1000
    assert latest_snapshot(root, "flights")["version"] == second.version
    assert [m["version"] for m in list_snapshots(root, "flights")] == [first.version, second.version]


def test_a_later_interval_is_the_latest_snapshot(store, january):
    from airflow_mlops import storage
    from airflow_mlops.datasets import find_new_snapshot, latest_snapshot, write_snapshot

    root = storage.data_root() / "datasets"
    write_snapshot(january, root, "flights", *JAN)
    february, _ = write_snapshot(january.head(500), root, "flights", *FEB)
    assert latest_snapshot(root, "flights")["path"] == february.path
    assert latest_snapshot(root, "flights", JAN)["rows"] == len(january)
    assert find_new_snapshot(root, "flights", JAN, after=datetime.now(UTC)) is None


def test_a_missing_bucket_is_an_error_naming_the_location_and_nothing_is_written(store, january, monkeypatch):
    from airflow_mlops import storage
    from airflow_mlops.datasets import DataWriteError, write_snapshot

    server, bucket, _ = store
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", "s3://no-such-bucket-here/mlops")
    missing = r"Cannot write s3://no-such-bucket-here/mlops/datasets/flights/.*bucket exists.*'mlops_store'"
    with pytest.raises(DataWriteError, match=missing):
        write_snapshot(january, storage.data_root() / "datasets", "flights", *JAN)
    assert server.keys(bucket) == []


# --- local copies for work that reads files ----------------------------------------------------


def test_fetch_all_downloads_each_url_into_a_folder_of_its_key(store, tmp_path):
    from airflow_mlops import storage
    from airflow_mlops.datasets import write_table

    root = storage.data_root()
    frames = {"train": pd.DataFrame({"x": [1, 2, 3]}), "holdout": pd.DataFrame({"x": [4]})}
    # the same file name for both: a folder per key keeps them apart
    inputs = {name: write_table(df, root / name / "part.parquet") for name, df in frames.items()}
    inputs["epochs"] = 3
    inputs["local"] = str(tmp_path / "kept-as-is.parquet")
    staged = storage.fetch_all(inputs, tmp_path / "work")
    assert staged["epochs"] == 3 and staged["local"] == inputs["local"]
    for name, df in frames.items():
        assert staged[name] == str(tmp_path / "work" / name / "part.parquet")
        pd.testing.assert_frame_equal(pd.read_parquet(staged[name]), df)
    assert not list((tmp_path / "work").rglob(".*.partial"))


def test_local_copy_of_a_folder_is_removed_after_the_block(store):
    from airflow_mlops import storage
    from airflow_mlops.datasets import write_table

    folder = storage.data_root() / "site"
    for name in ("a", "b"):
        write_table(pd.DataFrame({"x": [1]}), folder / name / "f.parquet")
    with storage.local_copy(storage.location(folder)) as local:
        found = sorted(str(p.relative_to(local)) for p in local.rglob("*.parquet"))
        assert found == ["a/f.parquet", "b/f.parquet"]
    assert not local.exists()


def test_fetching_what_is_not_there_names_the_location_and_the_connection(store, tmp_path):
    from airflow_mlops import storage

    _, bucket, _ = store
    with pytest.raises(
        FileNotFoundError, match=rf"s3://{bucket}/mlops/gone.parquet.*data_conn_id='{CONN_ID}'"
    ):
        storage.fetch(f"s3://{bucket}/mlops/gone.parquet", tmp_path)


def test_the_drift_watcher_downloads_a_reference_once(store, tmp_path):
    from airflow_mlops import storage
    from airflow_mlops.datasets import write_table
    from airflow_mlops.triggers.drift import DriftEventTrigger, _Untestable

    server, bucket, local = store
    reference = write_table(pd.DataFrame({"temp": [1.0, 2.0]}), storage.data_root() / "ref" / "train.parquet")
    watcher = DriftEventTrigger(deployment_name="d", numeric_features=["temp"])
    first = watcher._local_reference(reference)
    assert Path(first).is_relative_to(local) and pd.read_parquet(first)["temp"].tolist() == [1.0, 2.0]
    server.client().delete_object(Bucket=bucket, Key="mlops/ref/train.parquet")
    assert watcher._local_reference(reference) == first  # the cached copy, no second download
    with pytest.raises(_Untestable, match=r"not in the object store"):
        watcher._local_reference(f"s3://{bucket}/mlops/ref/other.parquet")


# --- a deployment published to the bucket, watched from another host -----------------------------


def _drift_helpers():
    """The inference-log helpers of tests/unit/triggers/test_drift_trigger.py."""
    sys.path.insert(0, str(REPO / "tests" / "unit" / "triggers"))
    import test_drift_trigger

    return test_drift_trigger


def _serving_host(store, tmp_path, monkeypatch, flights) -> Path:
    """A deployment "d" serving version 1 on the serving host (its own local data dir), with its
    training data in the bucket; its inference log folder."""
    from airflow_mlops import storage
    from airflow_mlops.datasets import write_table
    from airflow_mlops.hooks.seldon import SeldonHook

    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(tmp_path / "serving-host"))
    reference = write_table(flights["reference"], storage.data_root() / "reference" / "train.parquet")
    _drift_helpers().deploy("d", reference)
    return SeldonHook.inference_log_dir("d")


def test_the_publisher_uploads_the_routing_and_each_log_file_once_in_order(store, tmp_path, monkeypatch):
    from airflow_mlops.serving.publish import Publisher, publish_environ

    server, bucket, _ = store
    helpers = _drift_helpers()
    flights = {"reference": pd.DataFrame({"x": [1.0]})}
    log_dir = _serving_host(store, tmp_path, monkeypatch, flights)
    rows = helpers.flight_samples()["january"]
    first = helpers.log_requests(log_dir, rows, 100)
    env = publish_environ("d")
    assert env["MLOPS_PUBLISH_TO"] == f"s3://{bucket}/mlops/deployments/d"
    assert env["AIRFLOW__MLOPS__DATA_CONN_ID"] == CONN_ID and f"AIRFLOW_CONN_{CONN_ID.upper()}" in env
    # settle=0: the files of this test are complete when written (the settling: test_inference_log)
    publisher = Publisher(log_dir.parent, env["MLOPS_PUBLISH_TO"], settle=0)
    publisher.publish()
    prefix = "mlops/deployments/d/"
    key = f"{prefix}inference_log/{first.parent.name}/{first.name}"
    assert server.keys(bucket, prefix) == sorted([f"{prefix}current.json", key])
    assert _object(server, bucket, key) == first.read_bytes()
    routing = json.loads(_object(server, bucket, f"{prefix}current.json"))
    assert routing["predictors"][0]["version"] == "1" and routing["served_on"] == os.uname().nodename

    # a file published is not published again: the cursor is past it (gone from the bucket, it stays gone)
    server.client().delete_object(Bucket=bucket, Key=key)
    second = helpers.log_requests(log_dir, rows, 100)
    publisher.publish()
    assert server.keys(bucket, f"{prefix}inference_log/") == [
        f"{prefix}inference_log/{second.parent.name}/{second.name}"
    ]

    # the MLOps page on another host (nothing of the deployment on its disk) lists it from the bucket
    from airflow_mlops import settings
    from airflow_mlops.plugins import sources

    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(tmp_path / "api-server-host"))
    (listed,) = sources.deployments(settings.data_dir(), health=True)
    assert (listed["name"], listed["model_name"], listed["traffic"][0]["version"]) == (
        "d",
        "flights_delay",
        "1",
    )
    assert listed["served_on"] == os.uname().nodename and listed["processes"] == []
    assert listed["health"] == "unhealthy"  # judged by its endpoint alone: nothing answers there


def _wait_for(what: str, check, timeout: float = 180):
    import time

    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)
    return value


def _publishers(supervisor_pid: int) -> list[int]:
    """The publisher processes the supervisor ``supervisor_pid`` started (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == supervisor_pid and b"airflow_mlops.serving.publish" in argv:
            found.append(int(stat.parent.name))
    return found


def test_the_deployments_supervisor_keeps_its_publisher_running(store, tmp_path, monkeypatch):
    import signal
    import subprocess

    from airflow_mlops.serving import supervisor
    from airflow_mlops.serving.publish import publish_environ
    from airflow_mlops.serving.state import DeploymentStore, process_record, stop_group

    server, bucket, _ = store
    helpers = _drift_helpers()
    log_dir = _serving_host(store, tmp_path, monkeypatch, {"reference": pd.DataFrame({"x": [1.0]})})
    deployment = DeploymentStore(log_dir.parent)
    rows = helpers.flight_samples()["january"]
    prefix = "mlops/deployments/d/inference_log/"

    def published(path: Path) -> bool:
        return f"{prefix}{path.parent.name}/{path.name}" in server.keys(bucket, prefix)

    # as SeldonHook.ensure_supervisor starts it: the publisher's settings in its environment only
    with open(tmp_path / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            supervisor.command(deployment.dir),
            env={**os.environ, **publish_environ("d")},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deployment.write_supervisor(process_record(proc.pid))
    try:
        first = helpers.log_requests(log_dir, rows, 100)
        _wait_for("the first log file in the bucket", lambda: published(first))
        (publisher,) = _publishers(proc.pid)
        os.kill(publisher, signal.SIGKILL)
        restarted = _wait_for("a new publisher", lambda: [p for p in _publishers(proc.pid) if p != publisher])
        second = helpers.log_requests(log_dir, rows.iloc[100:], 100)
        _wait_for("the second log file in the bucket", lambda: published(second))
        assert len(server.keys(bucket, prefix)) == 2 and _publishers(proc.pid) == restarted
    finally:
        deployment.write_supervisor(None)
        stop_group(proc.pid, process_record(proc.pid)["pid_start"])
        proc.wait(30)
    said = (tmp_path / "supervisor.log").read_text()
    assert f"the publisher (pid {publisher}) died: starting a new one" in said, said


def test_a_watcher_on_another_host_reads_the_published_log_and_fires_on_drift(store, tmp_path, monkeypatch):
    import asyncio
    import shutil

    from airflow_mlops.drift_worker import DriftWorker
    from airflow_mlops.serving.publish import Publisher

    if not (RUNTIMES / "drift" / "bin" / "python").exists():
        pytest.skip("the drift runtime is not built")
    monkeypatch.setenv("AIRFLOW__MLOPS__RUNTIMES_DIR", str(RUNTIMES))
    server, bucket, _ = store
    helpers = _drift_helpers()
    flights = helpers.flight_samples()
    log_dir = _serving_host(store, tmp_path, monkeypatch, flights)
    # a window across two files; log_requests reuses request ids, so a few rows of the second
    # (same hour's weather, same id) repeat rows of the first and count once: 100 spare rows
    half = helpers.WINDOW // 2
    first = helpers.log_requests(log_dir, flights["july"], half)
    second = helpers.log_requests(log_dir, flights["july"].iloc[half:], half + 100)
    Publisher(log_dir.parent, f"s3://{bucket}/mlops/deployments/d", settle=0).publish()
    # the triggerer's host: a data dir of its own, and the serving host's folder gone
    shutil.rmtree(log_dir.parent)
    watcher_host = tmp_path / "triggerer-host"
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(watcher_host))
    try:
        events = asyncio.run(helpers.run_until(helpers.trigger(), lambda found: found))
    finally:
        DriftWorker(watcher_host).stop()
    (event,) = events
    assert event["is_drift"] is True and event["model_version"] == "1" and event["rows"] == helpers.WINDOW
    assert event["window"]["start"].startswith("2013-07") and "temp" in event["drifted_features"]
    assert Path(event["report"]).is_relative_to(watcher_host / "drift" / "watchers" / "d")
    # it published the window's records; the MLOps page on a third host (the api-server's, with an
    # empty folder) lists the window, and serves its report and plot, from the bucket
    window = f"mlops/drift/watchers/d/{event['window_id']}/"
    assert server.keys(bucket, window) == [
        window + name for name in ("pvalues.png", "report.json", "window.json")
    ]
    assert _object(server, bucket, window + "report.json") == Path(event["report"]).read_bytes()
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(tmp_path / "api-server-host"))
    from airflow_mlops import storage
    from airflow_mlops.plugins import drift_report, sources

    (point,) = [p for p in sources.watcher_windows(storage.data_root()) if p.get("window_id")]
    assert (point["window_id"], point["is_drift"]) == (event["window_id"], True)
    assert point["report"] == f"s3://{bucket}/{window}report.json"
    authorized = []
    monkeypatch.setattr(drift_report, "authorize_deployment", lambda user, name: authorized.append(name))
    page = drift_report.drift_window("d", event["window_id"], user=object()).body.decode()
    assert 'class="verdict drift"' in page and "pvalues.png" in page
    plot = drift_report.drift_window_plot("d", event["window_id"], user=object())
    assert plot.body == _object(server, bucket, window + "pvalues.png")
    assert authorized == ["d", "d"]
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(watcher_host))
    # the copy of a file the cursor has passed is removed; the second is not used up (the window
    # ended inside it) and stays, beside the file published since
    third = helpers.log_requests(log_dir, flights["july"].iloc[helpers.WINDOW :], 10)
    Publisher(log_dir.parent, f"s3://{bucket}/mlops/deployments/d", settle=0).publish()
    folder = watcher_host / "drift" / "watchers" / "d"
    helpers.trigger()._copy_published_log(json.loads((folder / "cursor.json").read_text()))
    assert json.loads((folder / "cursor.json").read_text())["after"].endswith(first.name)
    copies = sorted(p.name for p in (folder / "inference_log").rglob("*.parquet"))
    assert copies == [second.name, third.name]


def test_a_watcher_of_a_deployment_nobody_published_names_the_location(store, tmp_path, monkeypatch):
    import asyncio

    from airflow_mlops.triggers.drift import DriftEventTrigger

    _, bucket, _ = store
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(tmp_path / "triggerer-host"))
    watcher = DriftEventTrigger(deployment_name="nobody", numeric_features=["temp"], poll_interval=0.1)
    helpers = _drift_helpers()
    assert asyncio.run(helpers.events_within(watcher, 3)) == []
    status = json.loads(
        (tmp_path / "triggerer-host" / "drift" / "watchers" / "nobody" / "status.json").read_text()
    )
    assert f"s3://{bucket}/mlops/deployments/nobody/current.json does not exist" in status["error"]


def test_a_deployment_sensor_on_another_host_reads_the_published_routing(store, tmp_path, monkeypatch):
    """The rollback DAG's ``SeldonDeploymentSensor`` waits in the triggerer, which may run on another
    host than the deployment: it reads the routing the serving host published, and judges the
    endpoint alone (the recorded pids are the serving host's, not checked from here)."""
    import subprocess

    sys.path.insert(0, str(REPO / "tests" / "unit" / "triggers"))
    from airflow_mlops.serving.publish import Publisher, publish_environ
    from test_seldon_trigger import PingServer, _events, _trigger, _write_current

    _, bucket, _ = store
    serving_host = tmp_path / "serving-host"
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(serving_host))
    server = subprocess.Popen(["sleep", "300"])
    with PingServer(503, 200) as ping:
        current = _write_current(serving_host, ping.url, server, version="4")
        Publisher(current.parent, publish_environ("flights")["MLOPS_PUBLISH_TO"]).publish()
        server.kill()
        server.wait()  # here (on the "serving host") its pid is now dead: the sensor must not look
        monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(tmp_path / "triggerer-host"))
        (event,) = _events(_trigger(mode="local", namespace=None, expected_version="4"))
    payload = event.payload
    assert (payload["status"], payload["state"], payload["endpoint"]) == ("success", "Available", ping.url)
    assert f"version 4; served on {os.uname().nodename}" in payload["message"]
    assert ping.pings == 2

    # a name nobody published fails after the grace, naming where it was looked for
    (event,) = _events(_trigger(mode="local", namespace=None, deployment_name="nobody", missing_grace=0))
    assert event.payload["status"] == "failed"
    assert f"s3://{bucket}/mlops/deployments/nobody/current.json" in event.payload["message"]


# --- a DAG run: every task hands on through the bucket -------------------------------------------


@pytest.fixture(scope="module")
def run(jobs) -> dict:
    if not (RUNTIMES / "drift" / "bin" / "python").exists():
        pytest.skip("the drift runtime is not built")
    start_jobs(jobs)
    jobs.result(JOB).check()
    return json.loads((jobs.workdir(JOB) / "result.json").read_text())


def test_the_dag_run_succeeds_with_every_task(run):
    assert run["import_errors"] == {}
    assert run["state"] == "success", run["task_states"]
    assert set(run["task_states"].values()) == {"success"}


def test_snapshots_and_tables_are_in_the_bucket_and_not_on_the_worker(run, jobs):
    work = jobs.workdir(JOB)
    server = s3_server(work)
    keys = server.keys("pipeline")
    for task in ("ingest_april", "ingest_july"):
        path = run["xcoms"][task]["return_value"]["path"]
        assert path.startswith("s3://pipeline/mlops/datasets/flights/data/")
        assert path.removeprefix("s3://pipeline/") in keys
    for task in ("april_table", "july_table"):
        table = run["xcoms"][task]["return_value"]
        assert table.startswith("s3://pipeline/mlops/tables/flights/") and table.endswith("/train.parquet")
        assert table.removeprefix("s3://pipeline/") in keys
    local = work / "local"
    assert not (local / "datasets").exists() and not (local / "tables").exists()


def test_validation_read_the_snapshot_and_its_history_from_the_bucket(run, jobs):
    summary = run["xcoms"]["validate"]["return_value"]
    april = run["xcoms"]["ingest_april"]["return_value"]
    assert (summary["success"], summary["rows"], summary["path"]) == (True, april["rows"], april["path"])
    server = s3_server(jobs.workdir(JOB))
    assert summary["suite_path"] == "s3://pipeline/mlops/data_docs/object_store/" + (
        f"{run['run_id']}/validate/suite.json"
    )
    suite = json.loads(_object(server, "pipeline", summary["suite_path"].removeprefix("s3://pipeline/")))
    history = [
        e["meta"]["history_row_counts"]
        for e in suite["expectations"]
        if "history_row_counts" in e.get("meta", {})
    ]
    months = [run["xcoms"][f"ingest_2013_{m:02d}"]["return_value"]["rows"] for m in (1, 2, 3)]
    # scaled to April's 30 days: January's and March's 31, February's 28
    assert history == [[round(rows * 30 / days) for rows, days in zip(months, (31, 28, 31), strict=True)]]


def _point_at_the_jobs_bucket(jobs, monkeypatch) -> S3Server:
    """This process reads the job's bucket as the API server would: same connection and data dir."""
    server = s3_server(jobs.workdir(JOB))
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_STORE", server.connection_uri())
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", "s3://pipeline/mlops")
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_CONN_ID", CONN_ID)
    return server


def test_data_docs_are_in_the_bucket_and_served_from_there(run, jobs, monkeypatch):
    from airflow_mlops.plugins import data_docs

    server = _point_at_the_jobs_bucket(jobs, monkeypatch)
    summary = run["xcoms"]["validate"]["return_value"]
    page = summary["data_docs"].removeprefix("s3://pipeline/mlops/data_docs/")
    assert summary["data_docs"].startswith("s3://pipeline/mlops/data_docs/object_store/")
    assert summary["data_docs_url"].endswith("/data-docs/" + page.replace(":", "%3A").replace("+", "%2B"))
    assert not (jobs.workdir(JOB) / "local" / "data_docs").exists()  # staged, uploaded, removed

    authorized = []
    monkeypatch.setattr(data_docs, "_authorize", lambda user, dag_id: authorized.append(dag_id))
    response = data_docs.data_docs(page, user=object())
    body = response.body.decode()
    assert "<html" in body.lower()  # the page, rewritten to load nothing from another origin
    assert response.headers["content-security-policy"] == data_docs.CONTENT_SECURITY_POLICY
    css = next(k for k in server.keys("pipeline", "mlops/data_docs/") if k.endswith(".css"))
    asset = data_docs.data_docs(css.removeprefix("mlops/data_docs/"), user=object())
    assert asset.media_type == "text/css" and asset.body == _object(server, "pipeline", css)
    # ".." is resolved on the key: it names another DAG's file, whose DAG is the one authorized
    with pytest.raises(data_docs.HTTPException) as missing:
        data_docs.data_docs("object_store/../other_dag/site/index.html", user=object())
    assert missing.value.status_code == 404
    assert authorized == ["object_store", "object_store", "other_dag"]


def test_the_mlops_page_lists_the_datasets_in_the_bucket(run, jobs, monkeypatch):
    from airflow_mlops import storage
    from airflow_mlops.plugins import sources

    _point_at_the_jobs_bucket(jobs, monkeypatch)
    found = {d["name"]: d for d in sources.datasets(storage.data_root(), {}, {"object_store"})}
    assert sorted(found) == ["carrier_daily", "flights", "weather"]
    ingested = {run["xcoms"][t]["return_value"]["version"] for t in run["xcoms"] if t.startswith("ingest_")}
    listed = {v["version"] for name in ("flights", "weather") for v in found[name]["versions"]}
    assert listed == ingested
    assert {v["dag_id"] for v in found["flights"]["versions"]} == {"object_store"}


def test_feast_read_its_file_sources_from_the_bucket(run, jobs):
    server = s3_server(jobs.workdir(JOB))
    materialized = run["xcoms"]["feast_materialize"]["return_value"]
    assert {view: report["rows"] > 0 for view, report in materialized["views"].items()} == {
        "weather_hourly": True,
        "carrier_daily": True,
    }
    table = run["xcoms"]["build_training_set"]["return_value"]
    april = run["xcoms"]["ingest_april"]["return_value"]
    assert table["dataset_version"] == april["version"]
    parts = {}
    for name in ("train", "holdout"):
        assert table[name].startswith(f"s3://pipeline/mlops/feature_tables/flights/{april['version']}/")
        parts[name] = pd.read_parquet(
            io.BytesIO(_object(server, "pipeline", table[name].split("pipeline/", 1)[1]))
        )
    assert sum(len(p) for p in parts.values()) == table["rows"]
    # the SQL registry (PostgreSQL) recorded the materialization: what the freshness trigger reads
    assert (
        run["xcoms"]["registry_watermark"]["return_value"] == "2013-05-01T00:00:00+00:00"
    )  # April materialized
    # point-in-time weather joined from the weather snapshot in the bucket (a few hours lack it)
    assert parts["train"]["temp"].notna().mean() > 0.9
    assert parts["train"]["carrier_flights"].notna().mean() > 0.9


def _drift_work_folder(jobs, run) -> Path:
    """The drift task instance's folder on the worker (``local_data_dir``): where the runtime worked."""
    from airflow_mlops.task_outputs import instance_folder

    return jobs.workdir(JOB) / "local" / "drift" / instance_folder("object_store", run["run_id"], "drift")


def test_drift_compared_local_copies_of_the_two_tables(run, jobs):
    server = s3_server(jobs.workdir(JOB))
    drift = run["xcoms"]["drift"]["return_value"]
    folder = _drift_work_folder(jobs, run)
    config = json.loads((folder / "config.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    for name, task in (("reference", "april_table"), ("current", "july_table")):
        # the runtime read the copy in the instance's folder: the same bytes as the bucket's table
        assert config[name] == str(folder / "inputs" / name / "train.parquet")
        key = run["xcoms"][task]["return_value"].removeprefix("s3://pipeline/")
        assert Path(config[name]).read_bytes() == _object(server, "pipeline", key)
        rows = len(pd.read_parquet(config[name]))
        assert report[f"n_{name}"] == min(rows, config["max_rows"])
    assert drift["is_drift"] is True  # April against July: the season's delays


def test_the_drift_report_is_in_the_bucket_and_served_from_there(run, jobs, monkeypatch):
    from airflow_mlops import storage
    from airflow_mlops.plugins import drift_report, sources
    from airflow_mlops.task_outputs import instance_folder

    server = _point_at_the_jobs_bucket(jobs, monkeypatch)
    drift = run["xcoms"]["drift"]["return_value"]
    prefix = f"mlops/drift/{instance_folder('object_store', run['run_id'], 'drift')}/"
    # what the task hands on names the bucket: the report and plot uploaded, byte for byte
    assert (drift["report"], drift["plot"]) == (
        f"s3://pipeline/{prefix}report.json",
        f"s3://pipeline/{prefix}pvalues.png",
    )
    local = _drift_work_folder(jobs, run)
    stored = _object(server, "pipeline", prefix + "report.json")
    assert stored == (local / "report.json").read_bytes()
    assert json.loads(stored)["is_drift"] is True

    # the MLOps page's drift timeline lists it from the bucket
    checks = sources.drift_reports(storage.data_root(), {"object_store"})
    assert [(c["report"], c["is_drift"]) for c in checks] == [(drift["report"], True)]
    assert sources.drift_reports(storage.data_root(), {"another_dag"}) == []

    # the report's page and plot are read from the bucket (nothing of this process's disk)
    authorized = []
    monkeypatch.setattr(drift_report, "_authorize", lambda user, dag_id: authorized.append(dag_id))
    page = drift_report.drift_report("object_store", run["run_id"], "drift", user=object()).body.decode()
    assert 'class="verdict drift"' in page and 'id="pvalues" src="drift/pvalues.png"' in page
    plot = drift_report.drift_report_plot("object_store", run["run_id"], "drift", user=object())
    assert plot.media_type == "image/png"
    assert plot.body == _object(server, "pipeline", prefix + "pvalues.png")
    assert authorized == ["object_store", "object_store"]
