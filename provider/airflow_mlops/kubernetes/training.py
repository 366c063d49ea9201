"""Manifests of a Horovod training job on Kubernetes: a Kubeflow ``MPIJob`` or an indexed ``Job``.

Pure functions that return plain dicts (what the API server receives as JSON): no API calls
and no ``kubernetes`` import, so they are cheap to call and easy to validate against schemas.
What every job shares — the :class:`~airflow_mlops.kubernetes.jobs.JobSpec`, names that make a
retry reattach (prefix ``hvd``), the files ConfigMap, containers, the ``batch/v1`` Job, reading a
job's phase — is in :mod:`airflow_mlops.kubernetes.jobs`; this module adds what is Horovod's.

What runs in the pods
    The image is the training runtime of ``docker/training/Dockerfile`` (venv on ``PATH`` under
    ``/opt/mlops/venv``, entry scripts under ``/opt/mlops/runtimes``: ``horovod_entry.py`` and,
    for the indexed Job, the Gloo launcher ``gloo_launch.py``). A ConfigMap mounted at
    :data:`~airflow_mlops.kubernetes.jobs.JOB_DIR` carries the entry's ``config.json`` and the
    user's training script. MLflow credentials are never written into a manifest: they are
    referenced from a Secret (:func:`mlflow_env`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from airflow_mlops.kubernetes.jobs import (
    JOB_DIR,
    JOB_LABEL,
    LABEL_DOMAIN,
    MPIJOB_GROUP,
    MPIJOB_VERSION,
    RUNTIMES_DIR,
    JobSpec,
    container,
    pod_spec,
    render_batch_job,
    render_config_map,
    resource_requirements,
)

__all__ = [
    "DEFAULT_IMAGE",
    "KINDS",
    "LABEL_DOMAIN",
    "LAUNCHER_SOURCE",
    "PYTHON",
    "RENDEZVOUS_PORT",
    "SECRET_ENV_KEYS",
    "entry_config",
    "mlflow_env",
    "render",
    "render_headless_service",
    "render_indexed_job",
    "render_mpijob",
]

KINDS = ("MPIJob", "IndexedJob")

#: the image's virtual environment (``VIRTUAL_ENV=/opt/mlops/venv`` in the Dockerfile)
PYTHON = "/opt/mlops/venv/bin/python"
DEFAULT_IMAGE = "airflow-mlops-training:latest"
#: port of Horovod's Gloo rendezvous server on rank 0 of an indexed Job
RENDEZVOUS_PORT = 29400
#: the Gloo launcher each pod of an indexed Job runs: an entry script of the training image
#: (``RUNTIMES_DIR``), this file in the provider
LAUNCHER_SOURCE = Path(__file__).resolve().parents[1] / "runtimes" / "gloo_launch.py"

#: MLflow variables that carry credentials: only ever referenced from a Secret
SECRET_ENV_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def mlflow_env(variables: dict[str, str], secret_name: str | None) -> list[dict[str, Any]]:
    """Container env for the MLflow client from ``MlflowHook.subprocess_env()``.

    The tracking/registry URIs are plain values; credentials are *references* to keys of the
    Secret ``secret_name`` (which must hold the same variable names as keys).

    :raises ValueError: the connection has credentials but no Secret was named.
    """
    env: list[dict[str, Any]] = []
    secret_keys = [k for k in variables if k in SECRET_ENV_KEYS]
    if secret_keys and not secret_name:
        raise ValueError(
            "The MLflow connection has credentials, which are never written into a Kubernetes manifest. "
            f"Create a Secret with the keys {', '.join(secret_keys)} in the job's namespace and pass its "
            "name as mlflow_secret_name."
        )
    for key, value in sorted(variables.items()):
        if key in SECRET_ENV_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
        else:
            env.append({"name": key, "value": value})
    return env


def entry_config(script_name: str, **config: Any) -> dict[str, Any]:
    """``horovod_entry.py``'s config with the in-pod paths of the script and of the result file."""
    return {**config, "script": f"{JOB_DIR}/{script_name}", "result_path": "/tmp/horovod-result.json"}


def _entry_command() -> list[str]:
    return [PYTHON, f"{RUNTIMES_DIR}/horovod_entry.py", f"{JOB_DIR}/config.json"]


