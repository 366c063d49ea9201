"""What every Kubernetes job of the provider shares: names, labels, the files ConfigMap, containers,
the ``batch/v1`` Job, and reading where a job (Kubeflow ``MPIJob`` or ``batch/v1`` Job) stands.

Pure functions on plain dicts (what the API server receives as JSON): no API calls and no
``kubernetes`` import, so they are cheap to call and easy to validate against schemas. The API
calls live in :class:`airflow_mlops.hooks.kubernetes.KubernetesJobHook`, the wait in the triggerer
in :class:`airflow_mlops.triggers.kubernetes.KubernetesJobTrigger`, the create-or-reattach logic
of the operators in :class:`airflow_mlops.operators.kubernetes_job.KubernetesJobMixin`. What a
training job renders is in :mod:`airflow_mlops.kubernetes.training`, a drift check's in
:mod:`airflow_mlops.kubernetes.drift`.

Naming, and why a retry reattaches
    A job's name derives from dag id, run id, task id and map index, **not** the try number
    (:func:`job_name`), behind a prefix saying what the job does (:data:`NAME_PREFIXES`: ``hvd``
    for Horovod training, ``drift`` for a drift check). A retry of the task therefore looks for the
    same name: when the job of an earlier try is still running, or has succeeded, the retry waits
    for / collects *that* job instead of starting a duplicate. Only when the earlier job failed is
    it deleted and created again under the same name. The try number that created the job is kept
    in a label and an annotation (:data:`TRY_LABEL`), so ``kubectl get jobs -L
    airflow-mlops.io/try-number`` shows it.

What runs in the pods
    An image of ``docker/`` (training or drift) with the provider's entry scripts under
    :data:`RUNTIMES_DIR` (``COPY provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/``); a
    ConfigMap mounted at :data:`JOB_DIR` carries the entry's ``config.json`` (and, for training,
    the user's script).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

MPIJOB_GROUP = "kubeflow.org"
MPIJOB_VERSION = "v2beta1"
MPIJOB_PLURAL = "mpijobs"

LABEL_DOMAIN = "airflow-mlops.io"
#: label on every object (and pod) of one job: its name
JOB_LABEL = f"{LABEL_DOMAIN}/job"
#: label + annotation: the Airflow try that created the job
TRY_LABEL = f"{LABEL_DOMAIN}/try-number"
MANAGED_BY = "airflow-mlops"

#: first part of a job's name, by what the job does
NAME_PREFIXES = {"training": "hvd", "drift": "drift"}

#: where the job's ConfigMap (config.json, training script) is mounted in every pod
JOB_DIR = "/opt/mlops/job"
#: ``COPY provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/`` in the images of docker/
RUNTIMES_DIR = "/opt/mlops/runtimes"
#: MPIJob pods are ``<name>-launcher`` / ``<name>-worker-<i>``, indexed Job hostnames ``<name>-<i>``:
#: 40 characters leave room for those suffixes inside the 63-character DNS label limit.
NAME_MAX = 40

_GPU_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class JobSpec:
    """Everything a job's manifests are rendered from.

    :param name: the job's name (see :func:`job_name`).
    :param namespace: the namespace of every object.
    :param image: the container image.
    :param files: ConfigMap content, file name → text (``config.json``, a training script...).
    :param num_proc: processes (pods) of the job: Horovod ranks for training, 1 for a drift check.
    :param component: the ``app.kubernetes.io/component`` label (``training``, ``drift``).
    :param env: container environment (``[{"name", "value"}]`` or ``valueFrom`` entries).
    :param resources: requests/limits of a pod, see :func:`resource_requirements`.
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
    files: dict[str, str]
    num_proc: int = 1
    component: str = "job"
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
        return {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/component": self.component,
            **self.labels,
            JOB_LABEL: self.name,
        }


# --- names, labels ---------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, prefix: str) -> str:
    """A DNS-1123 name that is the same for every try of one task instance and differs across runs.

    ``<prefix>-<task id slug>-<10 hex digits of sha256(dag id, run id, task id, map index)>``; the
    try number is deliberately left out so that a retry finds the job of the earlier try.

    :param prefix: what the job does (:data:`NAME_PREFIXES`).
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
    is also the limit (a job should be OOM-killed rather than starve its node). ``gpu`` becomes
    ``nvidia.com/gpu`` in requests *and* limits, as extended resources require; another vendor's
    key (``amd.com/gpu``) passes through the same way. Quantities are rendered as strings.
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


def container(spec: JobSpec, name: str, command: list[str], resources: dict[str, Any]) -> dict[str, Any]:
    """A container of the job: ``command`` in ``spec.image`` with the job's env and the files ConfigMap
    mounted read-only at :data:`JOB_DIR` (plus ``spec.volume_mounts``)."""
    out: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "command": command,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *spec.env],
        "volumeMounts": [{"name": "job-files", "mountPath": JOB_DIR, "readOnly": True}, *spec.volume_mounts],
        "workingDir": "/tmp",
    }
    if resources:
        out["resources"] = resources
    if spec.image_pull_policy:
        out["imagePullPolicy"] = spec.image_pull_policy
    return out


def pod_spec(spec: JobSpec, containers: list[dict], restart_policy: str | None) -> dict[str, Any]:
    """A pod spec of ``containers`` with the files ConfigMap (and ``spec.volumes``) as volumes."""
    pod: dict[str, Any] = {
        "containers": containers,
        "volumes": [{"name": "job-files", "configMap": {"name": spec.config_map_name}}, *spec.volumes],
    }
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return pod


# --- objects ---------------------------------------------------------------------------


def render_config_map(spec: JobSpec) -> dict[str, Any]:
    """The ConfigMap with the job's files (config.json, training script...)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec.config_map_name, "namespace": spec.namespace, "labels": spec.all_labels},
        "data": dict(spec.files),
    }


def render_batch_job(spec: JobSpec, pod: dict[str, Any], **job_fields: Any) -> dict[str, Any]:
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
    """The phase of an MPIJob or a ``batch/v1`` Job (``kind`` ``Job`` or ``IndexedJob``) from its conditions.

    * MPIJob (mpi-operator v2beta1): ``Succeeded`` / ``Failed``; ``Created`` and ``Running`` before.
    * Job: since Kubernetes 1.31 the Job controller first adds the interim ``SuccessCriteriaMet`` /
      ``FailureTarget`` condition and only once the pods are gone the terminal ``Complete`` /
      ``Failed`` (``newSuccessCondition``/``newFailureCondition`` in
      pkg/controller/job/job_controller.go); the outcome is decided at the interim one, so both
      count. A running Job has no condition at all (``active`` counts its pods).
    """
    conditions = (obj.get("status") or {}).get("conditions") or []
    if kind == "MPIJob":
        done_types, failed_types = ("Succeeded",), ("Failed",)
    else:
        done_types, failed_types = ("Complete", "SuccessCriteriaMet"), ("Failed", "FailureTarget")
    if failed := _true(conditions, *failed_types):
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
