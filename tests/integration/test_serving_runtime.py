"""Integration test of the serving runtime (seldon-core 1.17.1 + MLflow pyfunc).

Runs against the serving virtualenv ``$MLOPS_RUNTIMES_DIR/serving`` (default
``<repo>/.runtimes/serving``, built from ``docker/serving/requirements.txt``).
A tiny real MLflow pytorch model is saved with that venv's python, the seldon
microservice is started on free ports bound to 127.0.0.1 through
``provider/airflow_mlops/runtimes/seldon_serve.py`` (two gunicorn workers with
several threads each) and queried over HTTP.  Nothing here imports the serving
stack into the test process; the Parquet inference log it writes is read back
with the control plane's ``airflow_mlops.inference_log``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pandas as pd
import pytest
import requests
from airflow_mlops import inference_log

REPO = Path(__file__).resolve().parents[2]
RUNTIMES_SRC = REPO / "provider" / "airflow_mlops" / "runtimes"
SERVING_VENV = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve() / "serving"
SERVING_PYTHON = SERVING_VENV / "bin" / "python"

FEATURES = ["a", "b", "c"]
ROWS = [[0.1, 0.2, 0.3], [1, 2, 3]]
MODEL_VERSION = "it-7"
READY_TIMEOUT_S = float(os.environ.get("MLOPS_SERVING_READY_TIMEOUT", "120"))
FLUSH_S = 0.2  # INFERENCE_LOG_FLUSH_SECONDS of the server
LOG_TIMEOUT_S = 30.0
LOG_FILE = re.compile(r"hour=\d{4}-\d{2}-\d{2}T\d{2}/part-\d{8}T\d{6}\.\d{6}Z-(\d+)-\d{6}\.parquet")

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
import json, os, sys, tempfile, time
from pathlib import Path
import numpy as np
import seldon_model
from seldon_model import MlflowModel

m = MlflowModel()
m.load()
out = m.predict(np.asarray(json.loads(sys.argv[1])), json.loads(sys.argv[2]))
tags = m.tags()

# the cost of logging on the request path: one append to the buffer
w = seldon_model.InferenceLogWriter(tempfile.mkdtemp(), flush_seconds=3600, max_rows=10**9)
rows, preds = np.asarray(json.loads(sys.argv[1])), out
n = 20000
t0 = time.perf_counter()
for i in range(n):
    w.append("r", 0, "v", 1.0, ["a", "b", "c"], rows, preds)
append_us = (time.perf_counter() - t0) / n * 1e6
w._buffer.clear()

print("RESULT " + json.dumps({
    "shape": list(out.shape),
    "predictions": out.tolist(),
    "tags": tags,
    "append_us": append_us,
    "files_before_exit": [str(p) for p in Path(os.environ["INFERENCE_LOG_DIR"]).rglob("*.parquet")],
    "airflow_imported": any(k == "airflow" or k.startswith("airflow.") for k in sys.modules),
}))
"""

BROKEN_LOG_PREDICT = r"""
import json, os, sys
import numpy as np
from seldon_model import MlflowModel

m = MlflowModel()
m.load()
log_dir = os.environ["INFERENCE_LOG_DIR"]
os.rmdir(log_dir)
open(log_dir, "w").close()  # a file where the log directory was: every write fails
out = m.predict(np.asarray(json.loads(sys.argv[1])), json.loads(sys.argv[2]))
print("RESULT " + json.dumps({
    "predictions": out.tolist(),
    "flushed": m.flush_inference_log(),
    "dropped_rows": m._log_writer.dropped_rows,
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
        "INFERENCE_LOG_FLUSH_SECONDS",
        "INFERENCE_LOG_MAX_ROWS",
        "GUNICORN_WORKERS",
        "GUNICORN_THREADS",
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
    # the inference log is Parquet: pyarrow must import beside the runtime's numpy<2
    check = subprocess.run(
        [str(SERVING_PYTHON), "-c", "import numpy, pyarrow.parquet"],
        env=_serving_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check.returncode != 0:
        pytest.fail(
            "pyarrow does not import in the serving runtime, so the inference log cannot be written "
            f"(pyarrow>=26 refuses numpy<2: pin pyarrow<26 in docker/serving/requirements.txt):\n"
            f"{check.stderr[-1500:]}"
        )
    return SERVING_PYTHON


@pytest.fixture(scope="module")
def models(serving_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("models")
    result = _run_serving_python(BUILD_MODELS, str(root), json.dumps(ROWS), cwd=root)
    return {"pt2": root / "pt2", "pickle": root / "pickle", "expected": result["expected"]}


@contextmanager
def _serve(model_dir: Path, work: Path, *extra_args: str, **env: str) -> Iterator[dict]:
    """Run the seldon microservice on free loopback ports until the block ends (SIGTERM)."""
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
        *extra_args,
    ]
    full_env = _serving_env(
        MODEL_URI=str(model_dir),
        MODEL_VERSION=MODEL_VERSION,
        INFERENCE_LOG_DIR=str(log_dir),
        **env,
    )
    base = f"http://127.0.0.1:{http_port}"
    started = time.monotonic()
    with open(server_log, "wb") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=str(work), env=full_env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop() -> None:
        """Graceful stop: SIGTERM to the whole group (gunicorn arbiter, workers, gRPC, metrics)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass

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
            "stop": stop,
        }
    finally:
        stop()
        # gunicorn/grpc children share the session's process group: reap stragglers.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def server(models: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    # two worker processes with several threads each write the inference log concurrently
    with _serve(
        models["pt2"],
        tmp_path_factory.mktemp("serving"),
        "--workers",
        "2",
        "--threads",
        "4",
        INFERENCE_LOG_FLUSH_SECONDS=str(FLUSH_S),
    ) as srv:
        yield srv


