"""The runtime images for real: built by ``make images`` (scripts/images.sh) and run with podman.

* the serving image answers a Seldon prediction on 127.0.0.1 (published port) with what the
  same MLflow model predicts in this process, and writes its inference log to a mounted folder;
* the drift image scores a window: January against July 2013 weather drifts.

The images are the ones ``make images`` tagged for the current inputs (``scripts/images.sh
--tag``): a test never builds one and never runs a stale one. Without podman (not root, not a
Debian machine) the module is skipped, naming what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "scripts" / "images.sh"
sys.path.insert(0, str(REPO / "tests" / "unit" / "registry"))

pytestmark = pytest.mark.containers

if shutil.which("podman") is None:
    pytest.skip("podman is not installed: run `make images` (as root on Debian)", allow_module_level=True)

CONTAINERS_CONF = (
    subprocess.run(["bash", str(IMAGES), "--env"], capture_output=True, text=True, check=True)
    .stdout.split("=", 1)[1]
    .strip()
)
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=PODMAN_ENV, check=check, timeout=timeout
    )


def image(name: str) -> str:
    """The image ``make images`` built for the current inputs; fails naming the command when absent."""
    tag = subprocess.run(
        ["bash", str(IMAGES), "--tag", name], capture_output=True, text=True, env=PODMAN_ENV
    ).stdout.strip()
    assert tag and podman("image", "exists", tag, check=False).returncode == 0, (
        f"no image {tag or name} for the current inputs: run `make images`"
    )
    return tag


def writable(path: Path) -> Path:
    """A folder the image's non-root user (seldon 1000, mlops 50000) can write to."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def test_the_serving_image_answers_a_seldon_prediction_on_loopback(tmp_path):
    import mlflow.pyfunc
    from airflow_mlops import inference_log
    from flights_models import FEATURES, holdout_frame, save_flights_model

    model_dir = save_flights_model("medium", tmp_path / "model")
    model_dir.chmod(0o755)
    log_dir = writable(tmp_path / "inference")
    rows = holdout_frame()[FEATURES].head(5).astype("float64")
    expected = mlflow.pyfunc.load_model(str(model_dir)).predict(rows)

    from airflow_mlops.hooks.seldon import free_port

    port, name = free_port("127.0.0.1"), f"mlops-serving-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:9000",
        "-v", f"{model_dir}:/mnt/models:ro", "-v", f"{log_dir}:/var/log/inference",
        "-e", "MODEL_VERSION=7", "-e", "INFERENCE_LOG_DIR=/var/log/inference",
        "-e", "INFERENCE_LOG_FLUSH_SECONDS=0.2", image("serving"),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/v1.0/predictions"
        body = {"data": {"names": FEATURES, "ndarray": rows.to_numpy().tolist()}}
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                answer = requests.post(url, json=body, timeout=5)
                break
            except requests.ConnectionError:
                state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert state == "running", podman("logs", name, check=False).stderr[-3000:]
                time.sleep(0.5)
        logs = podman("logs", name, check=False).stderr[-3000:]
        assert answer is not None and answer.status_code == 200, logs
        got = answer.json()["data"]["ndarray"]
        assert got == pytest.approx(list(expected), abs=1e-5)
        assert answer.json()["meta"]["tags"]["model_version"] == "7"
        # published on loopback only
        assert podman("port", name).stdout.split() == ["9000/tcp", "->", f"127.0.0.1:{port}"]

        deadline = time.monotonic() + 30
        while not inference_log.list_files(log_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        logged = inference_log.read(inference_log.list_files(log_dir))
        assert len(logged) == 5 and (logged["model_version"] == "7").all()
        assert logged[FEATURES].to_numpy().tolist() == rows.to_numpy().tolist()
    finally:
        podman("rm", "-f", "-t", "2", name, check=False)


def test_the_drift_image_scores_a_window(tmp_path):
    from airflow_mlops.example_data.nycflights13 import load_weather

    def month(m: int):
        from datetime import UTC, datetime

        return load_weather(datetime(2013, m, 1, tzinfo=UTC), datetime(2013, m + 1, 1, tzinfo=UTC))

    data = writable(tmp_path / "data")
    month(1).to_parquet(data / "reference.parquet", index=False)
    month(7).to_parquet(data / "current.parquet", index=False)
    weather = ["temp", "humid", "wind_speed", "precip", "visib"]
    config = {
        "reference": "/data/reference.parquet",
        "current": "/data/current.parquet",
        "numeric_features": weather,
        "categorical_features": [],
        "p_val": 0.05,
        "output": "/data/report.json",
    }
    (data / "config.json").write_text(json.dumps(config))
    run = podman("run", "--rm", "-v", f"{data}:/data", image("drift"), "/data/config.json", check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((data / "report.json").read_text())
    assert report["is_drift"] is True and "temp" in report["drifted_features"]
    assert set(report["features"]) == set(weather)
    assert report["detector"].startswith("alibi-detect ")


def test_horovodrun_np2_trains_the_example_model_inside_the_training_image(tmp_path):
    """The training image's patched horovod (Gloo) runs two ranks of the example model's
    training on real flights (bench/train.py drives it, the repository mounted read-only) and
    logs the run and the model to an MLflow file store in a mounted folder."""
    work = writable(tmp_path / "work")
    inputs = [sys.executable, str(REPO / "bench" / "train.py"), "--write-inputs", str(work / "inputs")]
    subprocess.run([*inputs, "--days", "31"], check=True, capture_output=True, timeout=300)
    run = podman(
        "run", "--rm", "-v", f"{REPO}:/repo:ro", "-v", f"{work}:/work", "-w", "/repo", image("training"),
        "python", "bench/train.py", "--python", "/opt/mlops/venv/bin/python", "--inputs", "/work/inputs",
        "--tracking-uri", "file:///work/mlruns", "--modes", "horovod_np2", "--repeat", "1", "--epochs", "3",
        "--json", "/work/out.json", check=False, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    out = json.loads((work / "out.json").read_text())
    (row,) = out["rows"]["horovod_np2"]
    assert row["processes"] == 2 and row["samples_per_s"] > 0
    assert row["holdout_roc_auc"] > 0.65  # a broken allreduce/broadcast gives ~0.5
    runtime = out["summary"]["runtime"]
    assert runtime["horovod"] == "0.28.1" and runtime["horovod_gloo"] is True
    assert runtime["python_path"] == "/opt/mlops/venv/bin/python"
    assert list((work / "mlruns").glob("*/models/*")), "no model logged to the MLflow store"


PARSE_DAGS = """
import json
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.providers_manager import ProvidersManager

dags = Path("/opt/airflow/dags")
bag = BundleDagBag(str(dags), bundle_path=dags)  # the folder on sys.path, as the dag processor has it
print(json.dumps({
    "dags": sorted(bag.dag_ids),
    "errors": {k: v[-500:] for k, v in bag.import_errors.items()},
    "provider": ProvidersManager().providers.get("airflow-provider-mlops") is not None,
}))
"""


def test_the_airflow_image_carries_the_provider_and_parses_the_example_dags():
    """The control-plane image: Airflow with the provider registered, and the example DAGs it
    ships parse without an import error (as its dag processor would parse them)."""
    run = podman("run", "--rm", "-e", "AIRFLOW__CORE__LOAD_EXAMPLES=False", image("airflow"),
                 "python", "-c", PARSE_DAGS, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["provider"] is True
    expected = {"flights_delay_pipeline", "flights_delay_retrain", "flights_delay_rollback"}
    assert expected <= set(result["dags"])
