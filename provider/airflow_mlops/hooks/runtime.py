"""Run commands inside an isolated runtime environment (training, serving, drift).

Libraries that cannot live beside Airflow (horovod, seldon-core, alibi-detect) get a virtual
environment each, built from ``docker/<runtime>/requirements.txt`` — the same file the
runtime's container image uses, so local and Kubernetes mode run the same pins.

A runtime process gets an environment built from an allow-list (:func:`runtime_environ`), never
the worker's whole one: ``AIRFLOW_CONN_*``, ``AIRFLOW__*`` (the Fernet key, the metadata DB's
URL) and whatever else the worker holds stay in the worker. When a command fails, the error is
read out of its output structurally (:class:`OutputScanner`): the last Python traceback of the
process that failed — a Horovod rank before the launcher — leads the failure message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.exceptions import MissingRuntimeError, MlopsError

#: a line of output that names an error; the fallback when the output holds no Python traceback
_ERROR_LINE = re.compile(r"^(\[\d+\]<std(err|out)>:)?\s*[\w.]*(Error|Exception)\b.*:")

# -- the environment of a runtime process ----------------------------------------------------------

#: passed from the worker's environment to every runtime process, by exact name ...
_ALLOWED_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "LD_LIBRARY_PATH",
        # proxies and the certificates an HTTPS client trusts
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
        "no_proxy", "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        # the interpreter's behaviour (never PYTHONPATH/PYTHONHOME/PYTHONSTARTUP: the environment's
        # own packages must be the ones imported)
        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING",
        "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "PYTHONPYCACHEPREFIX",
        # thread pools and devices
        "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS", "VECLIB_MAXIMUM_THREADS",
        "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
        "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    }
)  # fmt: skip
#: ... and by prefix
_ALLOWED_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_")
#: more, for one runtime: what its entry scripts and libraries read
RUNTIME_ALLOWED_PREFIXES: dict[str, tuple[str, ...]] = {
    # horovodrun and its ranks; MLflow's client configuration and the artifact store's
    # credentials (rank 0 logs the model, every rank may read s3:// inputs). The tracking URI
    # and credentials come from the MLflow connection only, never from the worker (see below).
    "training": (
        "HOROVOD_", "GLOO_", "NCCL_", "CUDA_", "TORCH_", "MLFLOW_", "AWS_",
        "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_",
    ),
    # the model server's knobs (runtimes/seldon_serve.py, runtimes/seldon_model.py)
    "serving": ("SELDON_", "GUNICORN_", "INFERENCE_LOG_", "CUDA_", "TORCH_"),
    "drift": ("NUMBA_",),
}  # fmt: skip
#: never taken from the worker's environment, whatever the lists above say: a process that needs
#: them gets them explicitly from the hook of its connection (``MlflowHook.subprocess_env``)
_NEVER = frozenset(
    {
        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    }
)  # fmt: skip


def runtime_environ(
    runtime: str,
    bin_dir: str | os.PathLike[str] | None = None,
    extra: Mapping[str, str] | None = None,
    passthrough: Iterable[str] = (),
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    The environment of a process of ``runtime``: the allowed variables of ``source`` (default:
    ours), ``bin_dir`` first on ``PATH``, unbuffered output, then ``extra``.

    :param passthrough: more names (or prefixes ending with ``_``) to take from ``source``.
    """
    source = os.environ if source is None else source
    prefixes = (*_ALLOWED_PREFIXES, *RUNTIME_ALLOWED_PREFIXES.get(runtime, ()))
    names = set(_ALLOWED_NAMES)
    for item in passthrough:
        if item.endswith("_"):
            prefixes = (*prefixes, item)
        else:
            names.add(item)
    env = {k: v for k, v in source.items() if k not in _NEVER and (k in names or k.startswith(prefixes))}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH') or os.defpath}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


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

    def environ(
        self, extra: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()
    ) -> dict[str, str]:
        """
        Environment for a child process: the allow-listed part of ours (:func:`runtime_environ`),
        the environment's ``bin`` first on ``PATH``, then ``extra``.
        """
        return runtime_environ(self.runtime, self.env_dir / "bin", extra, passthrough)

    #: what a process record keeps to start :meth:`start`'s process again (serving supervisor)
    recorded_environ = ("PATH", "PYTHONUNBUFFERED")

    def start(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdout=subprocess.PIPE,
        passthrough: Iterable[str] = (),
    ) -> subprocess.Popen:
        """
        Start ``args`` in its own process group (so ``on_kill`` can stop all its children).

        :param env: variables for the command, on top of the allow-listed part of ours.
        :param passthrough: more names (or ``PREFIX_``es) of ours the command needs.
        """
        return subprocess.Popen(
            self.command(args, cwd),
            env=self.environ(env, passthrough),
            cwd=cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def command(self, args: Sequence[str], cwd: str | None = None) -> list[str]:
        """The command line this host runs for ``args`` (logged): here, ``args`` themselves."""
        self.log.info("Running in the %s runtime: %s", self.runtime, " ".join(map(str, args)))
        return [str(a) for a in args]

    def script(self, name: str) -> str:
        """Path of the entry script ``runtimes/<name>.py`` as this runtime's processes see it."""
        return str(settings.runtime_script(name))

    @property
    def place(self) -> str:
        """Where the commands run, for messages: ``the training runtime``."""
        return f"the {self.runtime} runtime"

    def run(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        log_prefix: str = "",
        passthrough: Iterable[str] = (),
    ) -> list[str]:
        """
        Run ``args`` to completion, each output line going to the task log as it comes.

        :param env: variables for the command, on top of the allow-listed part of ours.
        :param timeout: seconds after which the command and its children are stopped.
        :param passthrough: more names (or ``PREFIX_``es) of ours the command needs.
        :return: the last 200 output lines.
        :raises RuntimeCommandError: on a non-zero exit or a timeout; its message leads with the
            Python exception that ended the failed process (:class:`OutputScanner`).
        """
        self._proc = proc = self.start(args, env=env, cwd=cwd, passthrough=passthrough)
        program = Path(str(args[0])).name
        scanner = OutputScanner(program)
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
                scanner.feed(line)
                self.log.info("%s%s", log_prefix, line)
            code = proc.wait()
        finally:
            if watchdog:
                watchdog.cancel()
            if proc.poll() is None:
                self.terminate()
        where = f"{program} in {self.place}"
        if timed_out.is_set():
            raise RuntimeCommandError(
                f"{where} did not finish within {timeout:.0f}s and was stopped.\n" + scanner.explain(where)
            )
        if code != 0:
            raise RuntimeCommandError(scanner.explain(f"{where} exited with status {code}", lead=True))
        return scanner.tail

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


#: where a runtime's commands run: a virtual environment here, its image through the Docker
#: API, pods on Kubernetes (docs/runtimes.md, "Execution modes")
EXECUTION_MODES = ("local", "docker", "kubernetes")


def check_mode(mode: str) -> str:
    """``mode`` if it is an execution mode; a ValueError naming the choices otherwise."""
    if mode not in EXECUTION_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, EXECUTION_MODES))}; got {mode!r}")
    return mode


