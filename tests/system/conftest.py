"""A real local stack for the system tests: MLflow server + ``airflow standalone``.

Started once per session in a temporary folder on free ports, with the example DAGs and
the test DAGs of ``tests/system/dags`` in its DAG folder; stopped (by pid) at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "dags"))
sys.path.insert(0, str(REPO / "tests" / "support"))

from browser import CHROMIUM, Browser  # noqa: E402
from stack import Stack, free_port  # noqa: E402

PIPELINE = "flights_delay_pipeline"


def _runtimes_dir() -> Path:
    # absolute: the stack's processes run in other folders
    return Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    runtimes = _runtimes_dir()
    missing = [n for n in ("training", "serving", "drift") if not (runtimes / n / "bin" / "python").exists()]
    if missing:
        pytest.skip(f"runtime environments {missing} not found under {runtimes}: run `make runtimes`")
    home = tmp_path_factory.mktemp("stack")
    dags = home / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    for dag_file in (Path(__file__).parent / "dags").glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    s = Stack(
        home=home, airflow_port=free_port(), mlflow_port=free_port(), dags_folder=dags, runtimes_dir=runtimes
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
        for name in ("airflow", "mlflow"):
            log = home / "logs" / f"{name}.log"
            if log.exists():
                print(f"--- end of {name} log ---\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="session")
def scheduled_run(stack) -> dict:
    """
    The pipeline run the scheduler started by itself (nothing triggers it): the stack's DAGs are
    unpaused at creation and the pipeline is ``@monthly`` from a recent start date, so the
    scheduler runs the latest month at once. Waits for it to end; its state is the tests' to check.
    """
    stack.wait_for_dag(PIPELINE)
    run = stack.wait_for_new_run(PIPELINE, timeout=300, run_type="scheduled")
    run["state"] = stack.wait_run(PIPELINE, run["dag_run_id"], timeout=1800)
    return run


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run scripts/install_browser.sh")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()
