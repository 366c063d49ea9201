"""The Docker Engine API the ``mode="docker"`` tests run containers through: podman's, on a socket.

``scripts/images.sh --api`` starts ``podman system service`` unless one answers on its socket
already (a developer's, from the docs); what this session started, it stops at the end.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "scripts" / "images.sh"


def _api_answers(sock: Path) -> bool:
    probe = ["curl", "-sf", "--max-time", "2", "--unix-socket", str(sock), "http://podman/_ping"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_host():
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run `make images` (as root on Debian)")
    state = REPO / ".runtimes" / "containers"
    sock = state / "podman.sock"
    already = _api_answers(sock)
    out = subprocess.run(["bash", str(IMAGES), "--api"], capture_output=True, text=True, check=True).stdout
    url = out.strip().split("=", 1)[1]
    yield url
    if not already:  # ours: stop it (the process that listens on the socket)
        subprocess.run(["pkill", "-f", f"podman system service --time=0 {url}"], capture_output=True)


@pytest.fixture(scope="session")
def docker(docker_host):
    import docker as docker_py

    return docker_py.DockerClient(base_url=docker_host)