def _logged(log_dir: Path, request_ids: set[str], timeout: float = LOG_TIMEOUT_S) -> pd.DataFrame:
    """The logged rows of ``request_ids``, once all of them are flushed (every FLUSH_S)."""
    deadline = time.monotonic() + timeout
    while True:
        df = inference_log.read(inference_log.list_files(log_dir))
        df = df[df["request_id"].isin(request_ids)]
        missing = request_ids - set(df["request_id"])
        if not missing:
            return df.reset_index(drop=True)
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(missing)} of {len(request_ids)} requests not in the inference log after {timeout}s"
            )
        time.sleep(FLUSH_S)


def _predict(base: str, rows: list[list[float]], names: list[str] | None = FEATURES) -> tuple[list, str]:
    data: dict = {"ndarray": rows}
    if names is not None:
        data["names"] = names
    resp = requests.post(f"{base}/api/v1.0/predictions", json={"data": data}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["meta"]["tags"]["model_version"] == MODEL_VERSION
    return body["data"]["ndarray"], body["meta"]["tags"]["request_id"]


def test_prediction_matches_model_and_is_logged(server: dict, models: dict) -> None:
    payload = {"data": {"names": FEATURES, "ndarray": ROWS}}
    before = pd.Timestamp.now(tz="UTC")
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
    # the same rows without feature names: the model's signature has none -> f0..f2
    unnamed_preds, unnamed_id = _predict(server["base"], ROWS, names=None)
    after = pd.Timestamp.now(tz="UTC")

    df = _logged(server["log_dir"], {request_id, unnamed_id})
    files = inference_log.list_files(server["log_dir"])
    assert files
    for f in files:
        assert LOG_FILE.fullmatch(f.relative_to(server["log_dir"]).as_posix()), f
    assert list(df.columns[:6]) == list(inference_log.LOG_COLUMNS)
    assert {"a", "b", "c", "f0", "f1", "f2"} <= set(df.columns)

    named = df[df["request_id"] == request_id].sort_values("row")
    assert named["row"].tolist() == [0, 1]
    assert named[FEATURES].to_numpy().tolist() == ROWS  # as received (float64, no float32 cast)
    assert named[["f0", "f1", "f2"]].isna().all().all()
    assert (named["model_version"] == MODEL_VERSION).all()
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(named["prediction"], preds, strict=True))
    assert named["latency_ms"].nunique() == 1 and named["latency_ms"].iloc[0] > 0
    ts = named["ts"].iloc[0]
    assert str(ts.tz) == "UTC" and before.floor("ms") <= ts <= after, (before, ts, after)

    unnamed = df[df["request_id"] == unnamed_id].sort_values("row")
    assert unnamed[["f0", "f1", "f2"]].to_numpy().tolist() == ROWS
    assert unnamed[FEATURES].isna().all().all()
    assert all(
        math.isclose(a, b, abs_tol=1e-6) for a, b in zip(unnamed["prediction"], unnamed_preds, strict=True)
    )


def test_a_request_tagged_not_to_log_is_answered_and_not_logged(server: dict) -> None:
    """How the drift check scores its reference rows: they are not served traffic."""
    url = f"{server['base']}/api/v1.0/predictions"
    quiet = requests.post(
        url,
        json={"data": {"names": FEATURES, "ndarray": ROWS}, "meta": {"tags": {"mlops_log": False}}},
        timeout=30,
    )
    assert quiet.status_code == 200, quiet.text
    assert len(quiet.json()["data"]["ndarray"]) == len(ROWS)
    quiet_id = quiet.json()["meta"]["tags"]["request_id"]
    _, logged_id = _predict(server["base"], ROWS)  # an ordinary request after it
    df = _logged(server["log_dir"], {logged_id})  # once it is in the log, the quiet one would be too
    time.sleep(3 * FLUSH_S)
    everything = inference_log.read(inference_log.list_files(server["log_dir"]))
    assert quiet_id not in set(everything["request_id"]) and logged_id in set(df["request_id"])


