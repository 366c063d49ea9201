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

import hashlib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

from airflow_mlops import settings
from airflow_mlops._imports import require
from airflow_mlops.container_run import DEFAULT_DOCKER_URL, image_environ
from airflow_mlops.exceptions import MlopsError
from airflow_mlops.hooks.runtime import RuntimeHook, runtime_environ

#: where the images keep the runtime (docker/<runtime>/Dockerfile)
IMAGE_VENV = "/opt/mlops/venv"
IMAGE_RUNTIMES = "/opt/mlops/runtimes"
#: the default image of a runtime: what ``make images`` tags
DEFAULT_IMAGE = "localhost/airflow-mlops-{runtime}:latest"
LABEL = "io.github.airflow-mlops.task"


def docker_url() -> str:
    """The Docker Engine API: ``[mlops] docker_url``, else ``DOCKER_HOST``, else Docker's socket."""
    return settings._conf("docker_url") or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


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
    env = image_environ(runtime_environ(runtime, passthrough=passthrough))
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


class ContainerRuntimeHook(RuntimeHook):
    """
    Run a runtime's programs in its image, streaming their output to the task log.

    A :class:`~airflow_mlops.hooks.runtime.RuntimeHook` whose processes run in a container: the
    same ``bin``, ``python``, ``script``, ``start``, ``run`` and ``terminate``, so an operator
    builds one command for both modes. The process this host runs is
    :mod:`airflow_mlops.container_run` (the container, attached): stopping it (``on_kill``, a
    timeout, the serving supervisor) stops and removes the container.

    :param runtime: ``training``, ``serving`` or ``drift``.
    :param name: the container's name (:func:`container_name`).
    :param image: the image; default ``localhost/airflow-mlops-<runtime>:latest``.
    :param mounts: folders (or files: their folder) bound read-write at the same path.
    :param read_only_mounts: the same, read-only.
    :param url: the Docker Engine API (default :func:`docker_url`).
    """

    hook_name = "MLOps container runtime"
    #: what a process record keeps to start :meth:`start`'s process again (serving supervisor)
    recorded_environ = ("DOCKER_HOST", "HOME", "PYTHONUNBUFFERED")

    def __init__(
        self,
        runtime: str,
        name: str,
        image: str | None = None,
        mounts: Iterable[str | os.PathLike[str]] = (),
        read_only_mounts: Iterable[str | os.PathLike[str]] = (),
        url: str | None = None,
    ) -> None:
        super().__init__(runtime)
        self.name = name
        self.image = image or DEFAULT_IMAGE.format(runtime=runtime)
        self.mounts = list(mounts)
        self.read_only_mounts = list(read_only_mounts)
        self.url = url

    @property
    def place(self) -> str:
        return f"the {self.runtime} container {self.name}"

    @cached_property
    def api_url(self) -> str:
        return self.url or docker_url()

    @cached_property
    def client(self):
        """A docker-py client of the Engine API (cached); a clear error when nothing answers there."""
        docker = require("docker", "docker")
        try:
            client = docker.DockerClient(base_url=self.api_url, timeout=120)
            client.ping()
        except docker.errors.DockerException as err:
            raise MlopsError(
                f"No Docker Engine API answers at {self.api_url} ({err}). Start Docker, or podman's "
                "API (`podman system service --time=0 unix:///run/podman/podman.sock`), and set "
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

    def check_image(self) -> None:
        """Fail naming ``make images`` when the image is not there (or naming the API when it is down)."""
        docker = require("docker", "docker")
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound as err:
            raise MlopsError(
                f"Image {self.image} of the {self.runtime} runtime is not there: build it with "
                "`make images` (or docker build -f docker/<runtime>/Dockerfile), or pass image=."
            ) from err

    def environ(
        self, extra: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()
    ) -> dict[str, str]:
        """The container's environment (:func:`container_environ`) and ``DOCKER_HOST`` for the API."""
        return {**container_environ(self.runtime, extra, passthrough), "DOCKER_HOST": self.api_url}

    def terminate(self, grace: float = 20.0) -> None:
        """
        Stop the runner (on SIGTERM it stops and removes its container), then make sure the
        container is gone: a runner still waiting on a slow API when ``grace`` ran out was killed
        before it could remove it.
        """
        super().terminate(grace)
        docker = require("docker", "docker")
        try:
            self.client.containers.get(self.name).remove(force=True)
            self.log.info("Removed the container %s its runner left behind", self.name)
        except docker.errors.NotFound:
            pass
        except Exception as err:  # the API is down: say what is left, do not hide on_kill's cause
            self.log.warning("Could not remove the container %s: %s", self.name, err)

    def command(self, args: Sequence[str], cwd: str | None = None) -> list[str]:
        """
        :mod:`airflow_mlops.container_run` running ``args`` in the image, attached (``start``
        runs it in its own session: the container outlives the task process when it should, a
        server); it removes a container of the same name an earlier try left behind.
        """
        self.check_image()
        volumes = bind_mounts([*self.mounts, *([cwd] if cwd else [])], self.read_only_mounts)
        argv = [
            sys.executable,
            "-m",
            "airflow_mlops.container_run",
            "--name",
            self.name,
            "--image",
            self.image,
        ]
        argv += ["--user", f"{os.getuid()}:{os.getgid()}", "--label", f"{LABEL}={self.name}"]
        argv += [f"--volume={host}:{v['bind']}:{v['mode']}" for host, v in volumes.items()]
        argv += [*(["--workdir", cwd] if cwd else []), "--", *map(str, args)]
        self.log.info(
            "Running in the %s container %s (%s): %s; mounted: %s",
            self.runtime,
            self.name,
            self.image,
            " ".join(map(str, args)),
            ", ".join(f"{p} ({v['mode']})" for p, v in volumes.items()) or "nothing",
        )
        return argv
