"""Shared set-up of the unit tests.

* Airflow reads its configuration when it is first imported, so this module points
  ``AIRFLOW_HOME`` (and the DAG and plugin folders) at a fresh temporary folder *before*
  any test module imports ``airflow``: the tests never read or write a developer's
  ``~/airflow``.
* Checks that need a fresh interpreter (provider discovery, DAG-parse import guards,
  ``dag.test()`` against a metadata DB, Great Expectations) run as subprocesses. They are
  slow to start (Airflow ~4 s, Great Expectations ~15 s), so a test module may define
  ``start_jobs(jobs)``; it is called as soon as collection ends for every module that
  has selected tests, and the subprocesses run in the background while the in-process
  tests run. A test then waits for its job with ``jobs.result(name)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
JOBS_DIR = Path(__file__).resolve().parent / "_jobs"
#: the control-plane interpreter (the project venv) runs every subprocess
PYTHON = sys.executable

if "airflow" in sys.modules:  # pragma: no cover - a plugin imported Airflow before us
    raise RuntimeError(
        "airflow was imported before tests/unit/conftest.py could isolate AIRFLOW_HOME; "
        "disable the pytest plugin that imports it."
    )

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="mlops-unit-"))


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of an Airflow process whose whole configuration lives under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dags").mkdir(exist_ok=True)
    (home / "plugins").mkdir(exist_ok=True)
    # nothing of the caller's own Airflow configuration may leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(home / "plugins"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


# This process: isolated before any test module imports airflow.
for _name in [k for k in os.environ if k.startswith("AIRFLOW")]:
    del os.environ[_name]
os.environ.update(airflow_env(_SESSION_ROOT / "airflow-home"))


@dataclass(frozen=True)
class JobResult:
    name: str
    argv: list[str]
    returncode: int
    output: str
    seconds: float

    def check(self) -> JobResult:
        """Fail the calling test, with the end of the output, unless the job exited 0."""
        if self.returncode != 0:
            pytest.fail(
                f"job {self.name} ({' '.join(self.argv)}) exited with {self.returncode}:\n"
                + self.output[-6000:],
                pytrace=False,
            )
        return self


class Jobs:
    """Subprocesses started once per session, run a few at a time in the background."""

    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unit-job")
        self._futures: dict[str, Future[JobResult]] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._closed = False

    python = PYTHON
    repo = REPO
    dags_dir = DAGS_DIR

    @staticmethod
    def script(name: str) -> Path:
        """A job script of ``tests/unit/_jobs``."""
        return JOBS_DIR / f"{name}.py"

    @staticmethod
    def airflow_env(home: Path, **extra: str) -> dict[str, str]:
        return airflow_env(home, **extra)

    def workdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def submit(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        timeout: float = 300,
    ) -> None:
        """Start ``argv`` unless a job called ``name`` was already submitted (idempotent)."""
        with self._lock:
            if name in self._futures:
                return
            self._futures[name] = self._pool.submit(
                self._run, name, [str(a) for a in argv], env, cwd, timeout
            )

    def result(self, name: str) -> JobResult:
        if name not in self._futures:
            raise KeyError(f"no job {name!r} was submitted")
        return self._futures[name].result()

    def _run(
        self, name: str, argv: list[str], env: Mapping[str, str] | None, cwd: Path, timeout: float
    ) -> JobResult:
        started = time.monotonic()
        with self._lock:
            if self._closed:
                return JobResult(name, argv, -1, "session ended before the job started", 0.0)
            proc = subprocess.Popen(
                argv,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            self._procs[name] = proc
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output += f"\n[job killed after {timeout} s]"
        return JobResult(name, argv, proc.returncode, output, time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._procs.values())
        for future in self._futures.values():
            future.cancel()
        for proc in procs:  # only the processes this object started, by their handle
            if proc.poll() is None:
                proc.kill()
        self._pool.shutdown(wait=True)


_JOBS_KEY = pytest.StashKey[Jobs]()


def _jobs(config: pytest.Config) -> Jobs:
    if _JOBS_KEY not in config.stash:
        config.stash[_JOBS_KEY] = Jobs(_SESSION_ROOT / "jobs", workers=max(2, min(4, os.cpu_count() or 2)))
    return config.stash[_JOBS_KEY]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules that wait for background jobs last, so their jobs overlap the others."""
    items.sort(key=lambda item: callable(getattr(getattr(item, "module", None), "start_jobs", None)))


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    seen = set()
    for item in session.items:
        module = getattr(item, "module", None)
        if module is None or module.__name__ in seen:
            continue
        seen.add(module.__name__)
        start = getattr(module, "start_jobs", None)
        if callable(start):
            start(_jobs(session.config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _JOBS_KEY in session.config.stash:
        session.config.stash[_JOBS_KEY].close()
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def jobs(pytestconfig: pytest.Config) -> Jobs:
    return _jobs(pytestconfig)
