"""Deploy a registered MLflow model with Seldon Core."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.exceptions import DeploymentError
from airflow_mlops.links.seldon import SeldonEndpointLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.hooks.seldon import SeldonHook


def input_example(model_dir: Path) -> pd.DataFrame:
    """The input example MLflow saved with the model (used for the smoke prediction)."""
    import pandas as pd

    path = model_dir / "input_example.json"
    if not path.exists():
        raise DeploymentError(f"Model at {model_dir} has no input example; log the model with one.")
    data = json.loads(path.read_text())
    if "dataframe_split" in data:
        data = data["dataframe_split"]
    return pd.DataFrame(data["data"], columns=data["columns"])


class SeldonDeployOperator(MlopsBaseOperator):
    """
    Serve a registered model version with Seldon Core; replace the old one only once healthy.

    Local mode starts the seldon-core microservice (serving runtime) on 127.0.0.1 for the
    version the alias points at, waits until it answers, checks one real prediction, then
    switches the deployment over and stops the previous server. A failed start leaves the
    previous deployment serving and fails the task with the server's log. Re-running when
    the same version is already serving and healthy changes nothing.

    :param deployment_name: name of the deployment (templated).
    :param model_name: registered model name (templated).
    :param alias: alias whose version is deployed (templated); ignored when ``version`` is set.
    :param version: explicit model version (templated).
    :param ready_timeout: seconds the new server has to become ready.
    :param mlflow_conn_id: the ``mlflow`` connection.
    :param seldon_conn_id: the ``seldon`` connection (mode, bind host).
    """

    template_fields: Sequence[str] = ("deployment_name", "model_name", "alias", "version")
    operator_extra_links = (SeldonEndpointLink(),)
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        deployment_name: str,
        model_name: str,
        alias: str = "champion",
        version: str | None = None,
        ready_timeout: float = 180,
        mlflow_conn_id: str = "mlflow_default",
        seldon_conn_id: str = "seldon_default",
        runtimes_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment_name = deployment_name
        self.model_name = model_name
        self.alias = alias
        self.version = version
        self.ready_timeout = ready_timeout
        self.mlflow_conn_id = mlflow_conn_id
        self.seldon_conn_id = seldon_conn_id
        self.runtimes_dir = runtimes_dir
        self._pending: dict[str, Any] | None = None
        self._seldon: SeldonHook | None = None

    def _resolve_version(self, mlflow_hook) -> str:
        if self.version:
            return str(self.version)
        version = mlflow_hook.alias_version(self.model_name, self.alias)
        if version is None:
            raise DeploymentError(
                f"Model '{self.model_name}' has no '{self.alias}' alias; register a version first "
                "or pass version=."
            )
        return version

    def _download(self, mlflow_hook, version: str) -> Path:
        from airflow_mlops.hooks.seldon import SeldonHook

        target = SeldonHook.deployment_dir(self.deployment_name) / "models" / f"v{version}"
        if (target / "MLmodel").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        mlflow_hook.mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.model_name}/{version}", dst_path=str(tmp)
        )
        tmp.rename(target)
        return target

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.hooks.seldon import SeldonHook

        self._seldon = seldon = SeldonHook(self.seldon_conn_id, self.runtimes_dir)
        if seldon.mode != "local":
            raise NotImplementedError(
                f"Seldon mode '{seldon.mode}' is not supported yet; "
                f"set mode=local on connection '{self.seldon_conn_id}'."
            )
        mlflow_hook = MlflowHook(self.mlflow_conn_id)
        version = self._resolve_version(mlflow_hook)
        current = seldon.current(self.deployment_name)
        if current and current.get("version") == version and seldon.is_healthy(current):
            self.log.info(
                "Version %s already serves %s at %s", version, self.deployment_name, current["endpoint"]
            )
            return self._result(context, current, changed=False)

        model_dir = self._download(mlflow_hook, version)
        self._pending = new = seldon.start_local(
            self.deployment_name, str(model_dir), version, self.ready_timeout
        )
        try:
            example = input_example(model_dir)
            probabilities = seldon.predict(new["endpoint"], example)
            if len(probabilities) != len(example):
                raise DeploymentError(
                    f"Smoke prediction returned {len(probabilities)} values for {len(example)} rows."
                )
            self.log.info(
                "Smoke prediction on %d example rows: %s", len(example), probabilities.round(4).tolist()
            )
        except Exception as err:
            seldon.stop_state(new)
            raise DeploymentError(
                f"Version {version} started but failed its smoke prediction ({err}); "
                "the previous deployment keeps serving."
            ) from err
        previous = seldon.switch(self.deployment_name, new)
        self._pending = None
        self.log.info(
            "%s now serves version %s at %s (replaced %s)",
            self.deployment_name,
            version,
            new["endpoint"],
            (previous or {}).get("version"),
        )
        return self._result(context, new, changed=True)

    def _result(self, context: Context, state: dict[str, Any], changed: bool) -> dict[str, Any]:
        from airflow_mlops.hooks.seldon import PREDICT_PATH

        SeldonEndpointLink.persist(context, f"{state['endpoint']}/api/v1.0/metadata")
        return {
            "deployment": self.deployment_name,
            "model_name": self.model_name,
            "version": state["version"],
            "endpoint": state["endpoint"],
            "predict_url": f"{state['endpoint']}{PREDICT_PATH}",
            "pid": state["pid"],
            "changed": changed,
        }

    def on_kill(self) -> None:
        # a server started by this try but never switched to must not be left running
        if self._seldon is not None and self._pending is not None:
            self._seldon.stop_state(self._pending)
