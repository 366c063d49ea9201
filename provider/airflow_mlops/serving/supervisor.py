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

Each restart is logged (with pid, version and port) to the supervisor's log,
``deployments/<name>/supervisor.log``. ``SeldonHook.stop`` stops the supervisor before the
processes, so nothing is restarted behind a stop. Standard library only (it never imports
Airflow); it runs as::

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
        while not self.stopping.is_set():
            self._reap()
            checks += 1
            if checks % 50 == 0 and not self._mine():
                _log("another supervisor took over: exiting")
                return
            try:
                state = self.store.read_or_empty()
            except (OSError, CorruptState) as err:
                _log(f"the routing is unreadable ({err}); retrying")
                state = EMPTY
            for what, record in self.watched(state):
                if not tracked_alive(record):
                    self._dead(what, record)
            self.stopping.wait(self.interval)
        _log("stopped")

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
        delay = min(BACKOFF_S * 2 ** (fails - 1), MAX_BACKOFF_S) if fails else 0.0
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
        self.backoff[key] = (fails, time.monotonic() + min(BACKOFF_S * 2 ** (fails - 1), MAX_BACKOFF_S), 0.0)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the deployment's folder (holding current.json)")
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    args = parser.parse_args(argv)
    supervisor = Supervisor(args.dir, args.interval)

    def stop(signum: int, frame: Any) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
