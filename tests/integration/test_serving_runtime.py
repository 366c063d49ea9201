"""Integration test of the serving runtime (seldon-core 1.17.1 + MLflow pyfunc).

Runs against the serving virtualenv ``$MLOPS_RUNTIMES_DIR/serving`` (default
``<repo>/.runtimes/serving``, built from ``docker/serving/requirements.txt``).
A tiny real MLflow pytorch model is saved with that venv's python, the seldon
microservice is started on free ports bound to 127.0.0.1 through
``provider/airflow_mlops/runtimes/seldon_serve.py`` and queried over HTTP.
Nothing here imports the serving stack into the test process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_SRC = REPO / "provider" / "airflow_mlops" / "runtimes"
SERVING_VENV = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve() / "serving"
SERVING_PYTHON = SERVING_VENV / "bin" / "python"

FEATURES = ["a", "b", "c"]
ROWS = [[0.1, 0.2, 0.3], [1, 2, 3]]
MODEL_VERSION = "it-7"
READY_TIMEOUT_S = float(os.environ.get("MLOPS_SERVING_READY_TIMEOUT", "120"))

pytestmark = pytest.mark.integration

BUILD_MODELS = r"""
import json, sys
import numpy as np
import torch
import mlflow.pytorch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

out, rows = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid()).eval()
example = np.asarray(rows, dtype=np.float32)
# mlflow 3.17 defaults to the "pt2" (torch.export) format, which needs an
# input example and a TensorSpec signature; "pickle" is the legacy format.
signature = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1))]),
)
mlflow.pytorch.save_model(model, out + "/pt2", serialization_format="pt2",
                          input_example=example, signature=signature)
mlflow.pytorch.save_model(model, out + "/pickle", serialization_format="pickle")
with torch.no_grad():
    expected = model(torch.from_numpy(example)).reshape(-1).tolist()
print("RESULT " + json.dumps({"expected": expected}))
"""

IN_PROCESS_PREDICT = r"""
import json, sys
import numpy as np
from seldon_model import MlflowModel

