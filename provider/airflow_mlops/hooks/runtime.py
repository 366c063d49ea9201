"""Run commands inside an isolated runtime environment (training, serving, drift).

Libraries that cannot live beside Airflow (horovod, seldon-core, alibi-detect) get a virtual
environment each, built from ``docker/<runtime>/requirements.txt`` — the same file the
runtime's container image uses, so local and Kubernetes mode run the same pins.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.exceptions import MissingRuntimeError, MlopsError

# Variables of Airflow's own process that must not leak into an isolated environment.
_ERROR_LINE = re.compile(r"^(\[\d+\]<std(err|out)>:)?\s*[\w.]*(Error|Exception)\b.*:")
_ISOLATION_DROP = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")


class RuntimeCommandError(MlopsError):
    """A command in a runtime environment exited with a non-zero status."""


class RuntimeHook(BaseHook):
    """
    Locate a runtime environment and run its programs, streaming their output to the task log.

    :param runtime: name of the runtime: ``training``, ``serving`` or ``drift``.
    :param runtimes_dir: folder holding the environments; defaults to ``[mlops] runtimes_dir``.
    """

    hook_name = "MLOps runtime"

    def __init__(self, runtime: str, runtimes_dir: str | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self._runtimes_dir = runtimes_dir
        self._proc: subprocess.Popen | None = None

    @cached_property
    def env_dir(self) -> Path:
        root = Path(self._runtimes_dir) if self._runtimes_dir else settings.runtimes_dir()
        path = root / self.runtime
        if not (path / "bin" / "python").exists():
            raise MissingRuntimeError(self.runtime, str(path))
        return path

    def bin(self, program: str) -> str:
        """Absolute path of ``program`` in the environment's ``bin`` folder."""
        return str(self.env_dir / "bin" / program)

    @property
    def python(self) -> str:
        return self.bin("python")

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process: ours minus Python isolation breakers, env's bin first."""
        env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_DROP}
        env["PATH"] = f"{self.env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdout=subprocess.PIPE,
    ) -> subprocess.Popen:
        """Start ``args`` in its own process group (so ``on_kill`` can stop all its children)."""
        self.log.info("Running in the %s runtime: %s", self.runtime, " ".join(map(str, args)))
        return subprocess.Popen(
            [str(a) for a in args],
            env=self.environ(env),
            cwd=cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        log_prefix: str = "",
    ) -> list[str]:
        """
        Run ``args`` to completion, each output line going to the task log as it comes.

        :param timeout: seconds after which the command and its children are stopped.
        :return: the last 200 output lines.
        :raises RuntimeCommandError: on a non-zero exit or a timeout, naming the error lines.
        """
        self._proc = proc = self.start(args, env=env, cwd=cwd)
        tail: deque[str] = deque(maxlen=200)
        errors: deque[str] = deque(maxlen=20)  # kept apart: a long traceback must not push them out
        # output may stop while the command hangs: a timer, not the read loop, enforces the timeout
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            self.terminate()

        watchdog = threading.Timer(timeout, expire) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if _ERROR_LINE.search(line):
                    errors.append(line)
                self.log.info("%s%s", log_prefix, line)
            code = proc.wait()
        finally:
            if watchdog:
                watchdog.cancel()
            if proc.poll() is None:
                self.terminate()
        program = Path(str(args[0])).name
        if timed_out.is_set():
            raise RuntimeCommandError(
                f"{program} in the {self.runtime} runtime did not finish within {timeout:.0f}s and was "
                f"stopped.\n" + _explain(list(errors), list(tail))
            )
        if code != 0:
            raise RuntimeCommandError(
                f"{program} in the {self.runtime} runtime exited with status {code}.\n"
                + _explain(list(errors), list(tail))
            )
        return list(tail)

    def terminate(self, grace: float = 10.0) -> None:
        """Stop the running command and every process it started (used by ``on_kill``)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _explain(errors: list[str], lines: list[str]) -> str:
    """The error lines of the output first (a launcher's own traceback buries a worker's), then its end."""
    parts = []
    if errors:
        parts.append("Errors reported:\n" + "\n".join(dict.fromkeys(errors[-10:])))
    parts.append("Last output:\n" + "\n".join(lines[-15:]))
    return "\n".join(parts)


def stop_process_group(pid: int, grace: float = 10.0) -> bool:
    """
    SIGTERM the process group led by ``pid`` (not our child), then SIGKILL it after ``grace`` s.

    :return: whether there was a group to stop.
    """
    import time

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
