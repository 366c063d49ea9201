"""Fault injection on the provider's dependencies: each case stops a real server or creates a real
condition while the provider's code runs, and asserts the promise of issue 21 for it.

* MLflow stopped while ``register`` runs, restarted on the same port and store: the task waits
  and succeeds; a retry of the task adds no version and moves no alias.
* MLflow down for longer than the client's retries (register, set alias, gate, train, deploy): each
  task fails with an error naming the server and what to do; no version is created, no alias
  moves, and the deployment keeps serving the version it served.
* Redis (the Feast online store) killed during materialize: an error naming the store, the
  view's watermark and the fix; after a restart an incremental retry writes only the rest.
* Redis down during a feature lookup: ``FeatureStoreError(unavailable=True)``, which the router
  answers as 503 ``FEATURE_STORE_UNAVAILABLE`` (not a dropped connection).
* Disk full (``RLIMIT_FSIZE``) and a file where the data dir should be: an error naming the path
  and the fix; the current version unchanged, no partial file left.

The provider's code runs in subprocesses (``_dependency_support.Job``); this module never imports
Airflow. Running as root, permissions stop no write, so an unwritable data dir is made a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _dependency_support import REPO, Job, MlflowServer, RedisServer, job_env, restarted
from airflow_mlops.serving.state import DeploymentStore

RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()

pytestmark = pytest.mark.faults

# -- disk full / unwritable data dir -------------------------------------------------------------

DISK_JOB = r"""
import os, resource, signal
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from airflow_mlops import datasets
from airflow_mlops.datasets import DataWriteError, write_snapshot, write_table

root = Path(sys.argv[1])
start, end = datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 2, tzinfo=UTC)
out = {}


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def failure(call):
    try:
        call()
    except DataWriteError as err:
        return {"type": type(err).__name__, "message": str(err), "path": err.filename,
                "is_oserror": isinstance(err, OSError)}
    raise AssertionError("no DataWriteError")


small = pd.DataFrame({"x": np.arange(10)})
rng = np.random.default_rng(0)
big = pd.DataFrame({"x": rng.random(400_000), "y": rng.random(400_000)})  # ~6 MB of Parquet

# 1. the disk fills up while a new version is written: the old one stays current
first, _ = write_snapshot(small, root / "full", "weather", start, end)
before = listing(root / "full")
current = datasets.current_path(root / "full", "weather", start, end)
current_bytes = current.read_bytes()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
out["disk_full"] = failure(lambda: write_snapshot(big, root / "full", "weather", start, end))
out["table_full"] = failure(lambda: write_table(big, root / "full" / "tables" / "train.parquet"))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["full_first_path"] = first.path
out["full_before"], out["full_after"] = before, listing(root / "full")
out["current_unchanged"] = current.read_bytes() == current_bytes
out["current_pointer"] = (root / "full" / "weather" / "manifests" / current.stem / "CURRENT").read_text()
out["first_version"] = first.version
# once there is space again, the same write succeeds
again, written = write_snapshot(big, root / "full", "weather", start, end)
out["after_space_freed"] = {"written": written, "current_is_new": (
    (root / "full" / "weather" / "manifests" / current.stem / "CURRENT").read_text() == again.version)}

# 2. the data dir is a file (unwritable): the error names it
(root / "data_dir_file").write_text("not a folder")
out["data_dir_is_file"] = failure(
    lambda: write_snapshot(small, root / "data_dir_file", "weather", start, end)
)
out["table_dir_is_file"] = failure(lambda: write_table(small, root / "data_dir_file" / "train.parquet"))

# 3. current/ cannot be written: the new version is stored, but the old one stays current
second = root / "pinned"
write_snapshot(small, second, "weather", start, end)
pointer = second / "weather" / "manifests" / current.stem / "CURRENT"
old = pointer.read_text()
view = second / "weather" / "current"
for f in view.iterdir():
    f.unlink()
view.rmdir()
view.write_text("a file where current/ should be")
out["current_blocked"] = failure(lambda: write_snapshot(big, second, "weather", start, end))
out["pointer_kept"] = pointer.read_text() == old

