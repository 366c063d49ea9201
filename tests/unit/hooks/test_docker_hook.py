"""``mode="docker"`` without a container: names, environment, mounts and errors of the container hook.

The containers themselves run in tests/containers/test_docker_mode.py.
"""

from __future__ import annotations

import re

import pytest
from airflow_mlops.hooks.docker import (
    ContainerRuntimeHook,
    bind_mounts,
    container_environ,
    container_name,
    docker_url,
)
from airflow_mlops.hooks.runtime import EXECUTION_MODES, check_mode, runtime_hook


def test_a_container_name_is_the_same_for_every_try_and_unique_per_task_instance():
    name = container_name("training", "flights_delay", "manual__2026-01-01T00:00:00+00:00", "train")
    assert name == container_name("training", "flights_delay", "manual__2026-01-01T00:00:00+00:00", "train")
    others = {
        container_name("training", "flights_delay", "manual__2026-01-02T00:00:00+00:00", "train"),
        container_name("training", "flights_delay", "manual__2026-01-01T00:00:00+00:00", "train", 0),
        container_name("training", "flights_delay", "manual__2026-01-01T00:00:00+00:00", "train", 1),
        container_name("drift", "flights_delay", "manual__2026-01-01T00:00:00+00:00", "train"),
    }
    assert name not in others and len(others) == 4
    # Docker's rule for names, whatever the DAG and task ids hold
    odd = container_name("drift", "dåg with spaces/and:colons" * 5, "r", "täsk")
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", odd) and len(odd) < 128


def test_the_container_gets_the_runtime_allow_list_without_host_paths(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", "mlflow://secret@host")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "secret")
    monkeypatch.setenv("HOROVOD_TIMELINE", "/tmp/t.json")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/lib")
    env = container_environ("training", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert not any(k.startswith("AIRFLOW") for k in env)
    assert "PATH" not in env and "LD_LIBRARY_PATH" not in env  # the image's own
    assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"
    assert env["HOROVOD_TIMELINE"] == "/tmp/t.json" and env["OMP_NUM_THREADS"] == "2"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_bind_mounts_keep_paths_and_drop_folders_a_mount_covers(tmp_path):
    data, work, scripts = tmp_path / "data", tmp_path / "data" / "work", tmp_path / "scripts"
    for folder in (data, work, scripts):
        folder.mkdir(parents=True)
    (scripts / "train.py").write_text("")
    volumes = bind_mounts([data, work, tmp_path / "missing"], read_only=[scripts / "train.py", work])
    assert volumes == {
        str(data): {"bind": str(data), "mode": "rw"},
        str(scripts): {"bind": str(scripts), "mode": "ro"},
    }
    # a read-write folder inside a read-only one stays writable
    assert bind_mounts([work], read_only=[data]) == {
        str(data): {"bind": str(data), "mode": "ro"},
        str(work): {"bind": str(work), "mode": "rw"},
    }


def test_the_api_address_comes_from_config_then_docker_host(monkeypatch):
    monkeypatch.delenv("AIRFLOW__MLOPS__DOCKER_URL", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_url() == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/podman/podman.sock")
    assert docker_url() == "unix:///run/podman/podman.sock"
    monkeypatch.setenv("AIRFLOW__MLOPS__DOCKER_URL", "tcp://127.0.0.1:2375")
    assert docker_url() == "tcp://127.0.0.1:2375"


def test_no_api_at_the_address_is_named_with_what_to_start(tmp_path):
    hook = ContainerRuntimeHook("drift", "mlops-drift-x", url=f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(Exception, match="No Docker Engine API answers at unix://.*nothing.sock") as err:
        hook.client  # noqa: B018 - the property connects
    assert "podman system service" in str(err.value) and "docker_url" in str(err.value)


def test_the_hook_names_the_image_paths_of_the_runtime():
    hook = ContainerRuntimeHook("training", "n")
    assert hook.image == "localhost/airflow-mlops-training:latest"
    assert hook.bin("horovodrun") == "/opt/mlops/venv/bin/horovodrun"
    assert hook.python == "/opt/mlops/venv/bin/python"
    assert hook.script("horovod_entry") == "/opt/mlops/runtimes/horovod_entry.py"


def test_the_configured_mode_is_the_default_and_a_bad_one_names_the_option(monkeypatch):
    from airflow_mlops.operators.drift import DriftDetectOperator

    args = {"reference_path": "r", "current_path": "c", "numeric_features": ["x"]}
    monkeypatch.setenv("AIRFLOW__MLOPS__EXECUTION_MODE", "docker")
    assert DriftDetectOperator(task_id="a", **args).mode == "docker"
    assert DriftDetectOperator(task_id="b", mode="local", **args).mode == "local"  # the task's own wins
    monkeypatch.setenv("AIRFLOW__MLOPS__EXECUTION_MODE", "Podman")
    with pytest.raises(ValueError, match=r"\[mlops\] execution_mode .*got 'podman'"):
        DriftDetectOperator(task_id="c", **args)
    monkeypatch.delenv("AIRFLOW__MLOPS__EXECUTION_MODE")
    assert DriftDetectOperator(task_id="d", **args).mode == "local"


def test_modes_are_checked_by_name():
    assert EXECUTION_MODES == ("local", "docker", "kubernetes")
    assert check_mode("docker") == "docker"
    with pytest.raises(ValueError, match="mode must be one of 'local', 'docker', 'kubernetes'; got 'podman'"):
        check_mode("podman")
    with pytest.raises(ValueError, match="not 'kubernetes'"):
        runtime_hook("drift", "kubernetes")


@pytest.mark.parametrize(
    "operator",
    [
        ("airflow_mlops.operators.train", "HorovodTrainOperator", {"training_script": "t.py"}),
        (
            "airflow_mlops.operators.drift",
            "DriftDetectOperator",
            {"reference_path": "r", "current_path": "c", "numeric_features": ["x"]},
        ),
    ],
)
def test_operators_take_docker_mode_and_refuse_an_unknown_one(operator):
    import importlib

    module, name, args = operator
    cls = getattr(importlib.import_module(module), name)
    assert cls(task_id="t", mode="docker", **args).mode == "docker"
    with pytest.raises(ValueError, match="mode must be one of"):
        cls(task_id="t2", mode="compose", **args)


@pytest.mark.parametrize(
    ("connection_mode", "configured", "execution", "deployments"),
    [
        ("docker", None, "docker", "local"),
        (None, "docker", "docker", "local"),
        ("local", "docker", "local", "local"),  # the connection's own wins
        (None, None, "local", "local"),
        ("kubernetes", "docker", "kubernetes", "kubernetes"),
    ],
)
def test_the_seldon_connection_mode_and_the_switch(
    monkeypatch, connection_mode, configured, execution, deployments
):
    import json

    from airflow_mlops.hooks.seldon import SeldonHook

    extra = {"mode": connection_mode} if connection_mode else {}
    monkeypatch.setenv("AIRFLOW_CONN_SELDON_X", json.dumps({"conn_type": "seldon", "extra": extra}))
    if configured:
        monkeypatch.setenv("AIRFLOW__MLOPS__EXECUTION_MODE", configured)
    else:
        monkeypatch.delenv("AIRFLOW__MLOPS__EXECUTION_MODE", raising=False)
    hook = SeldonHook("seldon_x")
    # where the model servers run / where deployments live (the router and its state: this host)
    assert (hook.execution_mode, hook.mode) == (execution, deployments)
