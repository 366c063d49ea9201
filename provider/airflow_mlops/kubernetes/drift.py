"""Manifests of a drift check on Kubernetes: one ``batch/v1`` Job running the drift image.

Pure functions returning plain dicts, built from the job building blocks every job of the provider
shares (:mod:`airflow_mlops.kubernetes.jobs`: spec, ConfigMap, container, pod spec, ``batch/v1``
Job, resources); the job's name starts with ``drift``.

What runs in the pod
    The image of ``docker/drift/Dockerfile`` (alibi-detect in the system Python, the entry scripts
    under ``/opt/mlops/runtimes``) runs ``drift_detect.py`` on the ``config.json`` of a ConfigMap
    mounted at :data:`~airflow_mlops.kubernetes.jobs.JOB_DIR` — the same script, with the same
    config, as local mode runs in the drift runtime environment.

Where the data is
    The reference, the window and the report are files on a volume that Airflow's workers and the
    pod both mount **at the same path** (a ReadWriteMany PersistentVolumeClaim): the config's
    paths then mean the same thing on both sides, and the operator reads the report the pod wrote.
    :func:`check_on_volume` refuses a path the pod could not see, before anything is created.

Why a failure is readable
    The container's ``terminationMessagePolicy`` is ``FallbackToLogsOnError``: when the check
    exits non-zero, the tail of its output (``drift_detect: error: <what is wrong>``) becomes the
    container's termination message, which the hook's failure report quotes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from airflow_mlops.kubernetes.jobs import (
    JOB_DIR,
    RUNTIMES_DIR,
    JobSpec,
    container,
    pod_spec,
    render_batch_job,
    render_config_map,
    resource_requirements,
)

#: the kind the job hook and trigger are given for a plain ``batch/v1`` Job
KIND = "Job"
#: the ``app.kubernetes.io/component`` label of the check's objects (its name starts with
#: ``NAME_PREFIXES["drift"]`` of :mod:`airflow_mlops.kubernetes.jobs`, the operator's prefix)
COMPONENT = "drift"
DEFAULT_IMAGE = "airflow-mlops-drift:latest"
#: the image's interpreter: python:3.11-slim with the drift requirements installed system-wide
PYTHON = "python"
SHARED_VOLUME = "shared-data"
#: what the check may hold at most (it loads two samples of ``max_rows`` rows and alibi-detect)
DEFAULT_RESOURCES = {"cpu": "1", "memory": "2Gi"}


def command() -> list[str]:
    """The container's command: the drift entry script on the ConfigMap's ``config.json``."""
    return [PYTHON, f"{RUNTIMES_DIR}/drift_detect.py", f"{JOB_DIR}/config.json"]


def shared_volume(claim_name: str, mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod volume of PersistentVolumeClaim ``claim_name`` and its mount at ``mount_path``."""
    volume = {"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": claim_name}}
    return volume, {"name": SHARED_VOLUME, "mountPath": mount_path}


def check_on_volume(paths: dict[str, str], mount_path: str) -> None:
    """Raise unless every path (``what → path``) lies under ``mount_path``, where the pod sees it.

    :raises ValueError: naming each path outside the volume and what to do.
    """
    root = PurePosixPath(mount_path)
    outside = {
        what: path
        for what, path in paths.items()
        if not PurePosixPath(path).is_absolute()
        or root not in (PurePosixPath(path), *PurePosixPath(path).parents)
    }
    if outside:
        listed = ", ".join(f"{what}={path!r}" for what, path in outside.items())
        raise ValueError(
            f"In Kubernetes mode the drift pod sees only the shared volume mounted at {mount_path!r}, "
            f"but {listed} {'is' if len(outside) == 1 else 'are'} not under it. Write the data (and "
            "report_dir) under shared_volume_path, a volume Airflow's workers mount at the same path."
        )


def render(spec: JobSpec, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMap with ``config.json`` and the Job that runs the check, in creation order.

    The Job never retries by itself (:func:`~airflow_mlops.kubernetes.jobs.render_batch_job`):
    the check is deterministic on its inputs, so a second pod would fail the same way.
    """
    spec = replace(
        spec, files={**spec.files, "config.json": json.dumps(config, indent=2)}, component=COMPONENT
    )
    check = container(spec, "drift", command(), resource_requirements(spec.resources or DEFAULT_RESOURCES))
    check["terminationMessagePolicy"] = "FallbackToLogsOnError"
    job = render_batch_job(spec, pod_spec(spec, [check], "Never"))
    return [render_config_map(spec), job]