def test_concurrent_requests_lose_no_rows(server: dict) -> None:
    """200 requests from 8 client threads across 2 gunicorn workers x 4 threads: every row of
    every request is logged once, with the request id the response carried."""
    n_requests = 200

    def rows_of(i: int) -> list[list[float]]:
        # 1-4 rows per request; feature "a" identifies the request, "b" the row
        return [[float(i), float(r), 0.5] for r in range(1 + i % 4)]

    def call(i: int) -> tuple[int, list, str, float]:
        t0 = time.perf_counter()
        preds, request_id = _predict(server["base"], rows_of(i))
        return i, preds, request_id, (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(n_requests)))
    wall = time.perf_counter() - t0
    latencies = sorted(r[3] for r in results)
    print(
        f"\n{n_requests} concurrent requests in {wall:.2f}s: p50 {latencies[len(latencies) // 2]:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.1f} ms"
    )
    ids = {r[2] for r in results}
    assert len(ids) == n_requests  # one request id per request, none reused across threads

    df = _logged(server["log_dir"], ids)
    expected_rows = sum(len(rows_of(i)) for i in range(n_requests))
    assert len(df) == expected_rows
    assert not df.duplicated(["request_id", "row"]).any()
    for i, preds, request_id, _ in results:
        got = df[df["request_id"] == request_id].sort_values("row")
        assert got["row"].tolist() == list(range(len(rows_of(i))))
        assert got[FEATURES].to_numpy().tolist() == rows_of(i)  # its own rows, not another request's
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got["prediction"], preds, strict=True))
    assert (df["model_version"] == MODEL_VERSION).all()
    pids = {
        LOG_FILE.fullmatch(f.relative_to(server["log_dir"]).as_posix()).group(1)
        for f in inference_log.list_files(server["log_dir"])
    }
    print(f"inference log written by {len(pids)} worker process(es)")
    # the control-plane reader sees exactly these rows through its cursor API as well
    # the log also holds the earlier tests' rows: ask for all of this version's rows
    logged = inference_log.read(inference_log.list_files(server["log_dir"]))
    window, cursor = inference_log.read_window(
        server["log_dir"],
        min_rows=int((logged["model_version"] == MODEL_VERSION).sum()),
        model_version=MODEL_VERSION,
    )
    assert cursor is not None and ids <= set(window["request_id"])


def test_rows_buffered_at_shutdown_are_written(models: dict, tmp_path: Path) -> None:
    """A flush interval longer than the server lives: the gunicorn workers write their buffers
    when they exit on SIGTERM (atexit)."""
    with _serve(
        models["pickle"],
        tmp_path,
        "--workers",
        "2",
        "--grpc-workers",
        "0",
        INFERENCE_LOG_FLUSH_SECONDS="3600",
    ) as srv:
        ids = {_predict(srv["base"], ROWS)[1] for _ in range(10)}
        assert inference_log.list_files(srv["log_dir"]) == []  # all still buffered
        srv["stop"]()
    df = _logged(srv["log_dir"], ids, timeout=1)
    assert len(df) == 2 * len(ids) and not df.duplicated(["request_id", "row"]).any()


