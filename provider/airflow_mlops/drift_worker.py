"""The control plane's side of the long-lived drift worker (``runtimes/drift_worker.py``).

``DriftEventTrigger`` sends each window's check to one worker process per data dir and drift
runtime, which imported alibi-detect once: a check then costs its tests (~0.1-1 s), not a fresh
interpreter's import (~8 s). The first check starts the worker (and waits for it, as long as a
fresh process would have taken); a dead or stuck worker is replaced at the next check, and a
check the worker cannot answer (it died mid-check, MMD) runs as its own ``drift_detect.py``
process as before, so the worker only ever makes a check faster. ``DriftDetectOperator`` uses a
worker that is already running and never starts one from a task.

Where things are: ``<data_dir>/drift/worker/`` holds ``worker.json`` (pid, socket; present
while it accepts checks), ``worker.log`` and the start lock; the socket itself is
``<tmp>/mlops-drift-<uid>-<digest>.sock`` (a Unix socket path must stay under 108 bytes), mode
0600. ``stop()`` (``make stop``) ends it; it also exits by itself after 30 idle minutes.

Standard library only at import: the trigger module imports this in the triggerer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: how long a first check waits for a new worker to import alibi-detect and listen
START_TIMEOUT_S = 180.0
#: how long one check may take in the worker before the client gives up on it (and kills it)
CHECK_TIMEOUT_S = 600.0


class DriftWorker:
    """
    A client of the drift worker of ``data_dir`` and the drift runtime of ``runtimes_dir``.

    :param data_dir: ``[mlops] data_dir`` (default: the configured one).
    :param runtimes_dir: folder of the runtime environments (default: ``[mlops] runtimes_dir``).
    :param idle_exit: seconds without a check after which a worker started here exits.
    :param max_requests: checks after which a worker started here exits (bounded memory).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        runtimes_dir: str | None = None,
        idle_exit: float = 1800.0,
        max_requests: int = 500,
    ) -> None:
        from airflow_mlops import settings

        data_dir = settings.data_dir() if data_dir is None else data_dir
        self.home = Path(data_dir) / "drift" / "worker"
        self.runtimes_dir = runtimes_dir
        self.idle_exit, self.max_requests = idle_exit, max_requests
        # one worker per data dir and drift runtime: keyed by the folders themselves, so a caller
        # naming the configured runtimes dir finds the worker of one that relies on the default
        runtimes = Path(runtimes_dir or settings.runtimes_dir()).resolve()
        digest = hashlib.sha256(f"{Path(data_dir).resolve()}|{runtimes}".encode()).hexdigest()[:16]
        self.socket_path = os.path.join(tempfile.gettempdir(), f"mlops-drift-{os.getuid()}-{digest}.sock")

    @property
    def state_path(self) -> Path:
        return self.home / "worker.json"

    def state(self) -> dict | None:
        """``worker.json``: the running worker's pid and socket, or None."""
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def ensure(self) -> bool:
        """Start a worker unless one runs (the watcher calls this as it starts). True when one runs."""
        conn = self._connect() or self._start()
        if conn is None:
            return False
        conn.close()
        return True

    # -- checks -----------------------------------------------------------------------------
    def check(self, config_path: str | os.PathLike[str], start: bool = True) -> tuple[int, str] | None:
        """
        Run one check (a ``drift_detect.py`` config) in the worker.

        :param start: start a worker when none runs (the watcher); False: use one only if running.
        :return: ``(exit code, output)`` as ``drift_detect.py`` would have given them, or None when
            no worker answered it: the caller runs ``drift_detect.py`` itself.
        """
        # twice: a worker may close between our connect and its accept (it served its last
        # check, or was killed); checks are idempotent, so the next worker simply runs it
        for _ in range(2):
            conn = self._connect()
            if conn is None and start:
                conn = self._start()
            if conn is None:
                return None
            reply = self._ask(conn, str(config_path))
            if reply is not None:
                break
        else:
            return None
        if reply.get("rc") is None:
            return None  # a check it leaves to a process of its own (MMD)
        return int(reply["rc"]), str(reply.get("output") or "")

    def _ask(self, conn: socket.socket, config_path: str) -> dict | None:
        """Send one check, read its answer; None when the worker closed without answering."""
        with conn:
            try:
                conn.settimeout(CHECK_TIMEOUT_S)
                conn.sendall(json.dumps({"config": config_path}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return json.loads(data)
            except TimeoutError:
                log.warning("The drift worker took over %.0fs on one check: stopping it", CHECK_TIMEOUT_S)
                self.stop()
                return None
            except (OSError, ValueError) as err:
                log.info("The drift worker closed without answering (%s)", err)
                return None

    def _connect(self) -> socket.socket | None:
        if self.state() is None:
            return None  # none running, or one still starting (the start lock orders those)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(self.socket_path)
            return sock
        except OSError:
            sock.close()
            return None

    def _start(self) -> socket.socket | None:
        """Start a worker (one at a time: under a lock, and only if none answers by then)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".start.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = self._connect()
            if conn is not None:
                return conn  # another caller started it meanwhile
            self.stop()  # a stuck one, or a stale state and socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            try:
                proc = self._spawn()
            except Exception as err:  # no drift runtime here: the caller's own run says so
                log.warning("The drift worker could not start (%s: %s)", type(err).__name__, err)
                return None
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                conn = self._connect()
                if conn is not None:
                    log.info("Drift worker started (pid %s), log %s", proc.pid, self.home / "worker.log")
                    return conn
                time.sleep(0.1)
            code = proc.poll()
            if code is None:
                self._kill(proc.pid)
            log.warning(
                "The drift worker did not start (%s); see %s",
                f"exit code {code}" if code is not None else f"not ready in {START_TIMEOUT_S:.0f}s",
                self.home / "worker.log",
            )
            return None

    def _spawn(self) -> subprocess.Popen:
        from airflow_mlops import settings
        from airflow_mlops.hooks.runtime import RuntimeHook

        runtime = RuntimeHook("drift", self.runtimes_dir)
        script = str(settings.runtime_script("drift_worker"))
        args = [runtime.python, script, self.socket_path, str(self.state_path)]
        args += ["--idle-exit", str(self.idle_exit), "--max-requests", str(self.max_requests)]
        with open(self.home / "worker.log", "ab") as out:
            # its own session: it outlives the check that started it, and stop() ends it whole
            return subprocess.Popen(
                args, env=runtime.environ(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                stdin=subprocess.DEVNULL, cwd=str(self.home),
            )  # fmt: skip

    # -- stopping ---------------------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the running worker, if any (by the pid it recorded). True when one was stopped."""
        state = self.state()
        with contextlib.suppress(OSError):
            self.state_path.unlink()
        if not state or not state.get("pid"):
            return False
        return self._kill(int(state["pid"]))

    @staticmethod
    def _kill(pid: int) -> bool:
        from airflow_mlops.serving.state import stop_group

        if not _is_worker(pid):
            return False  # gone, or the pid now belongs to another program
        return stop_group(pid, grace=10.0)  # its session's group: SIGTERM, then SIGKILL


def _is_worker(pid: int) -> bool:
    """``pid`` is a live drift worker (its command line names the script), not a reused pid."""
    from airflow_mlops.serving.state import pid_alive

    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"drift_worker.py" in cmdline and pid_alive(pid)


def failure_said(output: str) -> str:
    """What a failed check said: ``drift_detect.py``'s own error lines, else the end of its output."""
    said = [line for line in output.splitlines() if "drift_detect: error:" in line]
    return "\n".join(said) if said else output[-2000:].strip()
