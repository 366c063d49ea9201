"""Wait for one of the provider's Kubernetes jobs (training MPIJob or indexed Job, drift check Job)
without holding a worker slot.

``TrainingJobTrigger`` is the former name of :class:`KubernetesJobTrigger` (deprecated): it still
imports, so a task deferred under the old name resumes after an upgrade.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlops.kubernetes.jobs import MPIJOB_GROUP, MPIJOB_PLURAL, MPIJOB_VERSION, job_phase


class KubernetesJobTrigger(BaseTrigger):
    """
    Poll a job's status and yield exactly one event when it is over.

    The event is ``{"status": "success" | "failed" | "timeout" | "error", "name", "namespace",
    "kind", "reason", "message"}``. The trigger only reads (it may run twice); deleting a timed-out
    job is the operator's job in ``execute_complete``.

    :param name: the job's name.
    :param namespace: its namespace.
    :param kind: ``MPIJob``, ``IndexedJob`` or ``Job`` (the last two are ``batch/v1`` Jobs).
    :param kubernetes_conn_id: the ``kubernetes`` connection.
    :param poll_interval: seconds between two status reads.
    :param deadline: Unix time after which a ``timeout`` event is sent (absolute, so a trigger
        restarted on another triggerer keeps the task's original deadline); None waits forever.
    :param max_errors: consecutive failed reads (API server unreachable...) before an ``error`` event.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        kind: str = "MPIJob",
        kubernetes_conn_id: str = "kubernetes_default",
        poll_interval: float = 30.0,
        deadline: float | None = None,
        max_errors: int = 3,
    ) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.kind = kind
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.max_errors = max_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "name": self.name,
                "namespace": self.namespace,
                "kind": self.kind,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_errors": self.max_errors,
            },
        )

    def _event(self, status: str, reason: str = "", message: str = "") -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "name": self.name,
                "namespace": self.namespace,
                "kind": self.kind,
                "reason": reason,
                "message": message,
            }
        )

    async def _read(self, hook) -> dict[str, Any]:
        from kubernetes_asyncio import client

        async with hook.get_conn() as api:
            if self.kind == "MPIJob":
                return await client.CustomObjectsApi(api).get_namespaced_custom_object(
                    MPIJOB_GROUP, MPIJOB_VERSION, self.namespace, MPIJOB_PLURAL, self.name
                )
            job = await client.BatchV1Api(api).read_namespaced_job_status(self.name, self.namespace)
            return api.sanitize_for_serialization(job)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        errors = 0
        while True:
            try:
                obj = await self._read(hook)
            except Exception as err:
                if getattr(err, "status", None) == 404:
                    yield self._event(
                        "error", "NotFound", f"{self.kind} {self.namespace}/{self.name} is gone."
                    )
                    return
                errors += 1
                self.log.warning(
                    "Reading %s %s failed (%d/%d): %s", self.kind, self.name, errors, self.max_errors, err
                )
                if errors >= self.max_errors:
                    yield self._event("error", type(err).__name__, str(err))
                    return
            else:
                errors = 0
                phase = job_phase(self.kind, obj)
                if phase.done:
                    status = "success" if phase.state == "succeeded" else "failed"
                    yield self._event(status, phase.reason, phase.message)
                    return
                self.log.info("%s %s is %s", self.kind, self.name, phase.state)
            if self.deadline is not None and time.time() >= self.deadline:
                yield self._event(
                    "timeout", "DeadlineExceeded", f"{self.kind} {self.name} did not finish in time."
                )
                return
            await asyncio.sleep(self.poll_interval)


def __getattr__(name: str) -> Any:
    # the former name: trigger rows of tasks deferred before the rename name this classpath
    if name == "TrainingJobTrigger":
        import warnings

        from airflow.exceptions import AirflowProviderDeprecationWarning

        warnings.warn(
            "airflow_mlops.triggers.kubernetes.TrainingJobTrigger is deprecated: it waits for every job "
            "kind (training and drift) and is now KubernetesJobTrigger.",
            AirflowProviderDeprecationWarning,
            stacklevel=2,
        )
        return KubernetesJobTrigger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
