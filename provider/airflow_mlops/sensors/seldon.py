"""Wait for a Seldon deployment to serve; fail as soon as it cannot."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseSensorOperator

from airflow_mlops.sensors._events import backstop_timeout, raise_for_trigger_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class SeldonDeploymentSensor(BaseSensorOperator):
    """
    Succeed when a deployment is ``Available``; fail when it is ``Failed``.

    Local mode: ``Available`` when the router and the main model server run and answer
    ``/health/ping`` through the stable address; ``Failed`` when one of their processes is gone
    and no supervisor restarts it (a killed or crashed server is reported at the next poke, with
    its pid), or when the deployment does not exist. A process that died under a live supervisor
    is being restarted: ``Creating`` until it answers again. Every poke logs how many processes
    run and how often they were restarted; the task's result (XCom) is the deployment's health:
    ``{"deployment", "state", "version", "restarts", "supervised", "processes": [{"process",
    "pid", "port", "alive", "restarts", ...}]}``. Kubernetes mode: the ``SeldonDeployment``'s
    ``status.state``.

    :param deployment_name: the deployment (templated).
    :param seldon_conn_id: the ``seldon`` connection (mode, namespace).
    :param deferrable: wait in the triggerer (``SeldonDeploymentTrigger``) instead of a worker slot.
        Default: ``[operators] default_deferrable`` (False).
    """

    template_fields: Sequence[str] = ("deployment_name",)
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        deployment_name: str,
        seldon_conn_id: str = "seldon_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment_name = deployment_name
        self.seldon_conn_id = seldon_conn_id
        self.deferrable = deferrable

    def _status(self) -> tuple[str, str]:
        from airflow_mlops.hooks.seldon import SeldonHook

        hook = SeldonHook(self.seldon_conn_id)
        if hook.mode == "kubernetes":
            from airflow_mlops.kubernetes.seldon_rollout import KubernetesRollout

            return KubernetesRollout(hook).status(self.deployment_name)
        return hook.local_status(self.deployment_name)

    def poke(self, context: Context) -> bool:
        from airflow.sdk.exceptions import AirflowException

        state, message = self._status()
        self.log.info("%s: %s (%s)", self.deployment_name, state, message)
        if state == "Failed":
            raise AirflowException(f"Deployment {self.deployment_name} failed: {message}")
        return state == "Available"

    def health(self, state: str = "Available") -> dict[str, Any] | None:
        """Local mode: the deployment's processes, whether they run, and their restarts."""
        from airflow_mlops.hooks.seldon import SeldonHook

        hook = SeldonHook(self.seldon_conn_id)
        if hook.mode == "kubernetes":
            return None
        current = hook.state(self.deployment_name)
        if current is None:
            return None
        health = {
            "deployment": self.deployment_name,
            "state": state,
            "version": current.version,
            "restarts": current.restarts,
            "supervised": current.supervised,
            "processes": current.health(),
        }
        self.log.info(
            "%s: version %s, %d restarts; processes: %s",
            self.deployment_name,
            current.version,
            current.restarts,
            ", ".join(
                f"{h['process']} pid {h['pid']} {'alive' if h['alive'] else 'DEAD'} "
                f"({h['restarts']} restarts)"
                for h in health["processes"]
            ),
        )
        return health

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self.health()
        if self.poke(context):
            return self.health()
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

        hook = SeldonHook(self.seldon_conn_id)
        extras = hook.connection.extra_dejson if hook.connection else {}
        self.defer(
            trigger=SeldonDeploymentTrigger(
                deployment_name=self.deployment_name,
                mode=hook.mode,
                namespace=extras.get("namespace"),
                kubernetes_conn_id=extras.get("kubernetes_conn_id"),
                poll_interval=self.poke_interval,
                timeout_at=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=backstop_timeout(self),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        if (event or {}).get("status") == "success":
            self.log.info("%s: %s", self.deployment_name, event.get("message"))
            return self.health()
        raise_for_trigger_event(self, event, "Check the deployment's server logs, or raise timeout.")
