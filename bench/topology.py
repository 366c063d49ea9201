"""The example pipeline on the Celery topology with an object store, against ``airflow standalone``.

Two stacks of ``scripts/stack.py``, one after the other, each in a folder of its own on free
ports, each running the same DAG files and the same month (the scheduler's own run of
``flights_delay_pipeline`` when it is unpaused, which the replay clock maps to the same month of
2013 for both):

* ``standalone``: what ``make demo`` runs — LocalExecutor (tasks are children of the scheduler),
  SQLite, ``[mlops] data_dir`` a local folder, MLflow's artifacts in a folder;
* ``celery``: what ``make stack-celery`` runs — CeleryExecutor with two workers, PostgreSQL for
  Airflow and MLflow (databases made here and dropped after), Redis as broker, ``[mlops]
  data_dir`` and MLflow's artifacts in a bucket of moto's S3 API server, each worker with a
  data folder of its own, the Seldon operators on the serving queue, Feast's online store in Redis.

Reported per stack, from the task instances Airflow recorded: the run's wall time (first task
start to last task end), the sum of the tasks' own durations, and the per-task overhead:
``queued`` → ``running`` (what the executor adds: a Celery hand-off, a process start) and each
task's own duration; then the celery / standalone ratios.

    .venv/bin/python bench/topology.py [--json out.json]

Needs the runtimes (``make setup``), the machine's PostgreSQL and Redis; ~10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts")]
from stack import POSTGRES_URL, Stack, celery_stack, free_port  # noqa: E402

PIPELINE = "flights_delay_pipeline"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def dags_folder(root: Path) -> Path:
    """The pipeline's DAG file and what it imports, copied: both stacks parse the same files."""
    dags = root / "dags"
    for part in ("include", "feature_repo"):
        shutil.copytree(REPO / "dags" / part, dags / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dags" / f"{PIPELINE}.py", dags)
    return dags


def measure(stack: Stack) -> dict:
    """Start ``stack``, wait for the scheduler's run of the pipeline, read its task instances, stop."""
    try:
        stack.start()
        stack.wait_for_dag(PIPELINE)
        run = stack.wait_for_new_run(PIPELINE, timeout=300, run_type="scheduled")
        state = stack.wait_run(PIPELINE, run["dag_run_id"], timeout=2400)
        tis = stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{run['dag_run_id']}/taskInstances")[
            "task_instances"
        ]
        months = stack.xcom(PIPELINE, run["dag_run_id"], "pick_months")
    finally:
        stack.stop()
    starts = [_time(ti["start_date"]) for ti in tis if ti["start_date"]]
    ends = [_time(ti["end_date"]) for ti in tis if ti["end_date"]]
    waits = [
        (_time(ti["start_date"]) - _time(ti["queued_when"])).total_seconds()
        for ti in tis
        if ti["start_date"] and ti["queued_when"]
    ]
    return {
        "state": state,
        "month": months["start"][:7],
        "tasks": len(tis),
        "wall_s": (max(ends) - min(starts)).total_seconds(),
        "task_seconds_sum": sum(ti["duration"] or 0 for ti in tis),
        "queued_to_running_median_s": statistics.median(waits),
        "queued_to_running_max_s": max(waits),
        "durations": {ti["task_id"]: ti["duration"] for ti in tis},
        "hostnames": sorted({ti["hostname"] for ti in tis if ti["hostname"]}),
    }


def drop_databases(*names: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in names:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    runtimes = Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()
    root = Path(tempfile.mkdtemp(prefix="bench-topology-"))
    dags = dags_folder(root)
    common = {
        "airflow_port": free_port(),
        "mlflow_port": free_port(),
        "dags_folder": dags,
        "runtimes_dir": runtimes,
    }
    results = {"standalone": measure(Stack(home=root / "standalone", **common))}
    database = f"bench_topology_{uuid.uuid4().hex[:8]}"
    try:
        celery = celery_stack(root / "celery", database, feast_project=f"flights_{database[-8:]}", **common)
        results["celery"] = measure(celery)
        celery.clear_redis()
    finally:
        drop_databases(database, f"{database}_mlflow", f"{database}_feast")
    shutil.rmtree(root, ignore_errors=True)

    base, topo = results["standalone"], results["celery"]
    ratios = {
        key: topo[key] / base[key] if base[key] else None
        for key in ("wall_s", "task_seconds_sum", "queued_to_running_median_s")
    }
    shared = sorted(set(base["durations"]) & set(topo["durations"]))
    per_task = {t: (base["durations"][t], topo["durations"][t]) for t in shared}
    print(f"month {base['month']} / {topo['month']}, states {base['state']} / {topo['state']}")
    print(f"{'measure':34} {'standalone':>11} {'celery+S3':>11} {'ratio':>7}")
    for key in ("wall_s", "task_seconds_sum", "queued_to_running_median_s", "queued_to_running_max_s"):
        ratio = topo[key] / base[key] if base[key] else float("nan")
        print(f"{key:34} {base[key]:11.1f} {topo[key]:11.1f} {ratio:7.2f}")
    for task, (a, b) in sorted(per_task.items(), key=lambda kv: -(kv[1][0] or 0))[:8]:
        print(f"  {task:32} {a or 0:11.1f} {b or 0:11.1f} {(b or 0) / a if a else float('nan'):7.2f}")
    print(f"celery ran on {topo['hostnames']}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))
    return 0 if base["state"] == topo["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
