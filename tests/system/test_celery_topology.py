"""The example pipeline on the CeleryExecutor topology (``make stack-celery``): Airflow's metadata
DB and MLflow's backend store in PostgreSQL databases this test creates on the machine's server,
Redis as the broker (keys under a prefix of the stack's own), scheduler, dag-processor,
triggerer and api-server as separate processes, and two Celery workers, each with a working
folder (cwd, ``TMPDIR``) of its own; ``[mlops] data_dir`` and MLflow's artifacts in a bucket of
an S3 API server (moto's standalone server: S3's protocol, in memory; not AWS or MinIO).

The scheduler runs the pipeline by itself; every task succeeds, and the task instances'
``hostname`` (each worker's name) shows that both workers ran tasks, among them a task and its
direct downstream on different workers. Snapshots, feature tables and the model's artifacts are
in the bucket (listed with boto3), not in the stack's local data folder, and so are the drift
check's report and the deployment's routing and inference log (published by its supervisor for
the drift watcher). What stays in that folder, shared by the workers, is what has not moved to
the store yet (Feast's online store, local deployments' own files, the watchers' windows: the
rest of issue 17).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from stack import POSTGRES_URL, celery_stack, free_port  # noqa: E402

PIPELINE = "flights_delay_pipeline"


def drop_database(name: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


@pytest.fixture(scope="module")
def celery(tmp_path_factory):
    runtimes = Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()
    if not (runtimes / "training" / "bin" / "python").exists():
        pytest.skip(f"runtime environments not found under {runtimes}: run `make runtimes`")
    home = tmp_path_factory.mktemp("celery")
    dags = home / "dags"
    dags.mkdir()
    for part in ("include", "feature_repo"):
        shutil.copytree(REPO / "dags" / part, dags / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dags" / f"{PIPELINE}.py", dags)
    database = f"mlops_test_{uuid.uuid4().hex[:8]}"
    s = celery_stack(
        home / "stack",
        database,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        dags_folder=dags,
        runtimes_dir=runtimes,
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        for key in client.scan_iter(match=f"{s.broker_prefix}:*"):
            client.delete(key)
        for name in (database, f"{database}_mlflow", f"{database}_feast"):
            drop_database(name)


@pytest.fixture(scope="module")
def run(celery) -> dict:
    celery.wait_for_dag(PIPELINE)
    found = celery.wait_for_new_run(PIPELINE, timeout=300, run_type="scheduled")
    found["state"] = celery.wait_run(PIPELINE, found["dag_run_id"], timeout=1800)
    return found


def test_the_pipeline_runs_on_two_celery_workers(celery, run):
    tis = celery.api("GET", f"/dags/{PIPELINE}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert run["state"] == "success", states
    assert all(state == "success" for state in states.values()), states

    ran_on = {ti["task_id"]: ti["hostname"] for ti in tis}
    assert set(ran_on.values()) == set(celery.worker_names()), ran_on
    tasks = celery.api("GET", f"/dags/{PIPELINE}/tasks")["tasks"]
    handed_over = [
        (task["task_id"], downstream)
        for task in tasks
        for downstream in task["downstream_task_ids"]
        if ran_on[task["task_id"]] != ran_on[downstream]
    ]
    assert handed_over, f"every task ran on the same worker as its upstream: {ran_on}"

    # neither worker died on the way (the supervisor restarts one that does, and counts it)
    components = celery.supervisor_state()["components"]
    assert {name: components[name]["restarts"] for name in celery.worker_names()} == dict.fromkeys(
        celery.worker_names(), 0
    )


def test_what_tasks_hand_each_other_is_in_the_bucket(celery, run):
    assert run["state"] == "success"
    flights = celery.xcom(PIPELINE, run["dag_run_id"], "ingest_flights")
    table = celery.xcom(PIPELINE, run["dag_run_id"], "build_training_set")
    assert flights["path"].startswith(f"s3://{celery.bucket}/data/datasets/flights/data/")
    assert table["train"].startswith(f"s3://{celery.bucket}/data/feature_tables/flights/")
    pages = celery.s3_client().get_paginator("list_objects_v2").paginate(Bucket=celery.bucket)
    keys = {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    for url in (flights["path"], flights["manifest"], table["train"], table["holdout"]):
        assert url.removeprefix(f"s3://{celery.bucket}/") in keys
    # the trained model, logged by a worker through the MLflow server into the bucket
    assert any(key.startswith("mlflow/") and key.endswith("/MLmodel") for key in keys), sorted(keys)[:20]
    assert not (celery.data_dir / "datasets").exists()
    assert not (celery.data_dir / "feature_tables").exists()


def _keys(celery, prefix: str) -> list[str]:
    pages = celery.s3_client().get_paginator("list_objects_v2").paginate(Bucket=celery.bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_the_deployment_and_its_traffic_are_published_to_the_bucket(celery, run):
    """What the drift watcher (in the triggerer, maybe on another host) reads: the routing and
    the inference log, published by the deployment's supervisor; the drift check's report too."""
    import json
    import time

    assert run["state"] == "success"
    deployed = celery.xcom(PIPELINE, run["dag_run_id"], "deploy")
    prefix = f"data/deployments/{deployed['deployment']}/"
    # the detect_drift task scored the checked month through the endpoint: its requests are logged,
    # and published within the publisher's interval (polled, not slept)
    deadline = time.monotonic() + 300
    while not _keys(celery, prefix + "inference_log/") and time.monotonic() < deadline:
        time.sleep(1)
    logged = _keys(celery, prefix + "inference_log/")
    assert logged and all(k.endswith(".parquet") and "/hour=" in k for k in logged), logged
    routing = json.loads(
        celery.s3_client().get_object(Bucket=celery.bucket, Key=prefix + "current.json")["Body"].read()
    )
    assert str(routing["version"]) == str(deployed["version"]) and routing["served_on"]
    drift = celery.xcom(PIPELINE, run["dag_run_id"], "detect_drift")
    assert drift["report"].startswith(f"s3://{celery.bucket}/data/drift/{PIPELINE}/")
    assert drift["report"].removeprefix(f"s3://{celery.bucket}/") in _keys(celery, "data/drift/")