def default_mode() -> str:
    """``[mlops] execution_mode`` (``local`` when unset): the mode of operators that name none."""
    configured = (settings._conf("execution_mode") or "local").strip().lower()
    try:
        return check_mode(configured)
    except ValueError as err:
        raise ValueError(f"[mlops] execution_mode (AIRFLOW__MLOPS__EXECUTION_MODE): {err}") from None


def runtime_hook(
    runtime: str,
    mode: str,
    ti: object | None = None,
    *,
    runtimes_dir: str | None = None,
    image: str | None = None,
    mounts: Iterable[str | os.PathLike[str]] = (),
    read_only_mounts: Iterable[str | os.PathLike[str]] = (),
    name: str | None = None,
) -> RuntimeHook:
    """
    The hook that runs ``runtime``'s commands in ``mode`` (``local`` or ``docker``), for task
    instance ``ti``: a :class:`RuntimeHook` or a
    :class:`~airflow_mlops.hooks.docker.ContainerRuntimeHook` (same interface). ``mounts`` are
    the folders a container needs (the data dir is always mounted); local mode ignores them.
    ``name``: the container's name for work that is no task instance's (the drift watcher).
    """
    if mode == "local":
        return RuntimeHook(runtime, runtimes_dir)
    if mode != "docker":
        raise ValueError(f"{runtime} commands run in mode 'local' or 'docker' here, not {mode!r}")
    from airflow_mlops.hooks.docker import ContainerRuntimeHook, container_name
    from airflow_mlops.task_outputs import map_index

    if name is None:
        name = container_name(runtime, ti.dag_id, ti.run_id, ti.task_id, map_index(ti))  # type: ignore[attr-defined]
    return ContainerRuntimeHook(
        runtime,
        name,
        image=image,
        mounts=[settings.data_dir(), *mounts],
        read_only_mounts=read_only_mounts,
    )


# -- reading the error out of a command's output ------------------------------------------------