m = MlflowModel()
m.load()
out = m.predict(np.asarray(json.loads(sys.argv[1])), json.loads(sys.argv[2]))
print("RESULT " + json.dumps({
    "shape": list(out.shape),
    "predictions": out.tolist(),
    "tags": m.tags(),
    "airflow_imported": any(k == "airflow" or k.startswith("airflow.") for k in sys.modules),
}))
"""


def _serving_env(**extra: str) -> dict[str, str]:
    dropped = (
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "MODEL_URI",
        "MODEL_VERSION",
        "MODEL_NAME",
        "INFERENCE_LOG_DIR",
        "CLASS_NAMES",
        "SELDON_BIND_HOST",
    )
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _run_serving_python(code: str, *args: str, cwd: Path, timeout: float = 600, **env: str) -> dict:
    proc = subprocess.run(
        [str(SERVING_PYTHON), "-c", code, *args],
        cwd=str(cwd),
        env=_serving_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"serving python failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, f"no RESULT line in output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(results[-1][len("RESULT ") :])


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _non_loopback_addresses() -> list[str]:
    addresses: list[str] = []
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
        addresses.extend(out.split())
    except (OSError, subprocess.SubprocessError):
        pass
    if not addresses:  # ask the routing table which source address it would use; sends nothing
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))
                addresses.append(s.getsockname()[0])
        except OSError:
            pass
    usable = []
    for addr in addresses:
        if addr.startswith("127.") or addr in ("::1", "0.0.0.0") or addr.lower().startswith("fe80"):
            continue
        if addr not in usable:
            usable.append(addr)
    return usable


def _can_connect(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no server log>"


@pytest.fixture(scope="module")
def serving_python() -> Path:
    if not SERVING_PYTHON.exists():
        pytest.skip(
            f"serving runtime venv not found at {SERVING_VENV} (set MLOPS_RUNTIMES_DIR or create it from "
            "docker/serving/requirements.txt)"
        )
    return SERVING_PYTHON


@pytest.fixture(scope="module")
def models(serving_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("models")
    result = _run_serving_python(BUILD_MODELS, str(root), json.dumps(ROWS), cwd=root)
    return {"pt2": root / "pt2", "pickle": root / "pickle", "expected": result["expected"]}


@pytest.fixture(scope="module")
def server(models: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("serving")
    log_dir = work / "inference-log"
    server_log = work / "server.log"
    http_port, grpc_port, metrics_port = _free_ports(3)
    cmd = [
        str(SERVING_PYTHON),
        str(RUNTIMES_SRC / "seldon_serve.py"),
        "--host",
        "127.0.0.1",
        "seldon_model.MlflowModel",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
    ]
    env = _serving_env(
        MODEL_URI=str(models["pt2"]),
        MODEL_VERSION=MODEL_VERSION,
        INFERENCE_LOG_DIR=str(log_dir),
    )
    base = f"http://127.0.0.1:{http_port}"
    started = time.monotonic()
    with open(server_log, "wb") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=str(work), env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = started + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"microservice exited with rc={proc.returncode}:\n{_tail(server_log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"microservice not ready after {READY_TIMEOUT_S:.0f}s:\n{_tail(server_log)}")
            try:
                # /health/status calls the model's health_status(); the sync
                # gunicorn worker answers only once load() has finished.
                if requests.get(f"{base}/health/status", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        print(f"\nseldon microservice ready after {ready_s:.1f}s: {' '.join(cmd)}")
        yield {
            "base": base,
            "ports": {"http": http_port, "grpc": grpc_port, "metrics": metrics_port},
            "log_dir": log_dir,
            "server_log": server_log,
            "ready_s": ready_s,
        }
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        # gunicorn/grpc children share the session's process group: reap stragglers.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_prediction_matches_model_and_is_logged(server: dict, models: dict) -> None:
    payload = {"data": {"names": FEATURES, "ndarray": ROWS}}
    t0 = time.perf_counter()
    resp = requests.post(f"{server['base']}/api/v1.0/predictions", json=payload, timeout=30)
    print(f"\nfirst prediction: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    preds = body["data"]["ndarray"]
    assert len(preds) == 2
    for got, want in zip(preds, models["expected"], strict=False):
        assert 0.0 < got < 1.0
        assert math.isclose(got, want, abs_tol=1e-5), (preds, models["expected"])
    tags = body["meta"]["tags"]
    assert tags["model_version"] == MODEL_VERSION
    request_id = tags["request_id"]

    files = sorted(server["log_dir"].glob("*.jsonl"))
    assert len(files) == 1, files
    datetime.strptime(files[0].stem, "%Y-%m-%d-%H")
    lines = files[0].read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["request_id"] == request_id
    assert record["model_version"] == MODEL_VERSION
    assert record["features"] == FEATURES
    assert record["rows"] == ROWS and len(record["rows"]) == 2
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(record["predictions"], preds, strict=True))
    assert record["latency_ms"] >= 0
    assert datetime.fromisoformat(record["ts"]).utcoffset().total_seconds() == 0


def test_metadata_and_metrics_endpoints(server: dict) -> None:
    meta = requests.get(f"{server['base']}/api/v1.0/metadata", timeout=10)
    assert meta.status_code == 200, meta.text
    assert meta.json()["versions"] == [MODEL_VERSION]
    assert meta.json()["platform"] == "mlflow"
    # seldon 1.17 serves prometheus metrics on --metrics-port at /metrics
    # (PREDICTIVE_UNIT_METRICS_ENDPOINT); seldon_api_executor_* appear after a request.
    prom = requests.get(f"http://127.0.0.1:{server['ports']['metrics']}/metrics", timeout=10)
    assert prom.status_code == 200, prom.text[:500]


def test_bound_to_loopback_only(server: dict) -> None:
    ports = server["ports"]
    for name, port in ports.items():
        # the gRPC server is its own process that loads the model again: it may listen later
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _can_connect("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _can_connect("127.0.0.1", port), f"{name} port {port} not reachable on loopback"
    addresses = _non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback address to probe")
    for addr in addresses:
        for name, port in ports.items():
            assert not _can_connect(addr, port), f"{name} port {port} is reachable on {addr}"


def test_pickle_model_in_process(models: dict, tmp_path: Path) -> None:
    """The legacy pickle format returns a DataFrame from pyfunc; same contract."""
    log_dir = tmp_path / "log"
    result = _run_serving_python(
        IN_PROCESS_PREDICT,
        json.dumps(ROWS),
        json.dumps(FEATURES),
        cwd=RUNTIMES_SRC,
        MODEL_URI=str(models["pickle"]),
        INFERENCE_LOG_DIR=str(log_dir),
    )
    assert result["shape"] == [2]
    pairs = zip(result["predictions"], models["expected"], strict=True)
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in pairs)
    assert result["tags"]["model_version"] == "unknown"
    assert not result["airflow_imported"]
    lines = [line for f in log_dir.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == 1 and json.loads(lines[0])["request_id"] == result["tags"]["request_id"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