# 4. a task's output folder under a data dir that is a file
from airflow_mlops.task_outputs import create_task_output_dir

class TI:
    dag_id, run_id, task_id, map_index = "d", "manual__1", "t", -1

os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(root / "data_dir_file")
out["task_output"] = failure(lambda: create_task_output_dir(TI(), "drift"))
result(out)
"""


def test_disk_full_and_an_unwritable_data_dir_fail_clearly_and_keep_the_current_version(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    job = Job(tmp_path, "disk", f"sys.argv[1:] = [{str(root)!r}]\n" + DISK_JOB, job_env(tmp_path / "home"))
    out = job.result()

    for case in ("disk_full", "table_full"):
        failed = out[case]
        assert failed["is_oserror"] and failed["message"].startswith(f"Cannot write {failed['path']}: ")
        assert "File too large" in failed["message"] and "free space" in failed["message"], failed
    assert out["disk_full"]["path"].endswith(".parquet") and "/weather/data/" in out["disk_full"]["path"]
    # nothing half-written: the same files as before the failed write, no temporary file left
    assert out["full_after"] == out["full_before"], out
    assert out["current_unchanged"] and out["current_pointer"] == out["first_version"]
    assert out["after_space_freed"] == {"written": True, "current_is_new": True}

    for case in ("data_dir_is_file", "table_dir_is_file", "task_output"):
        failed = out[case]
        assert str(root / "data_dir_file") in failed["path"], failed
        assert "a file where a folder is expected" in failed["message"], failed
        assert "AIRFLOW__MLOPS__DATA_DIR" in failed["message"], failed
    blocked = out["current_blocked"]
    assert blocked["path"].startswith(str(root / "pinned" / "weather" / "current")), blocked
    assert out["pointer_kept"], "a version whose current/ file failed was made current"


# -- MLflow down during register / set alias / gate / train --------------------------------------

MLFLOW_JOB = r"""
import os
from pathlib import Path

sys.path.insert(0, sys.argv[2])  # tests/unit/registry: the registry tests' real flight models
import flights_models
import mlflow
from mlflow import MlflowClient

from airflow_mlops.operators.registry import (
    ChampionChallengerGateOperator, MlflowRegisterModelOperator, MlflowSetAliasOperator)
from airflow_mlops.operators.train import HorovodTrainOperator

url, name, holdout = sys.argv[1], "fault_model", sys.argv[3]
client = MlflowClient(tracking_uri=url)
moves = []  # every alias move the provider asks MLflow for
_set_alias = MlflowClient.set_registered_model_alias


def recording(self, model, alias, version):
    moves.append((alias, str(version)))
    return _set_alias(self, model, alias, version)


MlflowClient.set_registered_model_alias = recording


class TI:
    dag_id, run_id, map_index, try_number = "faults", "manual__2026-01-01", -1, 1

    def __init__(self, task_id):
        self.task_id = task_id

    def xcom_push(self, key, value):
        pass


def context(task_id):
    from types import SimpleNamespace
    return {"ti": TI(task_id), "outlet_events": {}, "dag": SimpleNamespace(dag_id="faults")}


def register(run_id):
    op = MlflowRegisterModelOperator(task_id="register", run_id=run_id, model_name=name)
    return op.execute(context("register"))


def failure(call):
    try:
        call()
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    raise AssertionError("the task did not fail")


def state():
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = client.get_registered_model(name).aliases
    return {"versions": versions, "aliases": dict(aliases)}


# servable: with an input example, for the deploy's smoke prediction
runs = {kind: flights_models.log_flights_model(kind, url, servable=True) for kind in ("medium", "strong")}
first = register(runs["medium"])  # v1: champion and challenger
out = {"first": {"version": first["version"], "aliases": first["aliases"]}}

# A. MLflow stopped while register creates the version; back on the same port and store
os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"  # retries at 1, 2, 4, 8, ... s (default 2)
_register_model = mlflow.register_model


