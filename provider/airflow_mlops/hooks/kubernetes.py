"""Create, watch and delete the provider's jobs on Kubernetes: Horovod training (Kubeflow MPIJob or
indexed Job) and drift checks (``batch/v1`` Job).

The API calls go through the cncf-kubernetes provider's ``KubernetesHook`` (its ``kubernetes``
connection: in-cluster, kube config path or kube config JSON in the extra). ``import kubernetes``
costs ~1.6 s, so the provider's hook is imported on first use, never at module import.

``TrainingJobHook`` is the former name of :class:`KubernetesJobHook` (deprecated; it still imports).
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops.kubernetes.jobs import (
    JOB_LABEL,
    MPIJOB_GROUP,
    MPIJOB_PLURAL,
    MPIJOB_VERSION,
    JobPhase,
    job_phase,
    owner_reference,
    pod_failures,
)

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook


def _status(err: BaseException) -> int | None:
    return getattr(err, "status", None)


class KubernetesApiHook(BaseHook):
    """
    The cluster of a ``kubernetes`` connection (the cncf-kubernetes provider's type), through
    that provider's ``KubernetesHook``: its connection handling and cached API clients.

    :param kubernetes_conn_id: the ``kubernetes`` connection.
    :param namespace: namespace of the objects; None takes the connection's ``namespace`` extra,
        else ``default``.
    """

    conn_name_attr = "kubernetes_conn_id"
    default_conn_name = "kubernetes_default"
    hook_name = "Kubernetes"

    def __init__(self, kubernetes_conn_id: str = default_conn_name, namespace: str | None = None) -> None:
        super().__init__()
        self.kubernetes_conn_id = kubernetes_conn_id
        self._namespace = namespace

    @cached_property
    def kube(self) -> KubernetesHook:
        """The cncf-kubernetes hook that owns the connection and the (cached) API clients."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def namespace(self) -> str:
        return self._namespace or self.kube.get_namespace() or "default"


class KubernetesJobHook(KubernetesApiHook):
    """
    Jobs on the cluster of a ``kubernetes`` connection (the cncf-kubernetes provider's type):
    ``kind`` ``MPIJob`` (Kubeflow mpi-operator), ``IndexedJob`` or ``Job`` (both ``batch/v1``).

    Every method works on plain dicts (the objects' JSON), like the manifests rendered by
    :mod:`airflow_mlops.kubernetes.jobs` and its users (training, drift).

    :param kubernetes_conn_id: the ``kubernetes`` connection.
    :param namespace: namespace of the jobs; None takes the connection's ``namespace`` extra, else
        ``default``.
    """

    hook_name = "Kubernetes jobs"

    def _to_dict(self, obj: Any) -> dict[str, Any]:
        # typed models (V1Job...) → the API's camelCase JSON, like CustomObjectsApi returns
        return obj if isinstance(obj, dict) else self.kube.api_client.sanitize_for_serialization(obj)

    # --- jobs --------------------------------------------------------------------------

    def get_job(self, kind: str, name: str) -> dict[str, Any] | None:
        """The job ``name`` (with its status), or None when it does not exist."""
        try:
            if kind == "MPIJob":
                return self.kube.custom_object_client.get_namespaced_custom_object(
                    MPIJOB_GROUP, MPIJOB_VERSION, self.namespace, MPIJOB_PLURAL, name
                )
            return self._to_dict(self.kube.batch_v1_client.read_namespaced_job_status(name, self.namespace))
        except Exception as err:
            if _status(err) == 404:
                return None
            raise

    def phase(self, kind: str, name: str) -> JobPhase:
        job = self.get_job(kind, name)
        if job is None:
            raise RuntimeError(f"{kind} {self.namespace}/{name} no longer exists (deleted outside Airflow?).")
        return job_phase(kind, job)

    def create(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        """Create the job's objects in order (helpers first, the job last) and return the created job.

        A helper (ConfigMap, Service) left over from an earlier attempt is replaced. Afterwards the
        helpers get an ownerReference to the job, so Kubernetes deletes them with it.
        """
        *helpers, job_manifest = objects
        for obj in helpers:
            self._create_or_replace(obj)
        job = self._create_job(job_manifest)
        owner = {"metadata": {"ownerReferences": [owner_reference(job)]}}
        for obj in helpers:
            self._patch(obj, owner)
        self.log.info("Created %s %s/%s", job["kind"], self.namespace, job["metadata"]["name"])
        return job

    def _create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "MPIJob":
            return self.kube.custom_object_client.create_namespaced_custom_object(
                MPIJOB_GROUP, MPIJOB_VERSION, self.namespace, MPIJOB_PLURAL, manifest
            )
        return self._to_dict(self.kube.batch_v1_client.create_namespaced_job(self.namespace, manifest))

    def _create_or_replace(self, obj: dict[str, Any]) -> None:
        core = self.kube.core_v1_client
        name = obj["metadata"]["name"]
        create, replace = {
            "ConfigMap": (core.create_namespaced_config_map, core.replace_namespaced_config_map),
            "Service": (core.create_namespaced_service, None),
        }[obj["kind"]]
        try:
            create(self.namespace, obj)
        except Exception as err:
            if _status(err) != 409:
                raise
            if replace is not None:  # a Service of the same name selects the same pods: keep it
                replace(name, self.namespace, obj)

    def _patch(self, obj: dict[str, Any], body: dict[str, Any]) -> None:
        core = self.kube.core_v1_client
        patch = {"ConfigMap": core.patch_namespaced_config_map, "Service": core.patch_namespaced_service}
        # a dict body would otherwise go out as application/json-patch+json, which needs a list
        patch[obj["kind"]](
            obj["metadata"]["name"], self.namespace, body, _content_type="application/merge-patch+json"
        )

    def delete_job(self, kind: str, name: str) -> bool:
        """Delete the job and (``Background`` propagation) its pods and helpers; False when it was gone."""
        try:
            if kind == "MPIJob":
                self.kube.custom_object_client.delete_namespaced_custom_object(
                    MPIJOB_GROUP, MPIJOB_VERSION, self.namespace, MPIJOB_PLURAL, name,
                    propagation_policy="Background",
                )  # fmt: skip
            else:
                self.kube.batch_v1_client.delete_namespaced_job(
                    name, self.namespace, propagation_policy="Background"
                )
        except Exception as err:
            if _status(err) == 404:
                return False
            raise
        self.log.info("Deleted %s %s/%s", kind, self.namespace, name)
        return True

    def wait_deleted(self, kind: str, name: str, timeout: float = 120, poll_interval: float = 2) -> None:
        """Wait until ``name`` is gone (finalizers may keep a deleted object for a while)."""
        deadline = time.monotonic() + timeout
        while self.get_job(kind, name) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{kind} {self.namespace}/{name} still exists {timeout:.0f} s after its deletion; "
                    "check its finalizers (kubectl get -o yaml) and delete it by hand."
                )
            time.sleep(poll_interval)

    def wait(self, kind: str, name: str, poll_interval: float = 30, timeout: float | None = None) -> JobPhase:
        """Poll until the job succeeds or fails (blocking; the deferrable path uses the trigger instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            phase = self.phase(kind, name)
            if phase.done:
                return phase
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {self.namespace}/{name} did not finish within {timeout:.0f} s.")
            self.log.info("%s %s is %s; next check in %s s", kind, name, phase.state, poll_interval)
            time.sleep(poll_interval)

    # --- diagnostics -------------------------------------------------------------------

    def list_pods(self, name: str) -> list[dict[str, Any]]:
        pods = self.kube.core_v1_client.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_LABEL}={name}"
        )
        return [self._to_dict(p) for p in pods.items]

    def failure_details(self, kind: str, name: str) -> str:
        """Why the job failed: its Failed condition and every container that exited with an error."""
        job = self.get_job(kind, name)
        lines = []
        if job is not None:
            phase = job_phase(kind, job)
            lines.append(f"{kind} {self.namespace}/{name} failed: {phase.reason or 'unknown reason'}")
            if phase.message:
                lines.append(f"  {phase.message}")
        try:
            lines += [f"  {line}" for line in pod_failures(self.list_pods(name))]
        except Exception as err:  # diagnostics must not hide the failure itself
            lines.append(f"  (pods could not be listed: {err})")
        return "\n".join(lines)


def __getattr__(name: str) -> Any:
    # the former name, kept importable for DAGs and plugins written against it
    if name == "TrainingJobHook":
        import warnings

        from airflow.exceptions import AirflowProviderDeprecationWarning

        warnings.warn(
            "airflow_mlops.hooks.kubernetes.TrainingJobHook is deprecated: it serves every job kind "
            "(training and drift) and is now KubernetesJobHook.",
            AirflowProviderDeprecationWarning,
            stacklevel=2,
        )
        return KubernetesJobHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
