"""The state of local deployments: the one reader and writer of ``<data_dir>/deployments/<name>/``.

Every part of the provider that looks at a local deployment goes through this module: the
hook and the operators (deploy, promote, rollback), the router, the sensor's trigger, the
MLOps page and ``scripts/stack.py stop``. The files::

    deployments/<name>/current.json                      the routing (DeploymentState)
    deployments/<name>/router.json                       the router's process (RouterRecord)
    deployments/<name>/processes/v<version>-<port>/state.json   each model server started (ServerRecord)

Every file is replaced atomically (written beside, then ``os.replace``): the router re-reads
``current.json`` while requests flow and never sees half a file.

``current.json`` (keys not listed are kept as they are on every rewrite)::

    name, version, endpoint, pid      the main predictor's version and pid; the stable address
    predictors: [Predictor]           role "main" (one) or "canary", with their traffic (percent)
    shadow: Predictor | None          gets a copy of every request, answers nobody
    router: RouterRecord | None       the process owning the stable address
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

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

CURRENT = "current.json"
ROUTER = "router.json"
PROCESSES = "processes"
PROCESS_RECORD = "state.json"
#: main versions kept in ``history`` (what a rollback can go back to)
HISTORY_LENGTH = 10


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


class ServerRecord(ProcessRecord, total=False):
    """A model server (``processes/*/state.json``), as :meth:`SeldonHook.start_local` starts it."""

    name: str
    version: str
    model_dir: str
    started_at: float


class Predictor(ServerRecord, total=False):
    """A model server in the routing, with its role and the model it serves."""

    role: str  # "main", "canary" or "shadow"
    traffic: int  # percent of the requests
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
        """``(what, record)`` of the router and each predictor taking traffic."""
        if self.router:
            yield "router", self.router
        for predictor in self.predictors:
            yield "model server", predictor

    def dead_process(self) -> tuple[str, ProcessRecord] | None:
        """The first recorded process of the router or a predictor that no longer runs, or None."""
        return next(((what, r) for what, r in self.processes() if not tracked_alive(r)), None)

    def any_alive(self) -> bool:
        return any(tracked_alive(r) for _, r in self.processes())

    def failure(self, name: str | None = None) -> str | None:
        """Why this deployment cannot serve (a process gone, no endpoint), or None."""
        name = name or self.name
        dead = self.dead_process()
        if dead is not None:
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


EMPTY = DeploymentState({})


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
        write_json(self.current_path, state.raw)

    def update(self, **changes: Any) -> DeploymentState | None:
        """Change keys of an existing routing (not the predictors); None when never deployed."""
        state = self.read()
        if state is None:
            return None
        state = state.replace(**changes)
        self.write(state)
        return state

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
        write_json(self.router_path, record)
        try:
            state = self.read_or_empty()
        except CorruptState:
            return  # reported by whoever reads the routing
        if state is not EMPTY and state.router != record:
            self.write(state.replace(router=record, endpoint=record.get("endpoint") or state.endpoint))

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
        """Every process record of this deployment: the model servers and the router."""
        router = self.read_router()
        return [*self.process_records(), *([router] if router and router.get("pid") else [])]


def deployment_names(data_dir: Path | str) -> list[str]:
    """The local deployments recorded under ``data_dir`` (those with a ``current.json``)."""
    root = Path(data_dir) / "deployments"
    return sorted(p.parent.name for p in root.glob(f"*/{CURRENT}")) if root.is_dir() else []