def register_model(*args, **kwargs):
    wait_for_go("registering")  # the test stops the server here
    return _register_model(*args, **kwargs)


mlflow.register_model = register_model
moves.clear()
waited = register(runs["strong"])
mlflow.register_model = _register_model
retry = register(runs["strong"])  # Airflow's retry of the task: execute again
out["waited"] = {k: waited[k] for k in ("version", "created", "aliases", "champion_version")}
out["retry"] = {k: retry[k] for k in ("version", "created", "aliases", "champion_version")}
out["moves"] = list(moves)
out["after"] = state()

# C. MLflow up: deploy the champion (v1) locally, by alias, as the example DAGs' deploy does
import requests
from airflow_mlops.hooks.seldon import PREDICT_PATH, SeldonHook
from airflow_mlops.operators.deploy import SeldonDeployOperator


def deploy(**kwargs):
    op = SeldonDeployOperator(task_id="deploy", deployment_name="fault-deploy", model_name=name,
                              ready_timeout=180, drain_seconds=1, **kwargs)
    return op.execute(context("deploy"))


out["deployed"] = deploy()["version"]

# B. MLflow stays down longer than the client's retries: each task fails clearly
wait_for_go("stop_for_good")
os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
moves.clear()
gate = ChampionChallengerGateOperator(
    task_id="gate", model_name=name, deploy_task_ids="deploy", reject_task_ids="rejected",
    evaluation={"data_path": holdout, "features": flights_models.FEATURES,
                "label": flights_models.LABEL, "metric": "roc_auc"},
)
script = Path("train_noop.py")
script.write_text("def train(ctx):\n    raise AssertionError('never launched')\n")
out["down"] = {
    "register": failure(lambda: register(runs["strong"])),
    "set_alias": failure(lambda: MlflowSetAliasOperator(
        task_id="promote", model_name=name, alias="champion", version="2").execute(context("promote"))),
    "gate": failure(lambda: gate.choose_branch(context("gate"))),
    "train": failure(lambda: HorovodTrainOperator(
        task_id="train", training_script=str(script), experiment_name="faults").execute(context("train"))),
    "deploy_alias": failure(deploy),  # the champion alias cannot be read
    "deploy_version": failure(lambda: deploy(version="2")),  # v2's files cannot be downloaded
}
out["down_moves"] = list(moves)
# the deployment still serves v1
serving = SeldonHook().state("fault-deploy")
rows = flights_models.holdout_frame()[flights_models.FEATURES].head(3).astype("float64")
answer = requests.post(serving.endpoint + PREDICT_PATH, timeout=30, json={
    "data": {"names": list(rows.columns), "ndarray": rows.to_numpy().tolist()}})
out["serving_when_down"] = {
    "version": serving.version, "status": answer.status_code,
    "answered_by": answer.headers.get("X-Mlops-Model-Version"),
    "last_rollout": {k: (serving.last_rollout or {}).get(k) for k in ("outcome", "version")},
}
SeldonHook().stop("fault-deploy")

