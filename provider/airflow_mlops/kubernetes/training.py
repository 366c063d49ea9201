"""Manifests of a Horovod training job on Kubernetes: a Kubeflow ``MPIJob`` or an indexed ``Job``.

Pure functions that return plain dicts (what the API server receives as JSON): no API calls
and no ``kubernetes`` import, so they are cheap to call and easy to validate against schemas.

Naming, and why a retry reattaches
    The job's name derives from dag id, run id, task id and map index, **not** the try number
    (:func:`job_name`). A retry of the task therefore looks for the same name: when the job of an
    earlier try is still running, or has succeeded, the retry waits for / collects *that* job
    instead of starting a duplicate that would train twice and log two MLflow runs. Only when
    the earlier job failed is it deleted and created again under the same name. The try number
    that created the job is kept in a label and an annotation (:data:`TRY_LABEL`), so
    ``kubectl get mpijobs -L airflow-mlops.io/try-number`` shows it.

What runs in the pods
    The image is the training runtime of ``docker/training/Dockerfile`` (venv on ``PATH`` under
    ``/opt/mlops/venv``, entry scripts under ``/opt/mlops/runtimes``). A ConfigMap mounted at
    :data:`JOB_DIR` carries the entry's ``config.json``, the user's training script and, for the
    indexed Job, the Gloo launcher (``gloo_launch.py``). MLflow credentials are never written
    into a manifest: they are referenced from a Secret (:func:`mlflow_env`).
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MPIJOB_GROUP = "kubeflow.org"
MPIJOB_VERSION = "v2beta1"
MPIJOB_PLURAL = "mpijobs"
KINDS = ("MPIJob", "IndexedJob")

LABEL_DOMAIN = "airflow-mlops.io"
#: label on every object (and pod) of one training job: its name
JOB_LABEL = f"{LABEL_DOMAIN}/job"
#: label + annotation: the Airflow try that created the job
TRY_LABEL = f"{LABEL_DOMAIN}/try-number"
MANAGED_BY = {"app.kubernetes.io/managed-by": "airflow-mlops", "app.kubernetes.io/component": "training"}

#: where the ConfigMap (config.json, training script, launcher) is mounted in every pod
JOB_DIR = "/opt/mlops/job"
#: ``COPY provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/`` in docker/training/Dockerfile
RUNTIMES_DIR = "/opt/mlops/runtimes"
#: the image's virtual environment (``VIRTUAL_ENV=/opt/mlops/venv`` in the Dockerfile)
PYTHON = "/opt/mlops/venv/bin/python"
DEFAULT_IMAGE = "airflow-mlops-training:latest"
#: port of Horovod's Gloo rendezvous server on rank 0 of an indexed Job
RENDEZVOUS_PORT = 29400
#: MPIJob pods are ``<name>-launcher`` / ``<name>-worker-<i>``, indexed Job hostnames ``<name>-<i>``:
#: 40 characters leave room for those suffixes inside the 63-character DNS label limit.
NAME_MAX = 40
LAUNCHER_SOURCE = Path(__file__).with_name("gloo_launch.py")

#: MLflow variables that carry credentials: only ever referenced from a Secret
SECRET_ENV_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_GPU_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything a training job's manifests are rendered from.

    :param name: the job's name (see :func:`job_name`).
    :param namespace: the namespace of every object.
    :param image: the training image.
    :param num_proc: Horovod processes; one per worker pod (one GPU each when GPUs are requested).
    :param files: ConfigMap content, file name → text (``config.json``, the training script...).
    :param env: container environment (``[{"name", "value"}]`` or ``valueFrom`` entries).
    :param resources: requests/limits of a worker pod, see :func:`resource_requirements`.
    :param labels: labels of every object and pod (``JOB_LABEL`` is added).
    :param annotations: annotations of the job object.
    :param service_account: service account of the pods (None: the namespace's default).
    :param active_deadline_seconds: Kubernetes kills the job after this long (from the task timeout).
    :param image_pull_policy: e.g. ``IfNotPresent``; None leaves the cluster default.
    :param volumes: more pod volumes (e.g. a PersistentVolumeClaim holding the data), beside the
        ConfigMap's.
    :param volume_mounts: where the container mounts them.
    """

    name: str
    namespace: str
    image: str
    num_proc: int
    files: dict[str, str]
    env: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    active_deadline_seconds: int | None = None
    image_pull_policy: str | None = None
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-files"

    @property
    def all_labels(self) -> dict[str, str]:
        return {**MANAGED_BY, **self.labels, JOB_LABEL: self.name}


