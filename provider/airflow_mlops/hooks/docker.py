"""Run a runtime's commands in its container image through the Docker API (``mode="docker"``).

The third execution mode beside ``local`` (a virtual environment, :class:`RuntimeHook`) and
``kubernetes``: the same command, in the image ``make images`` builds for the runtime
(``localhost/airflow-mlops-<runtime>:latest``), on the Docker Engine API of Docker or of
``podman system service``. The API's address is ``[mlops] docker_url``, else ``DOCKER_HOST``,
else Docker's default socket.

Data goes through the file system as in local mode: the folders a command reads and writes
(the data dir, its work folder, the training script's folder, MLflow's local artifact root) are
bind-mounted at the same paths, so every path in a runtime's config means the same inside and
out. The container shares the host's network (the MLflow server and the model servers listen on
127.0.0.1) and runs as the worker's uid/gid, so what it writes belongs to the worker.

A container is named after its task instance (:func:`container_name`): a retry removes the one
an earlier try left behind (a worker that died) and starts afresh; a training script resumes
from its last checkpoint. ``on_kill`` stops and removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook

from airflow_mlops._imports import require
from airflow_mlops.exceptions import MlopsError
from airflow_mlops.hooks.runtime import CommandRunner, Launched, runtime_environ

#: where the images keep the runtime (docker/<runtime>/Dockerfile)
IMAGE_VENV = "/opt/mlops/venv"
IMAGE_RUNTIMES = "/opt/mlops/runtimes"
#: the default image of a runtime: what ``make images`` tags
DEFAULT_IMAGE = "localhost/airflow-mlops-{runtime}:latest"
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
#: names of the worker's environment that are paths or settings of the host, not of the image
_HOST_ONLY = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LD_LIBRARY_PATH", "TMPDIR", "TEMP", "TMP",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPYCACHEPREFIX",
        "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    }
)  # fmt: skip
LABEL = "io.github.airflow-mlops.task"


def docker_url() -> str:
    """The Docker Engine API: ``[mlops] docker_url``, else ``DOCKER_HOST``, else Docker's socket."""
    from airflow.configuration import conf

    return conf.get("mlops", "docker_url", fallback="") or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


def container_name(runtime: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """
    The container of a task instance: the same for every try (a retry finds an earlier try's
    container), unique per task instance, valid as a container name.
    """
    key = f"{dag_id}\0{run_id}\0{task_id}\0{map_index}"
    readable = re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"{dag_id}.{task_id}")[:60].strip("-.")
    return f"mlops-{runtime}-{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def container_environ(
    runtime: str, extra: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()
) -> dict[str, str]:
    """
    The environment of a runtime's container: the runtime's allow-list of ours
    (:func:`runtime_environ`) without the host's paths, ``HOME=/tmp`` (the worker's uid has no
    home in the image), then ``extra``.
    """
    env = {k: v for k, v in runtime_environ(runtime, passthrough=passthrough).items() if k not in _HOST_ONLY}
    env["HOME"] = "/tmp"
    env.update(extra or {})
    return env


def bind_mounts(
    paths: Iterable[str | os.PathLike[str]], read_only: Iterable[str | os.PathLike[str]] = ()
) -> dict[str, dict[str, str]]:
    """
    docker-py ``volumes`` binding each existing folder (a file: its folder) at the same path.

    A folder inside another one is covered by it; read-write wins over read-only.
    """
    wanted: dict[Path, str] = {}
    for mode, items in (("ro", read_only), ("rw", paths)):
        for item in items:
            path = Path(item).resolve()
            if path.is_file():
                path = path.parent
            if path.is_dir():
                wanted[path] = mode if wanted.get(path) != "rw" else "rw"

    def covered(path: Path, mode: str) -> bool:
        return any(
            other != path and path.is_relative_to(other) and (m == "rw" or mode == "ro")
            for other, m in wanted.items()
        )

    kept = {path: mode for path, mode in wanted.items() if not covered(path, mode)}
    return {str(path): {"bind": str(path), "mode": mode} for path, mode in sorted(kept.items())}