#: a line Horovod's launcher relays from a rank: ``[1]<stderr>:...``
_RANK_PREFIX = re.compile(r"^\[(?P<rank>\d+)\]<(?P<stream>stdout|stderr)>:")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = {
    "The above exception was the direct cause of the following exception:": "caused by",
    "During handling of the above exception, another exception occurred:": "while handling",
}
#: horovodrun (gloo) on a rank that ended: ``Process 1 exit with status code 1.``
_RANK_EXIT = re.compile(r"^Process (?P<rank>\d+) exit with status code (?P<code>-?\d+)")
#: statuses of ranks the launcher stopped itself once another rank failed (SIGTERM)
_STOPPED_BY_LAUNCHER = frozenset({143, -15})
_MAX_FRAMES = 6  # frames of a traceback kept for the failure message
_MAX_FRAME_LINES = 6  # lines of one frame: ``File ...``, the source line, carets
_MAX_MESSAGE_LINES = 20  # lines of one exception message
_MAX_CHAIN = 4  # exceptions of one chain (``raise ... from``, errors while handling errors)


@dataclass
class ExceptionBlock:
    """One ``Traceback (most recent call last):`` block: its last frames and its exception."""

    frames: list[list[str]] = field(default_factory=list)  # each: the ``File`` line, then source
    frame_count: int = 0
    user_frame: list[str] | None = None  # the innermost frame outside site-packages / Cython
    message: list[str] = field(default_factory=list)  # ``module.Name: text`` and its continuation
    chained: str | None = None  # how the *next* block relates to this one ("caused by", ...)

    def add_line_to_frame(self, line: str) -> None:
        if line.lstrip().startswith("File ") or not self.frames:
            self.frame_count += 1
            self.frames.append([line])
            del self.frames[:-_MAX_FRAMES]
        elif len(self.frames[-1]) < _MAX_FRAME_LINES:
            self.frames[-1].append(line)
        frame = self.frames[-1]
        if _is_user_frame(frame[0]):
            self.user_frame = frame

    @property
    def exception(self) -> str:
        return self.message[0] if self.message else "(no exception line)"

    def render(self) -> list[str]:
        lines = []
        shown = self.frames
        if self.user_frame is not None and all(f is not self.user_frame for f in shown):
            lines += self.user_frame + ["  ..."]
        hidden = self.frame_count - len(shown) - (1 if lines else 0)
        head = _TRACEBACK if hidden <= 0 else f"{_TRACEBACK[:-2]}; {hidden} more frame(s) not shown):"
        return [head, *lines, *(line for frame in shown for line in frame), *self.message]


def _is_user_frame(file_line: str) -> bool:
    """A frame of the user's (or this provider's) code: a real file, not a library's."""
    match = re.search(r'File "([^"]+)"', file_line)
    if not match:
        return False
    path = match.group(1)
    return (
        path.startswith("/")
        and "/site-packages/" not in path
        and "/dist-packages/" not in path
        and not re.search(r"/lib/python\d", path)
    )


@dataclass
class _Stream:
    """The tracebacks of one stream of output: a rank's stderr, or the command's own output."""

    name: str
    chain: list[ExceptionBlock] = field(default_factory=list)  # the chain being read or last read
    state: str = "idle"  # idle | frames | message | blank | chained
    started_at: int = -1  # line number where the chain being read or last read began
    last_error_at: int = -1  # line number of the last exception line
    continuation: int = 0  # message lines after the exception line

    def feed(self, line: str, number: int) -> None:
        if line.rstrip() == _TRACEBACK:
            if self.state != "chained":
                self.chain = []
                self.started_at = number
            self.chain.append(ExceptionBlock())
            del self.chain[:-_MAX_CHAIN]
            self.state = "frames"
            return
        if self.state == "frames":
            if line[:1].isspace():
                self.chain[-1].add_line_to_frame(line)
            elif line.strip():
                self.chain[-1].message.append(line)
                self.last_error_at = number
                self.continuation = 0
                self.state = "message"
        elif self.state == "message":
            if not line.strip():
                self.state = "blank"
            elif line.strip() in _CHAINED:
                self.chain[-1].chained = _CHAINED[line.strip()]
                self.state = "chained"
            elif self.continuation < _MAX_MESSAGE_LINES:
                self.continuation += 1
                self.chain[-1].message.append(line)
            else:
                self.state = "idle"
        elif self.state == "blank":
            if line.strip() in _CHAINED:
                self.chain[-1].chained = _CHAINED[line.strip()]
                self.state = "chained"
            elif line.strip():
                self.state = "idle"
        elif self.state == "chained" and line.strip():
            self.state = "idle"  # a chain marker not followed by a traceback: not one after all


