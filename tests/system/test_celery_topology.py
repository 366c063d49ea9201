"""The example pipeline and its retraining on the CeleryExecutor topology (``make stack-celery``):
Airflow's metadata DB, MLflow's backend store and Feast's registry in PostgreSQL databases this
test creates on the machine's server, Redis as the broker (keys under a prefix of the stack's own)
and as Feast's online store (a Feast project of the test's own), scheduler, dag-processor,
triggerer and api-server as separate processes, and two Celery workers, each with a working
folder (cwd, ``TMPDIR``) and a local data folder (``[mlops] local_data_dir``) of its own, as on
hosts of their own; ``[mlops] data_dir`` and MLflow's artifacts in a bucket of an S3 API server
(moto's standalone server: S3's protocol, in memory; not AWS or MinIO). The first worker also
takes the ``serving`` queue (``[mlops] serving_queue``): it runs the Seldon operators, and so the
local deployments.

The scheduler runs the pipeline by itself; every task succeeds, and the task instances'
``hostname`` (each worker's name) shows that both workers ran tasks, among them a task and its
direct downstream on different workers. Snapshots, feature tables and the model's artifacts are
in the bucket (listed with boto3), and so are the drift check's report and the deployment's
routing and inference log (published by its supervisor for the drift watcher). The drift the
check finds schedules ``flights_delay_retrain``, which retrains, gates and redeploys on the
serving worker. What is in a worker's data folder was written by tasks that ran on it, and no
task's log names the other worker's folders.
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

PIPELINE, RETRAIN = "flights_delay_pipeline", "flights_delay_retrain"


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
    for dag_id in (PIPELINE, RETRAIN):
        shutil.copy(REPO / "dags" / f"{dag_id}.py", dags)
    database = f"mlops_test_{uuid.uuid4().hex[:8]}"
    s = celery_stack(
        home / "stack",
        database,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        dags_folder=dags,
        runtimes_dir=runtimes,
        feast_project=f"flights_{uuid.uuid4().hex[:8]}",
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
        s.clear_redis()
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
    # Feast's online store is the Redis every worker reads: the project's keys are there, and no
    # worker materialized into a SQLite file of its own
    import redis

    client = redis.Redis.from_url(celery.broker_url)
    assert next(client.scan_iter(match=f"*{celery.feast_project}", count=1000), None) is not None
    assert not list(celery.home.rglob("online_store.db"))


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


@pytest.fixture(scope="module")
def retrain(celery, run) -> dict:
    """The first retraining the drift the pipeline's check found scheduled (its event on the drift
    Asset; the triggerer's watcher, reading the published log, may announce the same traffic)."""
    assert run["state"] == "success"
    celery.wait_for_new_run(RETRAIN, timeout=300)
    first = celery.dag_runs(RETRAIN)[-1]  # newest first
    first["state"] = celery.wait_run(RETRAIN, first["dag_run_id"], timeout=1800)
    return first


def _instances(celery, *runs: tuple[str, str]) -> list[dict]:
    return [
        ti
        for dag_id, run_id in runs
        for ti in celery.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    ]


def _published_routing(celery, deployment: str) -> dict:
    import json

    key = f"data/deployments/{deployment}/current.json"
    return json.loads(celery.s3_client().get_object(Bucket=celery.bucket, Key=key)["Body"].read())


def test_drift_retrains_and_the_gate_decides_the_redeploy_on_the_serving_worker(celery, run, retrain):
    import time

    run_id = retrain["dag_run_id"]
    states = celery.task_states(RETRAIN, run_id)
    assert retrain["state"] == "success", states
    assert retrain["run_type"] == "asset_triggered"
    first = celery.xcom(PIPELINE, run["dag_run_id"], "register")
    second = celery.xcom(RETRAIN, run_id, "register")
    assert int(second["version"]) == int(first["version"]) + 1
    gate = celery.xcom(RETRAIN, run_id, "gate", key="comparison")
    assert gate["previous_champion"] == first["version"] and gate["champion"] is not None

    # every deploy ran on the worker that takes the serving queue, where the deployment lives
    deploys = [
        ti
        for ti in _instances(celery, (PIPELINE, run["dag_run_id"]), (RETRAIN, run_id))
        if ti["task_id"] == "deploy" and ti["state"] == "success"
    ]
    assert deploys and {ti["queue"] for ti in deploys} == {celery.serving_queue}, deploys
    assert {ti["hostname"] for ti in deploys} == {celery.serving_worker}, deploys

    deployment = celery.xcom(PIPELINE, run["dag_run_id"], "deploy")["deployment"]
    if gate["promote"]:
        assert states["deploy"] == "success"
        # the switch reaches the store within the publisher's interval (polled, not slept)
        deadline = time.monotonic() + 120
        while _published_routing(celery, deployment)["version"] != second["version"]:
            assert time.monotonic() < deadline, _published_routing(celery, deployment)
            time.sleep(1)
    else:  # the challenger lost: the champion keeps serving
        assert states["deploy"] == "skipped"
        assert str(_published_routing(celery, deployment)["version"]) == str(first["version"])


def test_a_workers_folders_hold_only_what_its_own_tasks_wrote(celery, run, retrain):
    from airflow_mlops.task_outputs import run_folder

    ran = [
        ti
        for ti in _instances(celery, (PIPELINE, run["dag_run_id"]), (RETRAIN, retrain["dag_run_id"]))
        if ti["hostname"] and ti["try_number"]
    ]
    ran_on = {(ti["dag_id"], run_folder(ti["dag_run_id"]), ti["task_id"]): ti["hostname"] for ti in ran}
    # a task's own folders (<kind>/<dag>/<run>/<task>) are on the worker that ran it
    owned = {}
    for name in celery.worker_names():
        root = celery.worker_data_dir(name)
        for folder in root.glob("*/*/*/*"):
            key = folder.relative_to(root).parts[1:]
            if key in ran_on:
                owned[str(folder.relative_to(celery.home))] = (name, ran_on[key])
    assert owned, "no task of either run wrote a folder of its own: nothing checked"
    assert all(worker == ran_by for worker, ran_by in owned.values()), owned

    # the deployment's files and processes are on the serving worker alone
    deployment = celery.xcom(PIPELINE, run["dag_run_id"], "deploy")["deployment"]
    serving = celery.worker_data_dir(celery.serving_worker)
    assert (serving / "deployments" / deployment / "current.json").exists()
    others = [celery.data_dir, *(celery.worker_data_dir(n) for n in celery.worker_names())]
    others.remove(serving)
    assert not [str(d) for d in others if (d / "deployments").exists()]

    # and no task was told of, or read from, the other worker's folders
    for ti in ran:
        log = celery.task_log(ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["try_number"])
        for other in set(celery.worker_names()) - {ti["hostname"]}:
            assert str(celery.worker_dir(other)) not in log, (ti["task_id"], ti["hostname"], other)
