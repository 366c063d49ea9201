"""DAG-parse cost of the example DAGs, as a ratio to a minimal two-task DAG.

Each file is parsed in a fresh interpreter (as the DAG processor's first parse of a file
pays every import), N times, alternating with the baseline so both see the same machine.

    .venv/bin/python bench/parse.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = """
from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
with DAG("baseline", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
    EmptyOperator(task_id="a") >> EmptyOperator(task_id="b")
"""
PARSE = """
import runpy, sys, time
sys.path.insert(0, {dags!r})
t = time.perf_counter()
runpy.run_path({path!r})
print(time.perf_counter() - t)
"""


def parse_seconds(path: Path, env_home: str) -> float:
    code = PARSE.format(dags=str(REPO / "dags"), path=str(path))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"AIRFLOW_HOME": env_home, "PATH": "/usr/bin:/bin"},
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        baseline = Path(home) / "baseline_dag.py"
        baseline.write_text(BASELINE)
        files = sorted((REPO / "dags").glob("*.py"))
        times: dict[str, list[float]] = {"baseline": [], **{f.name: [] for f in files}}
        for _ in range(args.repeat):
            times["baseline"].append(parse_seconds(baseline, home))
            for f in files:
                times[f.name].append(parse_seconds(f, home))
    base = statistics.median(times["baseline"])
    result = {
        name: {
            "median_s": round(statistics.median(ts), 3),
            "ratio_to_baseline": round(statistics.median(ts) / base, 2),
        }
        for name, ts in times.items()
    }
    print(
        json.dumps(
            {"repeat": args.repeat, "when": time.strftime("%Y-%m-%d %H:%M"), "files": result}, indent=2
        )
    )


if __name__ == "__main__":
    main()