class ContainerRuntimeHook(CommandRunner, BaseHook):
    """
    Run a runtime's programs in its image, streaming their output to the task log.

    The interface of :class:`~airflow_mlops.hooks.runtime.RuntimeHook` (``bin``, ``python``,
    ``script``, ``run``, ``terminate``), so an operator builds one command for both modes.

    :param runtime: ``training``, ``serving`` or ``drift``.
    :param name: the container's name (:func:`container_name`).
    :param image: the image; default ``localhost/airflow-mlops-<runtime>:latest``.
    :param mounts: folders (or files: their folder) bound read-write at the same path.
    :param read_only_mounts: the same, read-only.
    :param url: the Docker Engine API (default :func:`docker_url`).
    """

    hook_name = "MLOps container runtime"

    def __init__(
        self,
        runtime: str,
        name: str,
        image: str | None = None,
        mounts: Iterable[str | os.PathLike[str]] = (),
        read_only_mounts: Iterable[str | os.PathLike[str]] = (),
        url: str | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.name = name
        self.image = image or DEFAULT_IMAGE.format(runtime=runtime)
        self.mounts = list(mounts)
        self.read_only_mounts = list(read_only_mounts)
        self.url = url
        self._container = None

    @cached_property
    def client(self):
        """A docker-py client of the Engine API (cached); a clear error when nothing answers there."""
        docker = require("docker", "docker")
        url = self.url or docker_url()
        try:
            client = docker.DockerClient(base_url=url, timeout=120)
            client.ping()
        except docker.errors.DockerException as err:
            raise MlopsError(
                f"No Docker Engine API answers at {url} ({err}). Start Docker, or podman's API "
                "(`podman system service --time=0 unix:///run/podman/podman.sock`), and set "
                "[mlops] docker_url (or DOCKER_HOST) to its socket."
            ) from err
        return client

    def bin(self, program: str) -> str:
        return f"{IMAGE_VENV}/bin/{program}"

    @property
    def python(self) -> str:
        return self.bin("python")

    def script(self, name: str) -> str:
        return f"{IMAGE_RUNTIMES}/{name}.py"

    def remove_leftover(self) -> bool:
        """Remove a container of this name (an earlier try's, its worker gone); True if there was one."""
        docker = require("docker", "docker")
        try:
            old = self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return False
        self.log.warning(
            "Container %s of an earlier try is still there (%s): removing it and starting afresh.",
            self.name,
            old.status,
        )
        old.remove(force=True)
        return True

    def _launch(
        self, args: Sequence[str], env: Mapping[str, str] | None, cwd: str | None, passthrough: Iterable[str]
    ) -> Launched:
        docker = require("docker", "docker")
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound as err:
            raise MlopsError(
                f"Image {self.image} of the {self.runtime} runtime is not there: build it with "
                "`make images` (or docker build -f docker/<runtime>/Dockerfile), or pass image=."
            ) from err
        self.remove_leftover()
        volumes = bind_mounts([*self.mounts, *([cwd] if cwd else [])], self.read_only_mounts)
        self.log.info(
            "Running in the %s container %s (%s): %s; mounted: %s",
            self.runtime,
            self.name,
            self.image,
            " ".join(map(str, args)),
            ", ".join(f"{p} ({v['mode']})" for p, v in volumes.items()) or "nothing",
        )
        self._container = container = self.client.containers.run(
            self.image,
            # the program replaces the image's entrypoint (docker-py drops an empty one)
            entrypoint=[str(args[0])],
            command=[str(a) for a in args[1:]],
            name=self.name,
            environment=container_environ(self.runtime, env, passthrough),
            volumes=volumes,
            working_dir=cwd,
            network_mode="host",
            user=f"{os.getuid()}:{os.getgid()}",
            labels={LABEL: self.name},
            detach=True,
        )

        def wait() -> int:
            return int(container.wait()["StatusCode"])

        def running() -> bool:
            try:
                container.reload()
            except docker.errors.NotFound:
                return False
            return container.status in ("created", "running", "restarting")

        return Launched(
            lines=_lines(container.logs(stream=True, follow=True)),
            wait=wait,
            running=running,
            where=f"{Path(str(args[0])).name} in the {self.runtime} container {self.name}",
        )

    def run(self, *args, **kwargs) -> list[str]:
        try:
            return super().run(*args, **kwargs)
        finally:
            self._remove()

    def _remove(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            docker = require("docker", "docker")
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)

    def terminate(self, grace: float = 10.0) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``grace`` seconds); used by ``on_kill``."""
        container = self._container
        if container is None:
            return
        docker = require("docker", "docker")
        # ``run`` sees the log stream end and removes the container
        with contextlib.suppress(docker.errors.NotFound):
            container.stop(timeout=int(grace))


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole text lines out of a container's log stream (chunks may split or join lines)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace")
