"""Run one command in a container, attached, as a process: ``python -m airflow_mlops.container_run``.

What manages processes by pid — the serving supervisor that restarts a dead model server from
its recorded command line, a deploy that stops a retired version's process group — manages a
container through this process: it removes a leftover container of the same name (its previous
incarnation was killed), runs the image through the Docker Engine API (``DOCKER_HOST``), relays
the container's output to its own, exits with the container's status, and on SIGTERM/SIGINT
stops and removes the container first. Stdlib and docker-py only: no Airflow import.

Usage::

    DOCKER_HOST=unix:///run/podman/podman.sock python -m airflow_mlops.container_run \\
        --name NAME --image IMAGE [--user UID:GID] [--volume HOST:CONTAINER:MODE ...] \\
        [--workdir DIR] [--label KEY=VALUE ...] -- PROGRAM [ARG ...]

The container shares the host's network and gets this process's environment minus the host's
paths (``HOST_ONLY``) and ``DOCKER_HOST``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Mapping

#: names of a host environment that are paths or settings of the host, not of the image
HOST_ONLY = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LD_LIBRARY_PATH", "TMPDIR", "TEMP", "TMP",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPYCACHEPREFIX",
        "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "DOCKER_HOST",
    }
)  # fmt: skip
#: Docker's own socket: the API when neither ``[mlops] docker_url`` nor ``DOCKER_HOST`` names one
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
#: seconds a stopped container gets between SIGTERM and SIGKILL (less than the 10 s a process
#: group gets from whoever stops this process)
STOP_GRACE = 5


def image_environ(source: Mapping[str, str]) -> dict[str, str]:
    """``source`` without the host's paths; ``HOME=/tmp`` (an arbitrary uid has no home in the image)."""
    env = {k: v for k, v in source.items() if k not in HOST_ONLY}
    env["HOME"] = "/tmp"
    return env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.container_run", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--user")
    parser.add_argument("--volume", action="append", default=[], help="HOST:CONTAINER:MODE")
    parser.add_argument("--workdir")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("container_run: no command given after --", file=sys.stderr)
        return 2
    import docker

    client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL)
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(args.name).remove(force=True)
        print(f"container_run: removed the leftover container {args.name}", flush=True)
    volumes = {}
    for spec in args.volume:
        host, bind, mode = spec.rsplit(":", 2)
        volumes[host] = {"bind": bind, "mode": mode}
    container = client.containers.run(
        args.image,
        entrypoint=[command[0]],
        command=command[1:],
        name=args.name,
        environment=image_environ(os.environ),
        volumes=volumes,
        working_dir=args.workdir,
        network_mode="host",
        user=args.user,
        labels=dict(label.split("=", 1) for label in args.label),
        detach=True,
    )

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.stop(timeout=STOP_GRACE)
        # the log stream ends with the container; the code below removes it and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        out = sys.stdout.buffer
        for chunk in container.logs(stream=True, follow=True):
            out.write(chunk)
            out.flush()
        code = int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
