"""Wait for a new model version, or an alias change, in the MLflow registry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

if TYPE_CHECKING:
    from airflow.sdk import Context


class MlflowModelVersionSensor(BaseSensorOperator):
    """
    Wait until the registry holds a model version you have not seen yet.

    Without ``alias``: a ``READY`` version of ``model_name`` numbered above ``after_version``
    (with no ``after_version``, any version). With ``alias``: the alias exists and points at a
    version other than ``after_version`` (a promotion, or a rollback); pass the version the
    alias pointed at when you last looked, e.g. ``"{{ ... xcom_pull(...) }}"``. The result
    (XCom ``return_value``) is the version: ``name``, ``version``, ``run_id``, ``source``,
    ``status``, ``aliases``, ``tags``, ``creation_timestamp``.

    Both modes read the registry's REST API (no ``mlflow`` import in the worker or triggerer).

    :param model_name: registered model name (templated).
    :param alias: wait for this alias to change (templated); None waits for a new version.
    :param after_version: the version already known (templated); ``""`` counts as None.
    :param mlflow_conn_id: the ``mlflow`` connection.
    :param deferrable: wait in the triggerer (``MlflowModelVersionTrigger``) instead of a worker slot.
        Default: ``[operators] default_deferrable`` (False).
    """

    template_fields: Sequence[str] = ("model_name", "alias", "after_version")
    ui_color = "#e6f5e9"

    def __init__(
        self,
        *,
        model_name: str,
        alias: str | None = None,
        after_version: str | int | None = None,
        mlflow_conn_id: str = "mlflow_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.alias = alias
        self.after_version = after_version
        self.mlflow_conn_id = mlflow_conn_id
        self.deferrable = deferrable

    def _after(self) -> str | None:
        """``after_version`` as a version number string; a template that rendered empty means None."""
        if self.after_version in (None, "", "None"):
            return None
        after = str(self.after_version).strip()
        if not after.isdigit():
            raise ValueError(
                f"{self.task_id}: after_version must be a version number, got {self.after_version!r}."
            )
        return after

    # -- poke mode -------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        from airflow_mlops.hooks.mlflow import MlflowHook

        found = MlflowHook(self.mlflow_conn_id).find_new_version(
            self.model_name, self.alias or None, self._after()
        )
        if found is None:
            self.log.info("No %s yet", self._trigger().describe())
            return PokeReturnValue(is_done=False)
        self.log.info("%s: version %s", self._trigger().describe(), found["version"])
        return PokeReturnValue(is_done=True, xcom_value=found)

    # -- deferrable mode -------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        from airflow_mlops.sensors._events import backstop_timeout

        timeout_at = datetime.now(UTC) + timedelta(seconds=self.timeout)
        self.defer(
            trigger=self._trigger(timeout_at.isoformat()),
            method_name="execute_complete",
            timeout=backstop_timeout(self),
        )

    def _trigger(self, timeout_at: str | None = None):
        from airflow_mlops.triggers.mlflow import MlflowModelVersionTrigger

        return MlflowModelVersionTrigger(
            model_name=self.model_name,
            alias=self.alias or None,
            after_version=self._after(),
            mlflow_conn_id=self.mlflow_conn_id,
            poll_interval=self.poke_interval,
            timeout_at=timeout_at,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_mlops.sensors._events import raise_for_trigger_event

        if (event or {}).get("status") == "success":
            found = event["model_version"]
            self.log.info("Model %s version %s found", found["name"], found["version"])
            return found
        raise_for_trigger_event(
            self, event, "Check that the registering DAG ran, or raise this sensor's timeout."
        )
