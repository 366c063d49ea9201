"""The supervisor of a local deployment: it restarts the router and model servers that die.

One per deployment, started (or found running) by every deploy (``SeldonHook.ensure_supervisor``)
in a session of its own, recorded in ``supervisor.json`` and the routing
(:mod:`airflow_mlops.serving.state`). It watches every process the routing names — the router,
each replica of each predictor, the shadow — by pid *and* start time, and one that is gone is
started again with the command, working folder and environment recorded with it, **on the same
port**, so the routing stays valid and the router's retry finds it there:

* first the rest of the dead process's group is stopped (a gunicorn worker or metrics server of
  a killed model server still holds its port), by process group, also when its leader is dead;
* the new pid, start time, ``restarts`` (+1) and ``restarted_at`` replace the old ones in the
  routing, under the deployment's lock (:meth:`DeploymentStore.modify`), so a deploy switching
  versions at the same time loses nothing and never sees a restarted server of a version it is
  retiring (a process the routing no longer names is never restarted);
* a process that dies again within :data:`STABLE_S` of its start is restarted with exponential
  backoff (:data:`BACKOFF_S` doubling up to :data:`MAX_BACKOFF_S`), as a process manager would.

The supervisor is itself watched: it keeps a **guard**, a small child process in its process group
that holds the read end of a pipe from it. When the supervisor dies (``kill -9``, a crash) the
pipe closes and the guard starts a new supervisor with the same environment and records it
(``restarts`` + 1, backoff when it keeps dying); a supervisor that stops on purpose (SIGTERM, or a
newer one took over) tells its guard first. Stopping the deployment signals the supervisor's whole
process group, the guard with it, so nothing is restarted behind a stop.

Each restart is logged (with pid, version and port) to the supervisor's log,
``deployments/<name>/supervisor.log``. ``SeldonHook.stop`` stops the supervisor before the
processes, so nothing is restarted behind a stop.

With ``MLOPS_PUBLISH_TO`` in its environment (``[mlops] data_dir`` in an object store) it also
keeps the deployment's publisher running (:mod:`.publish`: the routing and the inference log to
the store, for hosts that share nothing else), restarting it when it dies. Standard library only
(it never imports Airflow; the publisher does, in its own process); it runs as::

    python -m airflow_mlops.serving.supervisor --dir DATA_DIR/deployments/NAME
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from airflow_mlops.serving.publish import PUBLISH_TO_ENV
from airflow_mlops.serving.publish import command as publish_command
from airflow_mlops.serving.state import (
    EMPTY,
    CorruptState,
    DeploymentState,
    DeploymentStore,
    process_record,
    replicas_of,
    stop_group,
    tracked_alive,
)

#: seconds between two looks at the processes
INTERVAL_S = 0.1
#: a process that ran at least this long before it died is restarted at once
STABLE_S = 10.0
#: the first delay before restarting a process that keeps dying, doubled each time ...
BACKOFF_S = 0.5
#: ... up to this
MAX_BACKOFF_S = 30.0
#: seconds between two starts of the publisher (it retries failed uploads itself)
PUBLISHER_RESTART_S = 5.0


def command(directory: str | Path, guard_of: int | None = None) -> list[str]:
    """The command line of a deployment's supervisor (or, with ``guard_of``, of its guard)."""
    argv = [sys.executable, "-m", "airflow_mlops.serving.supervisor", "--dir", str(directory)]
    return [*argv, "--guard", str(guard_of)] if guard_of else argv


def backoff_delay(fails: int) -> float:
    """Seconds to wait before restarting what died ``fails`` times in a row soon after its start."""
    return min(BACKOFF_S * 2 ** (fails - 1), MAX_BACKOFF_S) if fails else 0.0


def _log(message: str) -> None:
    print(
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{os.getpid()}]: {message}",
        file=sys.stderr,
        flush=True,
    )


def _key(what: str, record: dict[str, Any]) -> tuple[str, Any]:
    """A process's identity across restarts: the router, or a model server by its port."""
    return (what, None if what == "router" else record.get("port"))