def render_mpijob(spec: JobSpec) -> dict[str, Any]:
    """A Kubeflow ``MPIJob`` (kubeflow.org/v2beta1): one launcher running ``horovodrun --gloo``, N workers.

    The mpi-operator writes the workers into ``/etc/mpi/hostfile`` (``<host> slots=1``, a format
    ``horovodrun --hostfile`` reads) and mounts SSH keys; ``horovodrun`` starts one rank per
    worker over SSH, so **the image must run sshd** (the workers' command) — see docs/training.md.
    Workers get the requested resources (GPUs); the launcher only coordinates.
    """
    launcher_cmd = [
        "horovodrun", "--gloo", "-np", str(spec.num_proc),
        "--hostfile", "/etc/mpi/hostfile", *_entry_command(),
    ]  # fmt: skip
    launcher = container(spec, "launcher", launcher_cmd, {"requests": {"cpu": "500m", "memory": "512Mi"}})
    worker = container(spec, "worker", ["/usr/sbin/sshd", "-De"], resource_requirements(spec.resources))
    template_meta = {"labels": spec.all_labels}
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": 0}
    if spec.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    mpijob = {
        "apiVersion": f"{MPIJOB_GROUP}/{MPIJOB_VERSION}",
        "kind": "MPIJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": spec.all_labels,
            "annotations": dict(spec.annotations),
        },
        "spec": {
            "slotsPerWorker": 1,
            "mpiImplementation": "OpenMPI",
            "runPolicy": run_policy,
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {"metadata": template_meta, "spec": pod_spec(spec, [launcher], None)},
                },
                "Worker": {
                    "replicas": spec.num_proc,
                    "restartPolicy": "Never",
                    "template": {"metadata": template_meta, "spec": pod_spec(spec, [worker], None)},
                },
            },
        },
    }
    return copy.deepcopy(mpijob)  # launcher and workers share env/labels: no aliased sub-dicts


def render_headless_service(spec: JobSpec) -> dict[str, Any]:
    """The headless Service that gives indexed-Job pods DNS names (``<name>-<i>.<name>``).

    ``publishNotReadyAddresses`` because the pods have no readiness probe and rank 0's
    rendezvous address must resolve as soon as the pod runs.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.all_labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: spec.name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def render_indexed_job(spec: JobSpec) -> dict[str, Any]:
    """A ``batch/v1`` Job with ``completionMode: Indexed``: one pod (one rank) per index, no MPI operator.

    ``horovodrun`` needs SSH to start remote ranks, so each pod instead runs the image's
    ``gloo_launch.py`` (:data:`LAUNCHER_SOURCE`): it derives the rank from ``JOB_COMPLETION_INDEX``,
    rank 0 serves Horovod's Gloo rendezvous on :data:`RENDEZVOUS_PORT`, and every pod then runs
    ``horovod_entry.py`` with the ``HOROVOD_*`` variables ``horovodrun`` would have set. Pod
    hostnames are ``<name>-<index>`` under the headless Service ``<name>`` (``subdomain``), which
    is how rank 0 is found.
    """
    rendezvous = f"{spec.name}-0.{spec.name}.{spec.namespace}.svc"
    env = [
        {"name": "HVD_SIZE", "value": str(spec.num_proc)},
        {"name": "HVD_HOST_PREFIX", "value": f"{spec.name}-"},
        {"name": "HVD_RENDEZVOUS_ADDR", "value": rendezvous},
        {"name": "HVD_RENDEZVOUS_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "HVD_GLOO_IFACE", "value": "eth0"},
    ]
    command = [PYTHON, f"{RUNTIMES_DIR}/{LAUNCHER_SOURCE.name}", "--", *_entry_command()]
    worker = container(spec, "worker", command, resource_requirements(spec.resources))
    worker["env"].extend(env)
    worker["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod = pod_spec(spec, [worker], "Never")
    pod["subdomain"] = spec.name
    # one rank failing breaks the collective: fail the whole job, never restart a single rank
    return render_batch_job(spec, pod, completions=spec.num_proc, completionMode="Indexed")


def render(spec: JobSpec, kind: str) -> list[dict[str, Any]]:
    """Every object of the job, in creation order (the job itself last)."""
    if kind == "MPIJob":
        return [render_config_map(spec), render_mpijob(spec)]
    if kind == "IndexedJob":
        return [render_config_map(spec), render_headless_service(spec), render_indexed_job(spec)]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