result(out)
"""


@pytest.mark.skipif(
    not (RUNTIMES / "serving" / "bin" / "python").exists(), reason=f"no serving runtime under {RUNTIMES}"
)
def test_mlflow_down_during_register_gate_train_and_deploy(tmp_path, holdout_path):
    server = MlflowServer(tmp_path / "mlflow").start()
    job = None
    try:
        server.wait_healthy(timeout=300)
        env = job_env(
            tmp_path / "home",
            AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": server.url}),
            AIRFLOW__MLOPS__DATA_DIR=str(tmp_path / "data"),
            AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES),
        )
        argv = [server.url, str(REPO / "tests" / "unit" / "registry"), str(holdout_path)]
        job = Job(tmp_path, "mlflow", f"sys.argv[1:] = {argv!r}\n" + MLFLOW_JOB, env)

        job.wait_event("registering", timeout=600)
        server.stop()  # the register request meets a stopped server ...
        job.go()
        server = restarted(server).wait_healthy(timeout=300)  # ... which comes back meanwhile

        job.wait_event("stop_for_good", timeout=600)
        server.stop()  # down for longer than the client's retries
        job.go()
        out = job.result()
    finally:
        if job is not None:
            job.kill()
        server.stop()
        # a job that failed half-way leaves the deployment's processes: stop them by pid
        deployment = DeploymentStore.of(tmp_path / "data", "fault-deploy")
        if deployment.dir.is_dir():
            deployment.stop_all()

    assert out["first"] == {"version": "1", "aliases": ["challenger", "champion"]}
    for task, failed in out["down"].items():
        message = failed["message"]
        assert failed["type"] == "MlopsError", (task, failed)
        assert f"the MLflow server at {server.url} (connection 'mlflow_default') did not answer" in message
        assert "Start it or fix the connection's host, then retry the task" in message, (task, message)
    # the task waited for the server and succeeded; its retry reused the version
    assert out["waited"] == {
        "version": "2", "created": True, "aliases": ["challenger"], "champion_version": "1",
    }  # fmt: skip
    assert out["retry"] == {**out["waited"], "created": False}
    assert out["after"] == {"versions": [1, 2], "aliases": {"champion": "1", "challenger": "2"}}
    assert out["moves"] == [["challenger", "2"]]  # one alias move, none by the retry

    # then down for good: nothing moved, nothing registered (read from the server's own store)
    assert out["down_moves"] == []
    # a deploy that could not reach the registry left the champion serving, and said so
    assert out["deployed"] == "1"
    assert "(deploy 'fault-deploy')" in out["down"]["deploy_version"]["message"]
    assert out["serving_when_down"] == {
        "version": "1", "status": 200, "answered_by": "1",
        "last_rollout": {"outcome": "failed", "version": "2"},
    }  # fmt: skip
    assert _registry_rows(server.root / "mlflow.db") == {
        "versions": [1, 2], "aliases": {"champion": "1", "challenger": "2"},
    }  # fmt: skip


def _registry_rows(db) -> dict:
    """Versions and aliases of ``fault_model`` as MLflow's SQLite backend store holds them."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        versions = conn.execute("SELECT version FROM model_versions WHERE name = 'fault_model'").fetchall()
        aliases = conn.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = 'fault_model'"
        ).fetchall()
    return {"versions": sorted(v for (v,) in versions), "aliases": {a: str(v) for a, v in aliases}}


@pytest.fixture(scope="module")
def holdout_path(tmp_path_factory):
    """The registry tests' March 2013 hold-out, for the gate (written by their helper)."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit" / "registry"))
    import flights_models

    return flights_models.write_holdout(tmp_path_factory.mktemp("holdout") / "holdout.parquet")


# -- Redis (the Feast online store) down during materialize and during a feature lookup ------------

FEAST_JOB = r"""
import os, uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, sys.argv[2])  # tests/unit/_jobs: the Feast tests' sources and helpers
import feast_stores as fs

from feast.infra.online_stores.redis import RedisOnlineStore

from airflow_mlops.hooks.feast import FeastHook
from airflow_mlops.serving.feature_lookup import FeatureLookup, FeatureStoreError

work, port = Path(sys.argv[1]), sys.argv[3]
sources = fs.write_sources(work / "data")
conn_id = "feast_faults"
os.environ["AIRFLOW_CONN_FEAST_FAULTS"] = json.dumps({"conn_type": "feast", "extra": {
    "repo_path": str(fs.FEATURE_REPO), "project": f"faults_{uuid.uuid4().hex[:8]}",
    "registry_path": str(work / "registry.db"), "online_store": "redis",
    "redis_connection_string": f"127.0.0.1:{port},db=0"}})
os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(work / "data")
hook = FeastHook(feast_conn_id=conn_id)
hook.apply()
views = ["weather_hourly"]
writes, killed = [], []
_write = RedisOnlineStore.online_write_batch