# --- names, labels ---------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, prefix: str = "hvd") -> str:
    """A DNS-1123 name that is the same for every try of one task instance and differs across runs.

    ``<prefix>-<task id slug>-<10 hex digits of sha256(dag id, run id, task id, map index)>``; the
    try number is deliberately left out so that a retry finds the job of the earlier try.
    """
    digest = hashlib.sha256("\x1f".join([dag_id, run_id, task_id, str(map_index)]).encode()).hexdigest()[:10]
    room = NAME_MAX - len(prefix) - len(digest) - 2
    middle = _slug(task_id)[:room].strip("-") or "task"
    return f"{prefix}-{middle}-{digest}"


def job_labels(try_number: int) -> dict[str, str]:
    """Labels of a job created by try ``try_number`` (run ids are not valid label values: annotations)."""
    return {TRY_LABEL: str(try_number)}


def job_annotations(
    dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> dict[str, str]:
    """Annotations naming the task instance (free text, unlike label values) and the creating try."""
    return {
        f"{LABEL_DOMAIN}/dag-id": dag_id,
        f"{LABEL_DOMAIN}/run-id": run_id,
        f"{LABEL_DOMAIN}/task-id": task_id,
        f"{LABEL_DOMAIN}/map-index": str(map_index),
        TRY_LABEL: str(try_number),
    }


# --- containers ------------------------------------------------------------------------


def resource_requirements(resources: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """Container ``resources`` from ``{"cpu": "2", "memory": "4Gi", "gpu": 1, ...}``.

    ``cpu``/``memory`` (and any other key, e.g. ``ephemeral-storage``) become requests; ``memory``
    is also the limit (a training job should be OOM-killed rather than starve its node). ``gpu``
    becomes ``nvidia.com/gpu`` in requests *and* limits, as extended resources require; another
    vendor's key (``amd.com/gpu``) passes through the same way. Quantities are rendered as strings.
    """
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for key, value in (resources or {}).items():
        if value is None:
            continue
        if key == "gpu" or "/" in key:
            count = int(value)
            if count < 0 or str(count) != str(value).strip():
                raise ValueError(f"resources[{key!r}] must be a whole number of devices, got {value!r}")
            if count:
                name = _GPU_KEY if key == "gpu" else key
                requests[name] = limits[name] = str(count)
            continue
        requests[key] = str(value)
        if key == "memory":
            limits[key] = str(value)
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


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


def _container(spec: TrainingJobSpec, name: str, command: list[str], resources: dict) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "command": command,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *spec.env],
        "volumeMounts": [{"name": "job-files", "mountPath": JOB_DIR, "readOnly": True}, *spec.volume_mounts],
        "workingDir": "/tmp",
    }
    if resources:
        container["resources"] = resources
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _pod_spec(spec: TrainingJobSpec, containers: list[dict], restart_policy: str | None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": containers,
        "volumes": [{"name": "job-files", "configMap": {"name": spec.config_map_name}}, *spec.volumes],
    }
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return pod


def _entry_command() -> list[str]:
    return [PYTHON, f"{RUNTIMES_DIR}/horovod_entry.py", f"{JOB_DIR}/config.json"]


# --- objects ---------------------------------------------------------------------------


