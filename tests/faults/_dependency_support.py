"""Shared by the dependency-fault tests: jobs in a fresh interpreter, servers on free ports.

Each fault case runs the provider's code in a subprocess of the project venv (an ``AIRFLOW_HOME``
of its own, connections as ``AIRFLOW_CONN_*``), so these modules never import Airflow and a case
can set process limits (``RLIMIT_FSIZE``) without touching pytest. A job prints ``EVENT <name>``
lines the test waits on (event-driven, no sleeps), then one ``RESULT <json>`` line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))

from mlflow_server import MlflowServer, free_port  # noqa: E402

__all__ = ["REPO", "Job", "MlflowServer", "RedisServer", "free_port", "job_env"]

#: what every job script starts with: the event and result lines
PRELUDE = r"""
import json, sys


def event(name, **data):
    print("EVENT " + name + " " + json.dumps(data), flush=True)


def wait_for_go(name):
    event(name)
    line = sys.stdin.readline()  # the test answers once it has injected the fault
    assert line.strip() == "go", line


def result(data):
    print("RESULT " + json.dumps(data, default=str), flush=True)
"""


def job_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of the caller's Airflow or MLflow settings, ``AIRFLOW_HOME`` = ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dags").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


class Job:
    """``python -c PRELUDE + script`` in the background; its output goes to ``<tmp>/<name>.log``."""

    def __init__(self, tmp: Path, name: str, script: str, env: dict[str, str]) -> None:
        self.log = tmp / f"{name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + script],
            env=env,
            cwd=tmp,
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._seen = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[tuple[str, dict]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith("EVENT "):
                name, _, data = line[len("EVENT ") :].partition(" ")
                found.append((name, json.loads(data or "{}")))
        return found

    def wait_event(self, name: str, timeout: float = 300) -> dict:
        """Block until the job prints ``EVENT name`` (fails with its output if it ends first)."""
        deadline = time.monotonic() + timeout
        while True:
            for seen, data in self.events():
                if seen == name:
                    return data
            if self.proc.poll() is not None:
                raise AssertionError(f"the job ended before {name!r}:\n{self.output()[-6000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {name!r} within {timeout} s:\n{self.output()[-6000:]}")
            time.sleep(0.1)

    def go(self) -> None:
        """Let a job blocked in ``wait_for_go`` go on."""
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 600) -> dict:
        """Wait for the job; its ``RESULT`` (fails with the output when it exits non-zero)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the job did not end within {timeout} s:\n{self.output()[-6000:]}"
            ) from None
        finally:
            self._out.close()
        output = self.output()
        assert self.proc.returncode == 0, f"job failed (rc={self.proc.returncode}):\n{output[-8000:]}"
        line = next((x for x in reversed(output.splitlines()) if x.startswith("RESULT ")), None)
        assert line is not None, output[-6000:]
        return json.loads(line[len("RESULT ") :])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


class RedisServer:
    """A ``redis-server`` of the test's own on a free port of 127.0.0.1 (never the machine's 6379).

    Append-only with ``fsync always``: what it acknowledged survives ``kill -9``, as a production
    Redis with AOF would, so a restart on the same port and folder brings the data back.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.root)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{(self.root / 'redis.log').read_text()}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final save."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)


def restarted(server: MlflowServer) -> MlflowServer:
    """A new ``mlflow server`` on ``server``'s port and backend store (``server`` stopped first)."""
    server.stop()
    again = MlflowServer(server.root)
    again.port, again.url = server.port, server.url
    return again.start()
