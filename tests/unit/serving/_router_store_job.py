"""A deployment whose router looks features up in a real Redis online store, and Redis going away.

Usage: ``python _router_store_job.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME`` pointing at a
fresh folder (``tests/unit/serving/test_router_feature_store.py`` starts it as a background job:
``import feast`` takes ~20 s here and again in the router).

Steps: start ``redis-server`` on a free loopback port (this job's own process, stopped by pid);
apply the example feature repo through a ``feast`` connection defined as an environment variable,
with the Redis online store, and materialize three days; deploy a real model (a logistic regression
over the 13 inputs) behind a router with the Feast lookup; send entity keys (200); read the
router's environment; stop Redis and send them again (the router must answer 503 with a message,
not drop the connection); a request with the features themselves still scores; restart Redis,
materialize again, and entity keys score again (the lookup reconnects).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

JOBS = Path(__file__).resolve().parents[1] / "_jobs"
sys.path.insert(0, str(JOBS))
import feast_stores  # noqa: E402
import feature_lookup_store as lookup_job  # noqa: E402

NAME = "redis-lookup"
CONN_ID = "feast_router_redis"
SECRET = "AIRFLOW_CONN_SECRET_X"


def submit(jobs) -> None:
    work = jobs.workdir("router-feature-store")
    jobs.submit(
        "router-feature-store",
        [jobs.python, Path(__file__), work, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home", PYTHONUNBUFFERED="1"),
        timeout=600,
    )


def load(jobs) -> dict:
    submit(jobs)
    result = jobs.result("router-feature-store").check()
    data = json.loads((jobs.workdir("router-feature-store") / "result.json").read_text())
    data["output"] = result.output
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, work: Path) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis(host="127.0.0.1", port=port).ping():
                return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def environ(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return sorted(item.split(b"=", 1)[0].decode() for item in raw if b"=" in item)


def post(url: str, body: dict) -> dict:
    import requests

    try:
        answer = requests.post(url, json=body, timeout=60)
    except requests.RequestException as err:  # the connection dropped without an answer
        return {"status": None, "error": f"{type(err).__name__}: {err}"}
    try:
        payload = answer.json()
    except ValueError:
        payload = answer.text
    return {"status": answer.status_code, "body": payload}


def main(workdir: str, result_path: str) -> None:
    work = Path(workdir)
    data_dir = work / "data"
    runtimes = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or JOBS.parents[2] / ".runtimes").resolve()
    os.environ["MLOPS_DATA_DIR"] = str(data_dir)
    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(data_dir)
    os.environ["AIRFLOW__MLOPS__RUNTIMES_DIR"] = str(runtimes)
    os.environ[SECRET] = "postgresql://admin:s3cret@db.internal/prod"  # what no serving process may get
    out: dict = {}
    port = free_port()
    redis_proc = start_redis(port, work)
    try:
        import mlflow.pyfunc
        import pandas as pd
        import requests
        from airflow_mlops.hooks.feast import FeastHook
        from airflow_mlops.hooks.seldon import SeldonHook

        sources = feast_stores.write_sources(data_dir)
        extra = {
            "repo_path": str(feast_stores.FEATURE_REPO),
            "project": f"t{uuid.uuid4().hex[:10]}_router",
            "registry_path": str(work / "feast" / "registry.db"),
            "online_store": "redis",
            "redis_connection_string": f"127.0.0.1:{port},db=0",
        }
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps({"conn_type": "feast", "extra": extra})
        feast = FeastHook(feast_conn_id=CONN_ID)
        feast.apply()
        views = ["weather_hourly", "carrier_daily"]
        feast.materialize(feast_stores.day(0), feast_stores.day(3), views, chunk=None)
        out["sources"] = sources

        model_dir = work / "model"
        config = {
            "features": lookup_job.OUTPUT_ORDER,
            "mean": [0.0] * len(lookup_job.OUTPUT_ORDER),
            "scale": [1.0] * len(lookup_job.OUTPUT_ORDER),
            "coef": lookup_job.ROUTER_COEF,
            "intercept": -20.0,
        }
        example = pd.DataFrame([[1.0] * len(lookup_job.OUTPUT_ORDER)], columns=lookup_job.OUTPUT_ORDER)
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=str(JOBS.parent / "registry" / "logistic_pyfunc.py"),
            model_config=config,
            input_example=example,
        )

        rows = lookup_job.request_rows(5)
        lookup = lookup_job.config(feast_conn_id=CONN_ID)
        hook = SeldonHook()
        try:
            router = hook.ensure_router(NAME)
            url = f"{router['endpoint']}/api/v1.0/predictions"
            hook.switch(NAME, hook.start_local(NAME, str(model_dir), "1"))
            # what a deploy bringing this lookup does first: the router gets its connection
            router = hook.ensure_router(NAME, feature_lookup=lookup)
            # read now: once the router imports Airflow (setproctitle), /proc shows no environment
            out["router_environ"] = environ(router["pid"])
            router = hook.set_feature_lookup(NAME, lookup)
            deadline = time.monotonic() + 180
            status_url = f"{router['endpoint']}/router/status"
            while not (status := requests.get(status_url, timeout=30).json())["feature_lookup"]:
                if status.get("feature_lookup_error") or time.monotonic() > deadline:
                    raise RuntimeError(f"the router did not load the lookup: {status}")
                time.sleep(0.5)
            entity_keys = {"jsonData": {"rows": rows}}
            features = lookup_job.model_request_body()
            out["before"] = post(url, entity_keys)
            out["router_env_keys"] = hook.current(NAME)["router"].get("env_keys")
            out["conn_variable"] = f"AIRFLOW_CONN_{CONN_ID.upper()}"

            stop(redis_proc)  # the online store goes away
            out["redis_down"] = post(url, entity_keys)
            out["redis_down_again"] = post(url, entity_keys)  # the same router keeps answering
            out["features_while_down"] = post(url, features)

            redis_proc = start_redis(port, work)
            feast.materialize(feast_stores.day(0), feast_stores.day(3), views, chunk=None)
            out["redis_back"] = post(url, entity_keys)
        finally:
            hook.stop(NAME)
    finally:
        stop(redis_proc)
    Path(result_path).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