def render_config_map(spec: TrainingJobSpec) -> dict[str, Any]:
    """The ConfigMap with the job's files (config.json, training script, launcher)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec.config_map_name, "namespace": spec.namespace, "labels": spec.all_labels},
        "data": dict(spec.files),
    }


def render_mpijob(spec: TrainingJobSpec) -> dict[str, Any]:
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
    launcher = _container(spec, "launcher", launcher_cmd, {"requests": {"cpu": "500m", "memory": "512Mi"}})
    worker = _container(spec, "worker", ["/usr/sbin/sshd", "-De"], resource_requirements(spec.resources))
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
                    "template": {"metadata": template_meta, "spec": _pod_spec(spec, [launcher], None)},
                },
                "Worker": {
                    "replicas": spec.num_proc,
                    "restartPolicy": "Never",
                    "template": {"metadata": template_meta, "spec": _pod_spec(spec, [worker], None)},
                },
            },
        },
    }
    return copy.deepcopy(mpijob)  # launcher and workers share env/labels: no aliased sub-dicts


def render_headless_service(spec: TrainingJobSpec) -> dict[str, Any]:
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


def render_indexed_job(spec: TrainingJobSpec) -> dict[str, Any]:
    """A ``batch/v1`` Job with ``completionMode: Indexed``: one pod (one rank) per index, no MPI operator.

    ``horovodrun`` needs SSH to start remote ranks, so each pod instead runs ``gloo_launch.py``
    (from the ConfigMap): it derives the rank from ``JOB_COMPLETION_INDEX``, rank 0 serves Horovod's
    Gloo rendezvous on :data:`RENDEZVOUS_PORT`, and every pod then runs ``horovod_entry.py`` with
    the ``HOROVOD_*`` variables ``horovodrun`` would have set. Pod hostnames are ``<name>-<index>``
    under the headless Service ``<name>`` (``subdomain``), which is how rank 0 is found.
    """
    rendezvous = f"{spec.name}-0.{spec.name}.{spec.namespace}.svc"
    env = [
        {"name": "HVD_SIZE", "value": str(spec.num_proc)},
        {"name": "HVD_HOST_PREFIX", "value": f"{spec.name}-"},
        {"name": "HVD_RENDEZVOUS_ADDR", "value": rendezvous},
        {"name": "HVD_RENDEZVOUS_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "HVD_GLOO_IFACE", "value": "eth0"},
    ]
    command = [PYTHON, f"{JOB_DIR}/gloo_launch.py", "--", *_entry_command()]
    worker = _container(spec, "worker", command, resource_requirements(spec.resources))
    worker["env"].extend(env)
    worker["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod = _pod_spec(spec, [worker], "Never")
    pod["subdomain"] = spec.name
    # one rank failing breaks the collective: fail the whole job, never restart a single rank
    return render_batch_job(spec, pod, completions=spec.num_proc, completionMode="Indexed")


def render_batch_job(spec: TrainingJobSpec, pod: dict[str, Any], **job_fields: Any) -> dict[str, Any]:
    """A ``batch/v1`` Job of ``pod`` that never retries a pod by itself (``backoffLimit: 0``: Airflow's
    retries decide), with ``activeDeadlineSeconds`` from the spec and more ``job_fields``."""
    completions = job_fields.pop("completions", 1)
    job_spec: dict[str, Any] = {
        **job_fields,
        "completions": completions,
        "parallelism": completions,
        "backoffLimit": 0,
        "template": {"metadata": {"labels": spec.all_labels}, "spec": pod},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": spec.all_labels,
            "annotations": dict(spec.annotations),
        },
        "spec": job_spec,
    }


def render(spec: TrainingJobSpec, kind: str) -> list[dict[str, Any]]:
    """Every object of the job, in creation order (the job itself last)."""
    if kind == "MPIJob":
        return [render_config_map(spec), render_mpijob(spec)]
    if kind == "IndexedJob":
        files = {**spec.files, "gloo_launch.py": LAUNCHER_SOURCE.read_text()}
        spec = replace(spec, files=files)
        return [render_config_map(spec), render_headless_service(spec), render_indexed_job(spec)]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the created ``job`` (needs its uid), so deleting the job deletes its helpers."""
    return {
        "apiVersion": job["apiVersion"],
        "kind": job["kind"],
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }


# --- status ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPhase:
    """Where a job stands: ``state`` is ``running``, ``succeeded`` or ``failed``."""

    state: str
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")


def _true(conditions: list[dict[str, Any]], *types: str) -> dict[str, Any] | None:
    # condition.status is the *string* "True"/"False"/"Unknown"
    return next((c for c in conditions if c.get("type") in types and c.get("status") == "True"), None)


def job_phase(kind: str, obj: dict[str, Any]) -> JobPhase:
    """The phase of an MPIJob (conditions ``Succeeded``/``Failed``) or a Job (``Complete``/``Failed``)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    done_types = ("Succeeded",) if kind == "MPIJob" else ("Complete", "SuccessCriteriaMet")
    if failed := _true(conditions, "Failed"):
        return JobPhase("failed", failed.get("reason", ""), failed.get("message", ""))
    if succeeded := _true(conditions, *done_types):
        return JobPhase("succeeded", succeeded.get("reason", ""), succeeded.get("message", ""))
    running = _true(conditions, "Running", "Created", "Suspended")
    return JobPhase("running", (running or {}).get("reason", ""), (running or {}).get("message", ""))


def pod_failures(pods: list[dict[str, Any]]) -> list[str]:
    """``pod/container: reason (exit code N): message`` for every terminated-with-error container."""
    out = []
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                code, reason = term["exitCode"], term.get("reason", "Error")
                msg = f"{pod_name}/{cs.get('name')}: {reason} (exit code {code})"
                out.append(msg + (f": {term['message'].strip()}" if term.get("message") else ""))
        if status.get("phase") == "Failed" and status.get("reason") and not status.get("containerStatuses"):
            out.append(f"{pod_name}: {status['reason']}: {status.get('message', '')}".rstrip(": "))
    return out