class Supervisor:
    def __init__(self, directory: str, interval: float = INTERVAL_S) -> None:
        self.store = DeploymentStore(directory)
        self.interval = interval
        self.stopping = threading.Event()
        self.children: dict[int, subprocess.Popen] = {}
        #: per process key: (consecutive quick deaths, earliest next restart, last start)
        self.backoff: dict[tuple[str, Any], tuple[int, float, float]] = {}
        self._warned: set[tuple[str, Any]] = set()
        self.guard: subprocess.Popen | None = None
        self._guard_not_before = 0.0
        #: the deployment's publisher (serving/publish.py), when ``data_dir`` is an object store
        self.publish_to = os.environ.get(PUBLISH_TO_ENV) or None
        self.publisher: subprocess.Popen | None = None
        self._publisher_not_before = 0.0

    # -- what to watch -------------------------------------------------------------------------
    @staticmethod
    def watched(state: DeploymentState) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if state.router:
            out.append(("router", dict(state.router)))
        for _, _, replica in state.server_processes():
            out.append(("model server", dict(replica)))
        return out

    def _mine(self) -> bool:
        """This process is still the deployment's supervisor (a newer one replaces it)."""
        record = self.store.read_supervisor()
        return bool(record) and record.get("pid") == os.getpid()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        _log(f"watching {self.store.dir}")
        checks = 0
        try:
            while not self.stopping.is_set():
                self._reap()
                self._keep_guard()
                self._keep_publisher()
                checks += 1
                if checks % 50 == 0 and not self._mine():
                    _log("another supervisor took over: exiting")
                    return
                self._check()
                self.stopping.wait(self.interval)
        finally:
            self._release_guard()
            self._stop_publisher()
        _log("stopped")

    # -- the guard: restarts this supervisor when it dies --------------------------------------
    def _keep_guard(self) -> None:
        if self.guard is not None and self.guard.poll() is None:
            return
        if time.monotonic() < self._guard_not_before:
            return
        if self.guard is not None:
            _log(f"the guard (pid {self.guard.pid}) died: starting a new one")
        self._guard_not_before = time.monotonic() + 1.0
        # same process group (no new session): stopping the supervisor's group stops the guard
        self.guard = subprocess.Popen(command(self.store.dir, guard_of=os.getpid()), stdin=subprocess.PIPE)

    def _release_guard(self) -> None:
        """Stopping on purpose: tell the guard not to restart this supervisor."""
        guard, self.guard = self.guard, None
        if guard is not None and guard.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                guard.stdin.write(b"stop\n")
                guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                guard.wait(10)

    # -- the publisher: the routing and inference log to the object store ---------------------
    def _keep_publisher(self) -> None:
        if not self.publish_to or (self.publisher is not None and self.publisher.poll() is None):
            return
        if time.monotonic() < self._publisher_not_before:
            return
        if self.publisher is not None:
            _log(f"the publisher (pid {self.publisher.pid}) died: starting a new one")
        self._publisher_not_before = time.monotonic() + PUBLISHER_RESTART_S
        # same process group: stopping the supervisor's group stops it; same log as this one
        self.publisher = subprocess.Popen(
            publish_command(self.store.dir, self.publish_to), stdin=subprocess.DEVNULL
        )
        _log(f"publishing to {self.publish_to} (publisher pid {self.publisher.pid})")

    def _stop_publisher(self) -> None:
        """Stopping on purpose: the publisher publishes once more, then exits."""
        publisher, self.publisher = self.publisher, None
        if publisher is not None and publisher.poll() is None:
            publisher.terminate()
            try:
                publisher.wait(PUBLISHER_RESTART_S * 6)
            except subprocess.TimeoutExpired:
                publisher.kill()

    def _check(self) -> None:
        try:
            state = self.store.read_or_empty()
        except (OSError, CorruptState) as err:
            _log(f"the routing is unreadable ({err}); retrying")
            state = EMPTY
        for what, record in self.watched(state):
            if not tracked_alive(record):
                self._dead(what, record)

    def _reap(self) -> None:
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    def _dead(self, what: str, record: dict[str, Any]) -> None:
        key = _key(what, record)
        fails, not_before, _ = self.backoff.get(key, (0, 0.0, 0.0))
        if time.monotonic() < not_before:
            return
        if not record.get("argv"):
            if key not in self._warned:
                self._warned.add(key)
                _log(f"the {what} (pid {record.get('pid')}) died and records no command: not restarted")
            return
        with self.store.lock():
            if not self._mine():
                return  # stopped, or replaced: restart nothing behind a stop
            try:
                state = self.store.read_or_empty()
            except (OSError, CorruptState):
                return
            current = next(
                (
                    r
                    for w, r in self.watched(state)
                    if _key(w, r) == key and r.get("pid") == record.get("pid")
                ),
                None,
            )
            if current is None or tracked_alive(current):
                return  # retired by a deploy, or restarted meanwhile
            # the rest of its group (a worker holding the port) goes first, at once: a worker
            # left without its master's manager process answers 500s, killed it answers nothing
            # (and the router retries elsewhere)
            stop_group(current.get("pid"), current.get("pid_start"), kill=True)
            try:
                new = self._start(current)
            except OSError as err:
                _log(f"could not restart the {what} on port {current.get('port')}: {err}")
                self._failed(key, fails)
                return
            self._record(state, what, current, new)
        _, _, last_start = self.backoff.get(key, (0, 0.0, 0.0))
        quick = last_start and time.monotonic() - last_start < STABLE_S
        fails = fails + 1 if quick else 0
        delay = backoff_delay(fails)
        self.backoff[key] = (fails, time.monotonic() + delay, time.monotonic())
        version = f" version {current['version']}" if current.get("version") else ""
        _log(
            f"restarted the {what}{version} on port {current.get('port')}: pid {current.get('pid')} died, "
            f"new pid {new['pid']} (restart {new['restarts']}"
            + (f"; it died {fails} times in a row, next restart no sooner than {delay:.1f}s" if fails else "")
            + ")"
        )

    def _failed(self, key: tuple[str, Any], fails: int) -> None:
        fails += 1
        self.backoff[key] = (fails, time.monotonic() + backoff_delay(fails), 0.0)

    def _start(self, record: dict[str, Any]) -> dict[str, Any]:
        env = {k: os.environ[k] for k in record.get("env_keys") or [] if k in os.environ}
        env.update(record.get("env_set") or {})
        log = record.get("log") or os.devnull
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(a) for a in record["argv"]],
                cwd=record.get("cwd") or None,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.children[proc.pid] = proc
        now = time.time()
        return {
            **record,
            **process_record(proc.pid),
            "started_at": now,
            "restarted_at": now,
            "restarts": int(record.get("restarts") or 0) + 1,
        }

    def _record(self, state: DeploymentState, what: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The new process in the routing (and its own record file), in place of the dead one."""
        if what == "router":
            self.store.write_router(new)  # type: ignore[arg-type]
            return
        fields = {k: new[k] for k in ("pid", "pid_start", "started_at", "restarted_at", "restarts")}

        def replace(current: DeploymentState) -> DeploymentState | None:
            changed = False

            def patched(predictor: dict[str, Any] | None) -> dict[str, Any] | None:
                nonlocal changed
                if not predictor:
                    return predictor
                replicas = replicas_of(predictor)
                out = []
                for replica in replicas:
                    if replica.get("pid") == old.get("pid") and replica.get("port") == old.get("port"):
                        replica = {**replica, **fields}
                        changed = True
                    out.append(replica)
                if predictor.get("replicas"):
                    return {**predictor, "replicas": out, **{k: out[0].get(k) for k in fields}}
                return {**predictor, **out[0]}

            predictors = [patched(p) for p in current.predictors]
            shadow = patched(current.shadow)  # type: ignore[arg-type]
            if not changed:
                return None
            main = next((p for p in predictors if p and p.get("role") == "main"), None)
            return current.replace(predictors=predictors, shadow=shadow, pid=(main or {}).get("pid"))

        self.store.modify(replace)
        cwd = new.get("cwd")
        if cwd and os.path.isdir(cwd):
            record = {k: v for k, v in new.items() if k not in ("role", "traffic", "replicas")}
            self.store.write_process(Path(cwd), record)  # type: ignore[arg-type]


def guard(directory: str, supervisor_pid: int) -> int:
    """
    Wait for the supervisor ``supervisor_pid`` to end; when it died without saying ``stop`` and is
    still the deployment's supervisor, start a new one (with this process's environment, the
    supervisor's) and record it. One restart, then exit: the new supervisor keeps a guard of its own.
    """
    said = sys.stdin.buffer.read()  # returns at EOF: the supervisor closed the pipe or died
    if said.strip() == b"stop":
        return 0
    store = DeploymentStore(directory)
    with store.lock():
        record = store.read_supervisor()
        if not record or record.get("pid") != supervisor_pid:
            return 0  # stopped (no record) or replaced by a newer supervisor meanwhile
        restarts = int(record.get("restarts") or 0) + 1
        # one that keeps dying soon after its start is restarted with backoff
        quick = (
            int(record.get("quick_deaths") or 0) + 1
            if time.time() - float(record.get("started_at") or 0) < STABLE_S
            else 0
        )
        delay = backoff_delay(quick)
    if delay:
        time.sleep(delay)
    with store.lock():
        if (store.read_supervisor() or {}).get("pid") != supervisor_pid:
            return 0
        with open(record.get("log") or os.devnull, "ab") as out:
            proc = subprocess.Popen(
                command(directory),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        now = time.time()
        store.write_supervisor(
            {**record, **process_record(proc.pid), "started_at": now, "restarted_at": now,
             "restarts": restarts, "quick_deaths": quick}
        )  # fmt: skip
    _log(
        f"the supervisor (pid {supervisor_pid}) died: started a new one, pid {proc.pid} (restart {restarts}"
        + (f"; it died {quick} times in a row, waited {delay:.1f}s" if quick else "")
        + ")"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the deployment's folder (holding current.json)")
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    parser.add_argument("--guard", type=int, help="run as the guard of this supervisor pid")
    args = parser.parse_args(argv)
    if args.guard:
        return guard(args.dir, args.guard)
    supervisor = Supervisor(args.dir, args.interval)

    def stop(signum: int, frame: Any) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
