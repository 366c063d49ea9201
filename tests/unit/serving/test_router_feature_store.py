"""The router's Feast lookup against a real Redis online store that goes away and comes back.

One background job (``_router_store_job.py``: ``import feast`` takes ~20 s, in the job and again in
the router) deploys a real model behind a router whose lookup reads a real ``redis-server``, then
stops Redis. A store error in the lookup (``redis.exceptions.ConnectionError``, not an OSError)
must be answered — 503 with a Seldon error body naming the store — never a dropped connection.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "router_store_job", Path(__file__).resolve().parent / "_router_store_job.py"
)
router_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(router_job)

RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or Path(__file__).resolve().parents[3] / ".runtimes")
pytestmark = [
    pytest.mark.skipif(not (RUNTIMES / "serving" / "bin" / "python").exists(), reason="no serving runtime"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def start_jobs(jobs) -> None:
    router_job.submit(jobs)


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return router_job.load(jobs)


def test_entity_keys_are_scored_while_the_store_answers(job):
    before = job["before"]
    assert before["status"] == 200, before
    assert len(before["body"]["data"]["ndarray"]) == 5


def test_a_store_that_is_down_answers_503_with_the_cause(job):
    for key in ("redis_down", "redis_down_again"):
        down = job[key]
        assert down["status"] == 503, down  # not a dropped connection (status None)
        status = down["body"]["status"]
        assert (status["code"], status["reason"], status["status"]) == (
            503,
            "FEATURE_STORE_UNAVAILABLE",
            "FAILURE",
        )
        assert "feature store" in status["info"] and "unavailable" in status["info"]
        assert "redis.exceptions.ConnectionError" in status["info"], status["info"]
    # requests that bring their features do not need the store
    assert job["features_while_down"]["status"] == 200


def test_the_lookup_reconnects_when_the_store_is_back(job):
    back = job["redis_back"]
    assert back["status"] == 200, back
    assert back["body"]["data"]["ndarray"] == pytest.approx(job["before"]["body"]["data"]["ndarray"])


def test_the_router_gets_its_feast_connection_and_no_other(job):
    """Read from /proc/<pid>/environ of the real router, and as the hook recorded it."""
    for environ in (job["router_environ"], job["router_env_keys"]):
        assert job["conn_variable"] in environ  # the lookup reads its store through this connection
        assert "AIRFLOW_CONN_SECRET_X" not in environ
        assert not [k for k in environ if k.startswith("AIRFLOW_CONN_") and k != job["conn_variable"]]
        assert not [k for k in environ if k.startswith("AIRFLOW__") and not k.startswith("AIRFLOW__MLOPS__")]
