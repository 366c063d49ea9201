"""A ``HorovodTrainOperator`` task in a subprocess, against a real MLflow server: shared by the
training integration tests (``tests/integration/test_training_horovod.py``) and the fault suite
(``tests/faults/test_training_faults.py``).

The operator runs in a control-plane subprocess (fresh ``AIRFLOW_HOME``, the ``mlflow_default``
connection as ``AIRFLOW_CONN_MLFLOW_DEFAULT``) with a task-instance stand-in; importing this
module imports no Airflow. A test module imports the fixtures it uses (``mlflow_boot``,
``mlflow_url``, ``inputs``, ``client``) by name, and skips itself when :data:`HOROVODRUN` is
missing. Import it after putting this folder on ``sys.path`` (``tests/support``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
HOROVODRUN = RUNTIMES_DIR / "training" / "bin" / "horovodrun"
SCRIPT = REPO / "dags" / "include" / "train_flights_delay.py"
EXPERIMENT = "it_training"
#: 1 vs 2 processes: same data, same epochs. With 2 ranks each sees half the rows per epoch at
#: twice the learning rate (Horovod's linear scaling) and half the steps, so the two runs follow
#: different paths; on ~20k rows their holdout AUCs (~0.70) differ by < 0.01 in practice. 0.02
#: leaves room for that noise and still catches a broken allreduce/broadcast (AUC -> ~0.5).
AUC_TOLERANCE = 0.02

SKIP_REASON = (
    f"training runtime not found at {HOROVODRUN.parent.parent} (no bin/horovodrun); create it with "
    "`scripts/runtime_env.sh training .runtimes/training` or set MLOPS_RUNTIMES_DIR"
)

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


def task_environ(home: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator's task process: an Airflow home of its own under ``home``,
    none of this process's Airflow or MLflow settings, the runtimes of this checkout, then ``extra``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES_DIR),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


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
    env = task_environ(
        tmp / f"airflow-home-{task_id}-{try_number}",
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
        **(worker_env or {}),
    )
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
