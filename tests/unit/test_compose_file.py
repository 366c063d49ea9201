"""``docker/compose.yaml`` against what ``scripts/compose.sh`` and docs/deployment.md promise.

The stack itself runs in ``tests/containers/test_compose.py``; these checks are the cheap ones
that hold for any compose tool: every variable the file requires is one the script provides, no
secret is written in the file, everything listens on 127.0.0.1 of the host's network, and every
path a runtime container mounts from the host is mounted at that same path.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
SCRIPT = REPO / "scripts" / "compose.sh"
REQUIRED = re.compile(r"\$\{(\w+):\?")
SECRETS = (
    "AIRFLOW_ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
)


def volume_parts(volume: str) -> list[str]:
    """``source:target[:mode]`` (``${VAR:?message}`` has colons of its own; read as ``${VAR}``)."""
    return [plain(part) for part in re.findall(r"(?:\$\{[^}]*\}|[^:])+", volume)]


def plain(value: str) -> str:
    return re.sub(r"\$\{(\w+)[^}]*\}", r"${\1}", value)


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_required_variable_is_set_by_the_script():
    script = SCRIPT.read_text()
    provided = set(re.findall(r"export (\w+)=", script)) | set(re.findall(r"print\(f\"(\w+)=", script))
    provided |= set(re.findall(r"export (?:\w+=\S+ )*(\w+)=", script))
    required = set(REQUIRED.findall(COMPOSE.read_text()))
    assert required, "the compose file requires its folder and secrets"
    assert required <= provided | {"MLOPS_DOCKER_SOCKET"}, required - provided
    assert "MLOPS_DOCKER_SOCKET=" in script
    assert set(SECRETS) <= required


def test_no_secret_is_written_in_the_file():
    text = COMPOSE.read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in text
    # a password in a URL is always a variable
    for url in re.findall(r"\w+(?:\+\w+)?://[^\s'\"]+", text):
        if "@" in url:
            assert url.split("://", 1)[1].split("@")[0].split(":")[1].startswith("${"), url


def test_everything_uses_the_host_network_and_binds_to_localhost():
    for name, service in services().items():
        assert service.get("network_mode") == "host", name
    env = services()["airflow-apiserver"]["environment"]
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert "--host 127.0.0.1" in " ".join(services()["mlflow"]["command"])
    postgres = (REPO / "docker" / "postgres" / "entrypoint.sh").read_text()
    assert 'listen_addresses="${POSTGRES_HOST:-127.0.0.1}"' in postgres
    assert "--bind ${REDIS_HOST:-127.0.0.1}" in (REPO / "docker" / "redis" / "Dockerfile").read_text()


def test_the_paths_runtime_containers_mount_are_mounted_at_the_same_path():
    worker = services()["airflow-worker"]
    env = worker["environment"]
    mounts = [volume_parts(v) for v in worker["volumes"]]
    same_path = {source for source, target, *_ in mounts if source == target}
    assert plain(env["AIRFLOW__MLOPS__DATA_DIR"]) == "${MLOPS_COMPOSE_DIR}/data" in same_path
    assert plain(env["AIRFLOW__CORE__DAGS_FOLDER"]) == "${MLOPS_DAGS_DIR}" in same_path
    assert env["AIRFLOW__MLOPS__EXECUTION_MODE"] == "docker"
    assert any(target == "/run/mlops/docker.sock" for _, target, *_ in mounts)
    assert env["AIRFLOW__MLOPS__DOCKER_URL"] == "unix:///run/mlops/docker.sock"
