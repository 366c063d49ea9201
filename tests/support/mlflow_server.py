"""A **real** MLflow tracking server for tests: ``mlflow server`` on a free port of 127.0.0.1.

Shared by every test that needs one (unit, integration, and the subprocess jobs): started the
way ``scripts/stack.py`` starts it (SQLite backend store, local artifact root, one worker, no
GenAI job runners) in its own process group, so that stopping it stops its workers too, and
told to die with the process that started it. It takes ~10-20 s to come up, so callers start it
early (a module's ``start_jobs``) and wait for ``/health`` only when they need it.

Import it after putting this folder on ``sys.path`` (``tests/support``).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: the project venv's ``mlflow`` script, next to the interpreter running the tests
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: get SIGTERM when its parent dies (Linux), so none outlives a killed job."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class MlflowServer:
    """``mlflow server`` with its store under ``root``; ``url`` is the tracking URI."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "mlflow-server.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))}
        env.update(
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            # MLflow >= 3.5 also starts ~10 job-runner processes for its GenAI jobs: none needed
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(MLFLOW),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--backend-store-uri",
                    f"sqlite:///{self.root / 'mlflow.db'}",
                    "--default-artifact-root",
                    str(self.root / "artifacts"),
                    "--workers",
                    "1",
                ],
                env=env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends uvicorn's workers too
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)  # also when the fixture that stops it never ran
        return self

    @property
    def pid(self) -> int | None:
        """Pid of the server (the leader of its process group) while it runs."""
        return self._proc.pid if self._proc is not None else None

    def wait_healthy(self, timeout: float = 120) -> MlflowServer:
        """Block until ``GET /health`` answers 200; fail with the end of the server log otherwise."""
        if self._proc is None:
            raise RuntimeError("the MLflow server was never started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"mlflow server at {self.url} not healthy after {timeout}s:\n{self._log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # the group this Popen created (start_new_session): the server and the workers it spawned
        pgid = proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._group_alive(pgid, proc):
                time.sleep(0.1)
            if not self._group_alive(pgid, proc):
                break
        proc.wait(5)

    @staticmethod
    def _group_alive(pgid: int, proc: subprocess.Popen) -> bool:
        proc.poll()  # reap the leader, or it would count as alive
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


_shared: MlflowServer | None = None


def shared_server(root: Path) -> MlflowServer:
    """The session's server, started under ``root`` on the first call (later calls return it)."""
    global _shared
    if _shared is None:
        _shared = MlflowServer(root).start()
    return _shared