def test_metadata_and_metrics_endpoints(server: dict) -> None:
    meta = requests.get(f"{server['base']}/api/v1.0/metadata", timeout=10)
    assert meta.status_code == 200, meta.text
    assert meta.json()["versions"] == [MODEL_VERSION]
    assert meta.json()["platform"] == "mlflow"
    # the model's signature (a TensorSpec here: float32, 3 values per row in, one out)
    assert meta.json()["inputs"] == [{"name": "input_0", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta.json()["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 1]}]
    # seldon 1.17 serves prometheus metrics on --metrics-port at /metrics
    # (PREDICTIVE_UNIT_METRICS_ENDPOINT); seldon_api_executor_* appear after a request.
    prom = requests.get(f"http://127.0.0.1:{server['ports']['metrics']}/metrics", timeout=10)
    assert prom.status_code == 200, prom.text[:500]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"data": {"ndarray": [[0.1, 0.2]]}}, "got 2 values per row"),
        ({"data": {"names": FEATURES, "ndarray": [[0.1, "x", 0.3]]}}, "takes numbers, row 0 has 'x'"),
        ({"data": {"names": ["a", "b"], "ndarray": ROWS}}, "got 2 feature names for 3 values per row"),
    ],
    ids=["wrong-width", "string-for-number", "names-and-width"],
)
def test_bad_input_is_a_400_naming_what_the_model_expects(server: dict, payload: dict, fragment: str) -> None:
    """The client's error, in Seldon's error shape: not a 500 MICROSERVICE_INTERNAL_ERROR."""
    answer = requests.post(f"{server['base']}/api/v1.0/predictions", json=payload, timeout=30)
    assert answer.status_code == 400, answer.text
    status = answer.json()["status"]
    assert (status["code"], status["reason"], status["status"]) == (400, "MICROSERVICE_BAD_DATA", "FAILURE")
    assert fragment in status["info"] and "(float32, shape [-1, 3])" in status["info"], status["info"]
    assert _predict(server["base"], ROWS)[0]  # the server serves on


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
    """The legacy pickle format returns a DataFrame from pyfunc; same contract. With a flush
    interval longer than the process lives, the rows are written by the exit flush."""
    log_dir = tmp_path / "log"
    result = _run_serving_python(
        IN_PROCESS_PREDICT,
        json.dumps(ROWS),
        json.dumps(FEATURES),
        cwd=RUNTIMES_SRC,
        MODEL_URI=str(models["pickle"]),
        INFERENCE_LOG_DIR=str(log_dir),
        INFERENCE_LOG_FLUSH_SECONDS="3600",
    )
    assert result["shape"] == [2]
    pairs = zip(result["predictions"], models["expected"], strict=True)
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in pairs)
    assert result["tags"]["model_version"] == "unknown"
    assert not result["airflow_imported"]
    print(f"\ninference-log append on the request path: {result['append_us']:.2f} µs")
    assert result["files_before_exit"] == []  # buffered, not yet written ...
    files = inference_log.list_files(log_dir)  # ... until the process exited
    assert len(files) == 1, files
    df = inference_log.read(files)
    assert df["request_id"].tolist() == [result["tags"]["request_id"]] * 2
    assert df[FEATURES].to_numpy().tolist() == ROWS
    assert (df["model_version"] == "unknown").all()
    assert all(
        math.isclose(a, b, abs_tol=1e-6) for a, b in zip(df["prediction"], result["predictions"], strict=True)
    )
    assert not list(log_dir.glob(".*.tmp"))


def test_inference_log_failure_does_not_fail_predictions(models: dict, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    result = _run_serving_python(
        BROKEN_LOG_PREDICT,
        json.dumps(ROWS),
        json.dumps(FEATURES),
        cwd=RUNTIMES_SRC,
        MODEL_URI=str(models["pickle"]),
        INFERENCE_LOG_DIR=str(log_dir),
    )
    pairs = zip(result["predictions"], models["expected"], strict=True)
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in pairs)
    assert result["flushed"] is None and result["dropped_rows"] == 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))


METRICS_UPDATES = r"""
import json, os
from multiprocessing import managers
from seldon_core.metrics import SeldonMetrics
import seldon_serve

calls = []
call = managers.BaseProxy._callmethod

def counted(self, name, *args, **kwargs):
    calls.append(name)
    return call(self, name, *args, **kwargs)

managers.BaseProxy._callmethod = counted

def round_trips(metrics, custom):
    calls.clear()
    metrics.update(custom, "predict")
    return len(calls)

out = {}
plain = SeldonMetrics()
out["plain_empty"] = round_trips(plain, [])
seldon_serve.skip_empty_metrics_updates()
seldon_serve.skip_empty_metrics_updates()  # idempotent: one wrapper, not two
patched = SeldonMetrics()
out["patched_empty"] = round_trips(patched, [])
out["patched_entries"] = len(dict(patched.data))
out["patched_counter"] = round_trips(patched, [{"type": "COUNTER", "key": "rows", "value": 3}])
patched.update([{"type": "COUNTER", "key": "rows", "value": 2}], "predict")
out["counted"] = [v["value"] for v in dict(patched.data)[os.getpid()].values()]
print("RESULT " + json.dumps(out))
"""


def test_an_empty_metrics_update_costs_no_round_trip_and_real_metrics_still_count() -> None:
    """seldon-core calls ``SeldonMetrics.update`` on every request, with no metrics unless the
    model reports some: six round trips to its multiprocessing manager for nothing. The
    launcher skips those calls; a model's own metrics are recorded as before."""
    result = _run_serving_python(METRICS_UPDATES, cwd=RUNTIMES_SRC)
    assert result["plain_empty"] >= 4  # what seldon-core does unpatched (lock, get, lock, set)
    assert result["patched_empty"] == 0
    assert result["patched_entries"] == 0
    assert result["patched_counter"] == result["plain_empty"]
    assert result["counted"] == [5]
