"""The state of local deployments: the one reader and writer of ``<data_dir>/deployments/<name>/``.

Every part of the provider that looks at a local deployment goes through this module: the
hook and the operators (deploy, promote, rollback), the router, the sensor's trigger, the
MLOps page and ``scripts/stack.py stop``. The files::

    deployments/<name>/current.json                      the routing (DeploymentState)
    deployments/<name>/router.json                       the router's process (RouterRecord)
    deployments/<name>/supervisor.json                   the supervisor's process (serving/supervisor.py)
    deployments/<name>/.lock                             held while one writer reads, changes, writes
    deployments/<name>/processes/v<version>-<port>/state.json   each model server started (ServerRecord)

Every file is replaced atomically (written beside, then ``os.replace``): the router re-reads
``current.json`` while requests flow and never sees half a file. Every read-change-write of
``current.json`` holds an exclusive ``flock`` on ``.lock`` (:meth:`DeploymentStore.modify`): the
deploy task and the deployment's supervisor (which records restarts) never lose each other's
update. Readers take no lock.

``current.json`` (keys not listed are kept as they are on every rewrite)::

    name, version, endpoint, pid      the main predictor's version and pid; the stable address
    predictors: [Predictor]           role "main" (one) or "canary", with their traffic (percent);
                                      ``replicas`` lists its model servers (the predictor's own
                                      pid/endpoint are its first replica's); each replica counts
                                      its ``restarts``
    shadow: Predictor | None          gets a copy of every request, answers nobody
    router: RouterRecord | None       the process owning the stable address
    supervisor: ProcessRecord | None  the process restarting what dies (serving/supervisor.py)
    history: [HistoryEntry]           the main versions served before, oldest first (10 kept)
    previous_version                  the main version before the current one
    last_rollout: Rollout | None      the outcome of the last deploy/promote/rollback, with made_by
    feature_lookup: dict | None       FeatureLookup.to_dict() the router applies
    max_request_bytes: int | None     the router's request-size limit (None: its default)
    updated_at                        Unix time of the last routing change

A process record names a process by ``pid`` **and** ``pid_start`` (its start time in clock
ticks since boot, from ``/proc/<pid>/stat``): a pid the kernel reused for another process is
never taken for a server (:func:`tracked_alive`).

Standard library only: the router imports it and never imports Airflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

CURRENT = "current.json"
ROUTER = "router.json"
SUPERVISOR = "supervisor.json"
LOCK = ".lock"
PROCESSES = "processes"
PROCESS_RECORD = "state.json"
#: main versions kept in ``history`` (what a rollback can go back to)
HISTORY_LENGTH = 10
#: gunicorn worker processes per local model server: two serve requests side by side (each
#: loads the model), which put the stable address ahead of MLServer's default at 4 clients
#: (bench/README.md, Serving); one request at a time per worker (sync workers)
DEFAULT_WORKERS = 2


class CorruptState(ValueError):
    """A state file exists but is not a JSON object (written by hand, or the disk failed)."""


# -- records ---------------------------------------------------------------------------------


class ProcessRecord(TypedDict, total=False):
    pid: int
    pid_start: int | None
    host: str
    port: int
    endpoint: str
    log: str
    #: how to start it again (the supervisor restarts it with exactly this, on the same port)
    argv: list[str]
    cwd: str
    #: names of the environment variables it gets from the supervisor's environment, and values
    #: set for it (never a secret: a model's folder, version, log folder, ``PATH``)
    env_keys: list[str]
    env_set: dict[str, str]
    started_at: float
    restarts: int
    restarted_at: float


class ServerRecord(ProcessRecord, total=False):
    """A model server (``processes/*/state.json``), as :meth:`SeldonHook.start_local` starts it."""

    name: str
    version: str
    model_dir: str
    started_at: float
    workers: int  # gunicorn worker processes (absent in records written before: 1)
    runtime: str  # "local" (the serving runtime) or "docker" (the serving image); absent: local


class Predictor(ServerRecord, total=False):
    """A model server in the routing, with its role and the model it serves."""

    role: str  # "main", "canary" or "shadow"
    traffic: int  # percent of the requests
    replicas: list[ServerRecord]  # its model servers (absent: the predictor is its one server)
    model_name: str | None
    model_uri: str | None
    reference_path: str | None


class RouterRecord(ProcessRecord, total=False):
    #: names (never values) of the environment variables the router was started with
    env_keys: list[str]


class HistoryEntry(TypedDict, total=False):
    version: str
    model_name: str | None
    model_uri: str | None
    model_dir: str
    reference_path: str | None
    started_at: float


class MadeBy(TypedDict):
    dag_id: str
    run_id: str
    task_id: str
    try_number: int


class Rollout(TypedDict, total=False):
    outcome: str  # "succeeded" or "failed"
    version: str
    strategy: str
    message: str
    made_by: MadeBy
    at: float


_HISTORY_KEYS = ("version", "model_name", "model_uri", "model_dir", "reference_path", "started_at")


# -- processes -------------------------------------------------------------------------------


def pid_alive(pid: Any) -> bool:
    """A process ``pid`` exists and is not a zombie (exited, not yet reaped: it serves nothing)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return True


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command (which may hold spaces and ``)``)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def process_record(pid: int, **fields: Any) -> dict[str, Any]:
    """A record naming process ``pid`` for good (pid and start time), plus ``fields``."""
    return {"pid": pid, "pid_start": process_start_time(pid), **fields}


def tracked_alive(record: Mapping[str, Any] | None) -> bool:
    """The process of ``record`` still runs, and is not another one that reused its pid."""
    if not record:
        return False
    pid = record.get("pid")
    if not pid_alive(pid):
        return False
    started = record.get("pid_start")
    return started is None or process_start_time(int(pid)) in (None, started)


def replicas_of(predictor: Mapping[str, Any] | None) -> list[ServerRecord]:
    """The model servers of a predictor: its ``replicas``, or the predictor itself (one server)."""
    if not predictor:
        return []
    replicas = predictor.get("replicas")
    return list(replicas) if replicas else [predictor]  # type: ignore[list-item]


def stop_group(pid: Any, pid_start: int | None = None, grace: float = 10.0, kill: bool = False) -> bool:
    """
    SIGTERM the process group ``pid`` led, then SIGKILL it after ``grace`` s — also when the
    leader itself already died: its children (a gunicorn worker, a metrics server) keep the group,
    and the kernel never hands a pid that is still a group's id to a new process, so the group is
    still the one ``pid`` led. The one case left alone: ``pid`` is alive with another start time
    than ``pid_start`` (reused by a process of someone else, whose group it now names).

    :param kill: SIGKILL at once (what is left of a crashed server: its shared-state manager
        must not die before its worker, which would then answer 500 instead of nothing).
    :return: whether there was a group to signal.
    """
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 1:
        return False
    if pid_start is not None and pid_alive(pid) and process_start_time(pid) not in (None, pid_start):
        return False
    try:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    deadline = time.monotonic() + (0 if kill else grace)
    while time.monotonic() < deadline:
        _reap(pid)  # a leader that is our own child stays a zombie (and keeps the group) until reaped
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if not _group_has_live_member(pid):
            return True  # only zombies left: nothing runs
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_has_live_member(pgid: int) -> bool:
    """Some process of group ``pgid`` is not a zombie (read from ``/proc``; True when unsure)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


# -- files -----------------------------------------------------------------------------------


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no file. :raises CorruptState: not a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CorruptState(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CorruptState(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


class _FileLock:
    """An exclusive ``flock`` on one file, re-entrant within this process (one per path)."""

    _locks: dict[str, _FileLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = os.getpid()  # a forked child makes its own (the lock is per open file)

    @classmethod
    def of(cls, path: Path) -> _FileLock:
        key = os.path.abspath(path)
        with cls._guard:
            lock = cls._locks.get(key)
            if lock is None or lock._pid != os.getpid():
                lock = cls._locks[key] = cls(path)
            return lock

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)


# -- the routing -----------------------------------------------------------------------------


class DeploymentState:
    """
    A read-only view of ``current.json`` with typed accessors.

    ``raw`` is the JSON object as read; a new routing is made with :meth:`routing`
    (predictors changed) or :meth:`replace` (other keys).
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = dict(raw)

    def __repr__(self) -> str:
        return f"DeploymentState({self.name!r}, version={self.version!r}, endpoint={self.endpoint!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeploymentState) and other.raw == self.raw

    # what is served
    @property
    def name(self) -> str | None:
        return self.raw.get("name")

    @property
    def version(self) -> str | None:
        """The version the main predictor serves."""
        version = self.raw.get("version")
        return None if version is None else str(version)

    @property
    def endpoint(self) -> str | None:
        """The stable address (the router's), where clients send requests."""
        return self.raw.get("endpoint")

    @property
    def predictors(self) -> list[Predictor]:
        """The predictors taking traffic: the main one, and a canary when there is one."""
        return list(self.raw.get("predictors") or [])

    @property
    def main(self) -> Predictor | None:
        return next((p for p in self.predictors if p.get("role") == "main"), None)

    @property
    def canary(self) -> Predictor | None:
        return next((p for p in self.predictors if p.get("role") == "canary"), None)

    @property
    def shadow(self) -> Predictor | None:
        return self.raw.get("shadow") or None

    @property
    def servers(self) -> list[Predictor]:
        """Every model server the routing refers to (predictors and shadow)."""
        return [*self.predictors, *([self.shadow] if self.shadow else [])]

    @property
    def router(self) -> RouterRecord | None:
        return self.raw.get("router") or None

    @property
    def supervisor(self) -> ProcessRecord | None:
        """The deployment's supervisor (restarts what dies), when one was started."""
        return self.raw.get("supervisor") or None

    @property
    def supervised(self) -> bool:
        """A supervisor runs for this deployment: a dead process is being restarted."""
        return tracked_alive(self.supervisor)

    def server_processes(self) -> Iterator[tuple[Predictor, int, ServerRecord]]:
        """``(predictor, replica index, record)`` of every model server: predictors' and shadow's."""
        for predictor in self.servers:
            for i, replica in enumerate(replicas_of(predictor)):
                yield predictor, i, replica

    def health(self) -> list[dict[str, Any]]:
        """Each process of the deployment: what it is, its pid, port, whether it runs, its restarts."""
        out: list[dict[str, Any]] = []
        for what, record in (("supervisor", self.supervisor), ("router", self.router)):
            if record:
                out.append(_health(what, record))
        for predictor, i, replica in self.server_processes():
            out.append(
                _health("model server", replica)
                | {"role": predictor.get("role"), "version": str(predictor.get("version")), "replica": i}
            )
        return out

    @property
    def restarts(self) -> int:
        """Restarts of the router and every model server, all together."""
        return sum(int(h.get("restarts") or 0) for h in self.health())

    @property
    def model_name(self) -> str | None:
        return (self.main or {}).get("model_name")

    # what was served, and how the last rollout went
    @property
    def history(self) -> list[HistoryEntry]:
        return list(self.raw.get("history") or [])

    @property
    def previous_version(self) -> str | None:
        version = self.raw.get("previous_version")
        return None if version is None else str(version)

    @property
    def served_before(self) -> list[str]:
        """The versions served before the current one, newest first, once each."""
        out: list[str] = []
        for entry in reversed(self.history):
            version = entry.get("version")
            if version is not None and str(version) != self.version and str(version) not in out:
                out.append(str(version))
        return out

    @property
    def last_rollout(self) -> Rollout | None:
        return self.raw.get("last_rollout") or None

    @property
    def feature_lookup(self) -> dict[str, Any] | None:
        return self.raw.get("feature_lookup") or None

    @property
    def max_request_bytes(self) -> int | None:
        value = self.raw.get("max_request_bytes")
        return None if value is None else int(value)

    @property
    def updated_at(self) -> float | None:
        return self.raw.get("updated_at")

    # processes
    def processes(self) -> Iterator[tuple[str, ProcessRecord]]:
        """``(what, record)`` of the router and each model server of a predictor taking traffic."""
        if self.router:
            yield "router", self.router
        for predictor in self.predictors:
            for replica in replicas_of(predictor):
                yield "model server", {**replica, "version": predictor.get("version")}

    def dead_process(self) -> tuple[str, ProcessRecord] | None:
        """The first recorded process of the router or a predictor that no longer runs, or None."""
        return next(((what, r) for what, r in self.processes() if not tracked_alive(r)), None)

    def any_alive(self) -> bool:
        return any(tracked_alive(r) for _, r in self.processes())

    def recovering(self) -> str | None:
        """What the supervisor is bringing back (a process died, it restarts it), or None."""
        dead = self.dead_process()
        if dead is None or not self.supervised:
            return None
        what, record = dead
        return (
            f"the {what} (pid {record.get('pid')}) died; the supervisor restarts it "
            f"({int(record.get('restarts') or 0)} restarts so far)"
        )

    def failure(self, name: str | None = None) -> str | None:
        """
        Why this deployment cannot serve, or None: a process gone with no supervisor to restart
        it (a dead process under a live supervisor is :meth:`recovering`, not a failure), no
        main predictor, no endpoint.
        """
        name = name or self.name
        dead = self.dead_process()
        if dead is not None and not self.supervised:
            what, record = dead
            served = f"; it served version {record['version']}" if record.get("version") else ""
            return f"the {what} of deployment {name!r} (pid {record.get('pid')}) is not running{served}"
        if not self.main:
            return f"deployment {name!r} has no main predictor"
        if not self.endpoint:
            return f"deployment {name!r} names no endpoint"
        return None

    # new routings
    def replace(self, **changes: Any) -> DeploymentState:
        return DeploymentState({**self.raw, **changes})

    def routing(
        self,
        name: str,
        predictors: list[Predictor],
        router: RouterRecord | None,
        **changes: Any,
    ) -> DeploymentState:
        """This state with new ``predictors`` (exactly one ``main``) behind ``router``."""
        mains = [p for p in predictors if p.get("role") == "main"]
        if len(mains) != 1:
            raise ValueError(f"a routing has exactly one main predictor, got {len(mains)}")
        main = mains[0]
        return self.replace(
            name=name,
            predictors=predictors,
            router=router,
            # the stable address; a routing made without a router is reached at its server
            endpoint=router["endpoint"] if router else main["endpoint"],
            version=str(main["version"]),
            pid=main.get("pid"),
            updated_at=time.time(),
            **changes,
        )

    def history_with(self, replaced: Predictor | None) -> list[HistoryEntry]:
        """The history after ``replaced`` (the old main) stops serving."""
        entry = [{k: replaced.get(k) for k in _HISTORY_KEYS}] if replaced else []
        return [*self.history, *entry][-HISTORY_LENGTH:]


def _health(what: str, record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "process": what,
        "pid": record.get("pid"),
        "port": record.get("port"),
        "alive": tracked_alive(record),
        "restarts": int(record.get("restarts") or 0),
        "restarted_at": record.get("restarted_at"),
    }


EMPTY = DeploymentState({})


def health_summary(state: DeploymentState) -> str:
    """One line on the processes of a local deployment: how many run, their restarts, supervision."""
    health = [h for h in state.health() if h["process"] != "supervisor"]
    alive = sum(1 for h in health if h["alive"])
    restarts = sum(h["restarts"] for h in health)
    supervisor = "supervised" if state.supervised else "NOT supervised"
    return f"{alive}/{len(health)} processes alive, {restarts} restarts, {supervisor}"


class DeploymentStore:
    """
    The files of one local deployment, ``<data_dir>/deployments/<name>/``.

    :param directory: the deployment's folder (its name is the deployment's name).
    """

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    @classmethod
    def of(cls, data_dir: Path | str, name: str) -> DeploymentStore:
        return cls(Path(data_dir) / "deployments" / name)

    @classmethod
    def for_state_file(cls, current_json: Path | str) -> DeploymentStore:
        """The store whose ``current.json`` is ``current_json`` (how the router is started)."""
        return cls(Path(current_json).parent)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def current_path(self) -> Path:
        return self.dir / CURRENT

    @property
    def router_path(self) -> Path:
        return self.dir / ROUTER

    @property
    def supervisor_path(self) -> Path:
        return self.dir / SUPERVISOR

    @property
    def lock_path(self) -> Path:
        return self.dir / LOCK

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the deployment's lock (re-entrant): no other writer changes its files meanwhile."""
        return _FileLock.of(self.lock_path).held()

    @property
    def processes_dir(self) -> Path:
        return self.dir / PROCESSES

    @property
    def models_dir(self) -> Path:
        return self.dir / "models"

    @property
    def inference_log_dir(self) -> Path:
        return self.dir / "inference_log"

    def exists(self) -> bool:
        return self.current_path.exists()

    # current.json
    def read(self) -> DeploymentState | None:
        """The routing; None when never deployed. :raises CorruptState: unreadable."""
        raw = read_json(self.current_path)
        return None if raw is None else DeploymentState(raw)

    def read_or_empty(self) -> DeploymentState:
        return self.read() or EMPTY

    def write(self, state: DeploymentState) -> None:
        """Replace the routing (callers changing what they read use :meth:`modify`)."""
        with self.lock():
            write_json(self.current_path, state.raw)

    def modify(
        self, change: Callable[[DeploymentState], DeploymentState | None]
    ) -> tuple[DeploymentState, DeploymentState]:
        """
        Read the routing, ``change`` it, write the result — all under the deployment's lock, so
        no other writer's update in between is lost. ``change`` gets the routing as it is now
        (:data:`EMPTY` when never deployed) and returns the new one (None: no change).

        :return: ``(before, after)``.
        :raises CorruptState: the routing is unreadable.
        """
        with self.lock():
            before = self.read_or_empty()
            after = change(before)
            if after is None or after == before:
                return before, before
            write_json(self.current_path, after.raw)
            return before, after

    def update(self, **changes: Any) -> DeploymentState | None:
        """Change keys of an existing routing (not the predictors); None when never deployed."""
        _, after = self.modify(lambda state: None if state is EMPTY else state.replace(**changes))
        return None if after is EMPTY else after

    def record_rollout(self, outcome: Mapping[str, Any]) -> None:
        """Keep the outcome of the last rollout (with its ``made_by``) without touching the routing."""
        self.update(last_rollout={**outcome, "at": time.time()})

    # router.json
    def read_router(self) -> RouterRecord | None:
        try:
            return read_json(self.router_path)  # type: ignore[return-value]
        except CorruptState:
            return None  # a new router is started and the file replaced

    def write_router(self, record: RouterRecord) -> None:
        """Record a (new) router: in ``router.json`` and in the routing, which names its process too."""
        with self.lock():
            write_json(self.router_path, record)
            try:
                self.modify(
                    lambda state: (
                        None
                        if state is EMPTY or state.router == record
                        else state.replace(router=record, endpoint=record.get("endpoint") or state.endpoint)
                    )
                )
            except CorruptState:
                return  # reported by whoever reads the routing

    # supervisor.json
    def read_supervisor(self) -> ProcessRecord | None:
        try:
            return read_json(self.supervisor_path)  # type: ignore[return-value]
        except CorruptState:
            return None

    def write_supervisor(self, record: ProcessRecord | None) -> None:
        """Record the deployment's supervisor (None: none runs), in ``supervisor.json`` and the routing."""
        with self.lock():
            if record is None:
                with contextlib.suppress(FileNotFoundError):
                    self.supervisor_path.unlink()
            else:
                write_json(self.supervisor_path, record)
            with contextlib.suppress(CorruptState):
                self.modify(
                    lambda state: (
                        None
                        if state is EMPTY or state.supervisor == record
                        else state.replace(supervisor=record)
                    )
                )

    # processes/*/state.json
    def process_dir(self, version: str, port: int) -> Path:
        return self.processes_dir / f"v{version}-{port}"

    def write_process(self, workdir: Path, record: ServerRecord) -> None:
        write_json(workdir / PROCESS_RECORD, record)

    def process_records(self) -> list[ServerRecord]:
        """Every model server ever started for this deployment (unreadable records skipped)."""
        records = []
        for path in sorted(self.processes_dir.glob(f"*/{PROCESS_RECORD}")):
            try:
                record = read_json(path)
            except CorruptState:
                continue
            if record and record.get("pid"):
                records.append(record)
        return records  # type: ignore[return-value]

    def all_processes(self) -> list[ProcessRecord]:
        """
        Every process record of this deployment, the supervisor first (stopped first, nothing is
        restarted behind the stop): the model servers ever started, every replica the routing
        names (a restarted one has a new pid), and the router.
        """
        records: list[ProcessRecord] = []
        supervisor = self.read_supervisor()
        try:
            state = self.read_or_empty()
        except CorruptState:
            state = EMPTY
        for record in (supervisor, state.supervisor):
            if record and record.get("pid"):
                records.append(record)
        records.extend(self.process_records())
        records.extend(replica for _, _, replica in state.server_processes() if replica.get("pid"))
        for record in (self.read_router(), state.router):
            if record and record.get("pid"):
                records.append(record)
        seen: set[tuple[Any, Any]] = set()
        out = []
        for record in records:
            key = (record.get("pid"), record.get("pid_start"))
            if key not in seen:
                seen.add(key)
                out.append(record)
        return out

    def stop_all(self, grace: float = 10.0) -> list[ProcessRecord]:
        """
        Stop every process of this deployment, the supervisor first, each by its process group —
        also a group whose leader died (:func:`stop_group`). :return: the records stopped.
        """
        stopped = []
        for record in self.all_processes():
            if stop_group(record.get("pid"), record.get("pid_start"), grace):
                stopped.append(record)
        return stopped


def deployment_names(data_dir: Path | str) -> list[str]:
    """The local deployments recorded under ``data_dir`` (those with a ``current.json``)."""
    root = Path(data_dir) / "deployments"
    return sorted(p.parent.name for p in root.glob(f"*/{CURRENT}")) if root.is_dir() else []
