"""What the operators that run their work as a Kubernetes job share (training, drift check).

Job names derive from dag/run/task/map index, not the try number
(:func:`airflow_mlops.kubernetes.jobs.job_name`): a retry reattaches to the earlier try's job
while it runs or once it has succeeded, and only replaces a job that failed — so a retried task
never trains twice or runs a second check beside the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.kubernetes import KubernetesJobHook
    from airflow_mlops.kubernetes.jobs import JobSpec


def map_index(ti: Any) -> int:
    """The task instance's map index; -1 when it is not mapped."""
    index = getattr(ti, "map_index", -1)
    return -1 if index is None else index


class KubernetesJobMixin:
    """
    Create (or reattach to) a job, wait for it in the worker or the triggerer, turn its end into
    a result or a clear error, delete it ``on_kill``.

    The operator provides ``kubernetes_conn_id``, ``namespace``, ``poll_interval``, ``deferrable``,
    ``container_resources``, ``service_account``, ``image_pull_policy`` and ``execution_timeout``
    attributes, :attr:`job_kind` (``MPIJob``, ``IndexedJob`` or ``Job``), :attr:`job_name_prefix`
    and :attr:`job_component` (what the job does), and ``_finish(context, hook, name, event)``: the
    result once the job has ended.
    """

    _job: tuple[KubernetesJobHook, str] | None = None
    #: first part of the job's name (:func:`~airflow_mlops.kubernetes.jobs.job_name`), one per
    #: kind of work (:data:`~airflow_mlops.kubernetes.jobs.NAME_PREFIXES`)
    job_name_prefix: str = "job"
    #: the ``app.kubernetes.io/component`` label of the job's objects
    job_component: str = "job"

    @property
    def job_kind(self) -> str:
        return self.kind

    def _job_hook(self) -> KubernetesJobHook:
        from airflow_mlops.hooks.kubernetes import KubernetesJobHook

        return KubernetesJobHook(self.kubernetes_conn_id, self.namespace)

    def _job_name(self, context: Context) -> str:
        from airflow_mlops.kubernetes.jobs import job_name

        ti = context["ti"]
        return job_name(ti.dag_id, ti.run_id, ti.task_id, map_index(ti), prefix=self.job_name_prefix)

    def _job_spec(
        self,
        context: Context,
        name: str,
        namespace: str,
        annotations: dict[str, str] | None = None,
        **fields: Any,
    ) -> JobSpec:
        """The job's spec: the task instance's labels and annotations, the operator's pod settings,
        ``activeDeadlineSeconds`` from the task's ``execution_timeout``, and ``fields`` (image, files...)."""
        from airflow_mlops.kubernetes import jobs

        ti = context["ti"]
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        task_annotations = jobs.job_annotations(
            ti.dag_id, ti.run_id, ti.task_id, map_index(ti), ti.try_number
        )
        fields.setdefault("component", self.job_component)
        return jobs.JobSpec(
            name=name,
            namespace=namespace,
            labels=jobs.job_labels(ti.try_number),
            annotations={**task_annotations, **(annotations or {})},
            resources=self.container_resources,
            service_account=self.service_account,
            active_deadline_seconds=int(timeout) if timeout else None,
            image_pull_policy=self.image_pull_policy,
            **fields,
        )

    def _start_job(self, hook: KubernetesJobHook, name: str, manifests: Callable[[], list[dict]]) -> bool:
        """Reattach to ``name`` or create it from ``manifests()``; True when it was created now."""
        if self._existing_job(hook, name) is not None:
            return False
        hook.create(manifests())
        return True

    def _existing_job(self, hook: KubernetesJobHook, name: str) -> dict[str, Any] | None:
        """The earlier try's job to reattach to, or None (after deleting it when it had failed)."""
        from airflow_mlops.kubernetes.jobs import TRY_LABEL, job_phase

        kind = self.job_kind
        job = hook.get_job(kind, name)
        if job is None:
            return None
        created_by = (job["metadata"].get("annotations") or {}).get(TRY_LABEL, "?")
        phase = job_phase(kind, job)
        if phase.state == "failed":
            self.log.warning(
                "%s %s of try %s failed (%s); deleting it and starting again.",
                kind,
                name,
                created_by,
                phase.reason,
            )
            hook.delete_job(kind, name)
            hook.wait_deleted(kind, name)
            return None
        self.log.info("Reattaching to %s %s (%s), created by try %s.", kind, name, phase.state, created_by)
        return job

    def _wait_for_job(self, hook: KubernetesJobHook, name: str) -> dict[str, Any]:
        """The job's end as the trigger's event shape; defers instead when ``deferrable``."""
        if self.deferrable:
            self._defer_to_job_trigger(hook.namespace, name)
        self._job = (hook, name)
        try:
            phase = hook.wait(self.job_kind, name, self.poll_interval)
        finally:
            self._job = None
        status = "success" if phase.state == "succeeded" else "failed"
        return {"status": status, "name": name, "reason": phase.reason, "message": phase.message}

    def _defer_to_job_trigger(self, namespace: str, name: str) -> None:
        from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        trigger = KubernetesJobTrigger(
            name=name,
            namespace=namespace,
            kind=self.job_kind,
            kubernetes_conn_id=self.kubernetes_conn_id,
            poll_interval=self.poll_interval,
            deadline=time.time() + timeout if timeout else None,
        )
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger: the operator's result (``_finish``), or the job's reason."""
        if not event or "status" not in event:
            raise RuntimeError(f"The Kubernetes job trigger sent no usable event: {event!r}")
        return self._finish(context, self._job_hook(), event.get("name") or self._job_name(context), event)

    def _raise_unless_succeeded(self, hook: KubernetesJobHook, name: str, event: dict[str, Any]) -> None:
        """Return on ``success``; otherwise raise with the job's and pods' reasons (a timed-out
        job is deleted first, so it stops using the cluster)."""
        from airflow_mlops.exceptions import MlopsError

        kind, status = self.job_kind, event["status"]
        if status == "success":
            return
        if status == "failed":
            raise MlopsError(hook.failure_details(kind, name))
        if status == "timeout":
            hook.delete_job(kind, name)
            raise MlopsError(
                f"{kind} {hook.namespace}/{name} timed out and was deleted: {event.get('message')}"
            )
        raise MlopsError(
            f"Lost track of {kind} {hook.namespace}/{name} ({event.get('reason')}): {event.get('message')}"
        )

    def _kill_job(self) -> None:
        if self._job is not None:
            hook, name = self._job
            hook.delete_job(self.job_kind, name)