def online_write_batch(self, *args, **kwargs):
    writes.append(1)
    if len(writes) == 2 and not killed:  # chunk 2 of 3: the test kills Redis now
        killed.append(1)
        wait_for_go("writing_chunk_2")
    return _write(self, *args, **kwargs)


RedisOnlineStore.online_write_batch = online_write_batch
lookup = FeatureLookup(str(fs.FEATURE_REPO), ["weather_hourly:temp"], [], ["temp"], feast_conn_id=conn_id)
out = {"before": lookup.transform([{"origin": "JFK"}]).to_dict()}
try:
    fs.materialize(conn_id, fs.day(0), fs.day(3), feature_views=views, incremental=True)
    raise AssertionError("materialize survived a dead Redis")
except Exception as err:
    out["materialize_error"] = {"type": type(err).__name__, "message": str(err)}
out["watermark_after_failure"] = FeastHook(feast_conn_id=conn_id).last_materialized_end(
    "weather_hourly"
).isoformat()
try:
    lookup.transform([{"origin": "JFK"}])
    raise AssertionError("the lookup answered from a dead Redis")
except FeatureStoreError as err:
    out["lookup_error"] = {"message": str(err), "unavailable": err.unavailable}

wait_for_go("restart")  # the test restarts Redis on the same port and data
out["lookup_after_restart"] = lookup.transform([{"origin": "JFK"}]).to_dict()
writes.clear()
out["retry"] = fs.materialize(conn_id, fs.day(0), fs.day(3), feature_views=views, incremental=True)
out["watermark"] = FeastHook(feast_conn_id=conn_id).last_materialized_end("weather_hourly").isoformat()
out["writes_by_retry"] = len(writes)
out["final"] = lookup.transform([{"origin": "JFK"}]).to_dict()
out["project"] = hook.project
result(out)
"""


@pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed")
def test_redis_down_during_materialize_and_lookup(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    env = job_env(tmp_path / "home")
    argv = [str(tmp_path / "work"), str(REPO / "tests" / "unit" / "_jobs"), str(redis.port)]
    job = Job(tmp_path, "feast", f"sys.argv[1:] = {argv!r}\n" + FEAST_JOB, env)
    try:
        job.wait_event("writing_chunk_2", timeout=600)
        redis.kill()  # kill -9 while the task materializes
        job.go()
        job.wait_event("restart", timeout=600)
        redis.start()  # same port, same append-only file
        job.go()
        out = job.result()
    finally:
        job.kill()
        redis.kill()

    from datetime import UTC, datetime, timedelta

    day = [(datetime(2013, 6, 3, tzinfo=UTC) + timedelta(days=n)).isoformat() for n in range(4)]
    failed = out["materialize_error"]
    message = failed["message"]
    assert failed["type"] == "MlopsError", failed
    assert message.startswith(
        f"Feast online store unreachable while materializing 'weather_hourly' chunk 2/3 [{day[1]}, {day[2]})"
    ), message
    assert "redis.exceptions.ConnectionError" in message and f"127.0.0.1:{redis.port}" in message
    assert f"its watermark (last materialized end) is {day[1]}" in message
    assert "Start the online store" in message and "incremental=True it resumes from the watermark" in message
    assert out["watermark_after_failure"] == day[1]

    # the lookup: an unavailable store (the router's 503 FEATURE_STORE_UNAVAILABLE), no hang or crash
    assert out["lookup_error"]["unavailable"] is True, out["lookup_error"]
    assert "is unavailable" in out["lookup_error"]["message"]
    assert out["before"]["ndarray"] == [[None]]  # nothing materialized yet
    assert out["lookup_after_restart"]["ndarray"][0][0] is not None  # chunk 1 survived the kill

    # the retry resumed from the watermark: chunks 2 and 3 only, the watermark at the end
    view = out["retry"]["views"]["weather_hourly"]
    assert (view["start"], view["end"], view["chunks"]) == (day[1], day[3], 2), view
    assert out["writes_by_retry"] == 2 and out["watermark"] == day[3]
    assert out["final"]["ndarray"][0][0] is not None