class OutputScanner:
    """
    Reads a command's output line by line and, when it failed, says why.

    Python tracebacks are parsed structurally, per stream: Horovod relays each rank's output as
    ``[rank]<stderr>:...`` lines, mixed with the launcher's own; every stream keeps its last
    traceback — frames, exception line (any class: ``pyarrow.lib.ArrowInvalid``, ``Boom``),
    multi-line message and chained exceptions. The failure message leads with the traceback of
    the rank that failed first (Horovod names it), else of the first rank that raised, else the
    command's own; the launcher's errors and the end of the output follow.

    Memory is bounded whatever the length of the output.
    """

    def __init__(self, program: str = "command", tail_lines: int = 200) -> None:
        self.program = program
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._errors: deque[str] = deque(maxlen=20)  # kept apart: a long traceback must not push them out
        self._streams: dict[str, _Stream] = {}
        self._failed_ranks: list[tuple[int, int]] = []  # (rank, status), in the launcher's order
        self._lines = 0

    @property
    def tail(self) -> list[str]:
        """The last output lines (200 by default)."""
        return list(self._tail)

    def feed(self, line: str) -> None:
        self._lines += 1
        self._tail.append(line)
        match = _RANK_PREFIX.match(line)
        if match:
            name, text = f"rank {match['rank']}", line[match.end() :]
            if match["stream"] == "stdout":
                name += " (stdout)"  # a traceback printed by the script itself: still the rank's
        else:
            name, text = self.program, line
            if exited := _RANK_EXIT.match(line):
                if int(exited["code"]) != 0:
                    self._failed_ranks.append((int(exited["rank"]), int(exited["code"])))
                    self._errors.append(line)
        self._streams.setdefault(name, _Stream(name)).feed(text, self._lines)
        if _ERROR_LINE.search(line):
            self._errors.append(line)

    def cause(self) -> tuple[str, list[ExceptionBlock]] | None:
        """``(stream, chain)`` of the traceback that explains the failure, or None."""
        with_traceback = {name: s for name, s in self._streams.items() if s.chain and s.chain[-1].message}
        ranks = {name: s for name, s in with_traceback.items() if name.startswith("rank ")}
        for rank, status in self._failed_ranks:
            if status not in _STOPPED_BY_LAUNCHER and f"rank {rank}" in ranks:
                return f"rank {rank}", ranks[f"rank {rank}"].chain
        pool = ranks or with_traceback
        if not pool:
            return None
        first = min(pool.values(), key=lambda s: s.last_error_at)
        return first.name, first.chain

    def _last_output(self, cause: tuple[str, list[ExceptionBlock]] | None, lines: int = 15) -> list[str]:
        """The end of the output; when a rank's error leads, the end before the launcher's own
        traceback (already named under "Other errors")."""
        tail = list(self._tail)
        launcher = self._streams.get(self.program)
        if cause is not None and cause[0] != self.program and launcher is not None and launcher.chain:
            first = self._lines - len(tail) + 1  # line number of tail[0]
            if launcher.started_at > first:
                tail = tail[: launcher.started_at - first]
        return tail[-lines:]

    def explain(self, what: str, lead: bool = False) -> str:
        """
        Why the command failed.

        :param what: the command and what happened to it, e.g. ``horovodrun in the training runtime
            exited with status 1``.
        :param lead: put the exception first (else ``what`` is already the message's first line).
        """
        cause = self.cause()
        parts: list[str] = []
        if cause is None:
            if lead:
                parts.append(f"{what}.")
            if self._errors:
                parts.append("Errors reported:\n" + "\n".join(dict.fromkeys(list(self._errors)[-10:])))
        else:
            source, chain = cause
            final = chain[-1]
            where = f"raised in {source}" if source.startswith("rank ") else f"raised by {source}"
            if lead:
                parts.append(final.exception)
                parts.append(f"({where}; {what})")
            else:
                parts.append(f"{final.exception} ({where})")
            parts.append("\n".join(final.render()))
            for earlier in reversed(chain[:-1]):
                last_frame = earlier.user_frame or (earlier.frames[-1] if earlier.frames else [])
                parts.append(
                    f"{earlier.chained.capitalize() if earlier.chained else 'After'}:\n"
                    + "\n".join([*last_frame, *earlier.message])
                )
            others = [
                f"  {name}: {s.chain[-1].exception}"
                for name, s in self._streams.items()
                if name != source and s.chain and s.chain[-1].message
            ]
            others += [
                f"  rank {rank} exited with status {status}"
                + (" (stopped by the launcher)" if status in _STOPPED_BY_LAUNCHER else "")
                for rank, status in self._failed_ranks
            ]
            if others:
                parts.append("Other errors:\n" + "\n".join(others))
        parts.append("Last output:\n" + "\n".join(self._last_output(cause)))
        return "\n".join(parts)


def stop_process_group(pid: int, grace: float = 10.0, pid_start: int | None = None) -> bool:
    """
    SIGTERM the process group led by ``pid`` (not our child), then SIGKILL it after ``grace`` s —
    also when ``pid`` itself already died and only the rest of its group runs (a model server's
    workers). With ``pid_start`` (the leader's recorded start time, see
    :func:`airflow_mlops.serving.state.process_start_time`), a live ``pid`` that started at
    another time is another process that reused the pid: it is left alone.

    :return: whether there was a group to stop.
    """
    from airflow_mlops.serving.state import stop_group

    return stop_group(pid, pid_start, grace)
