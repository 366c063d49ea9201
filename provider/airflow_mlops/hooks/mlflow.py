"""MLflow 3: tracking and model registry through an ``mlflow`` connection.

``import mlflow`` costs ~8 s: the client is built on first use only.
"""

from __future__ import annotations

import os
import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from airflow_mlops._imports import require


class MlflowHook(BaseHook):
    """
    Talk to an MLflow tracking server and model registry.

    Connection: ``host`` is the tracking URI (``http://127.0.0.1:5000``; a bare host gets
    ``schema``/``port``), ``login``/``password`` are basic-auth credentials or a token, extras
    ``experiment`` (default experiment) and ``registry_uri``.

    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def connection(self):
        return self.get_connection(self.mlflow_conn_id)

    @property
    def tracking_uri(self) -> str:
        conn = self.connection
        host = conn.host or ""
        if "://" in host:
            return host.rstrip("/")
        if not host:
            raise ValueError(f"Connection '{self.mlflow_conn_id}' has no host: set it to the tracking URI.")
        port = f":{conn.port}" if conn.port else ""
        return f"{conn.schema or 'http'}://{host}{port}"

    @property
    def default_experiment(self) -> str | None:
        return self.connection.extra_dejson.get("experiment")

    def subprocess_env(self) -> dict[str, str]:
        """Variables that point an MLflow client in another process at this server (credentials included)."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if registry := self.connection.extra_dejson.get("registry_uri"):
            env["MLFLOW_REGISTRY_URI"] = registry
        if self.connection.login:
            env["MLFLOW_TRACKING_USERNAME"] = self.connection.login
            env["MLFLOW_TRACKING_PASSWORD"] = self.connection.password or ""
        elif self.connection.password:
            env["MLFLOW_TRACKING_TOKEN"] = self.connection.password
        return env

    @cached_property
    def mlflow(self):
        """The ``mlflow`` module, pointed at this connection's server."""
        mlflow = require("mlflow", "mlflow")
        # mlflow reads credentials from the environment only; this is the task's own process.
        for key, value in self.subprocess_env().items():
            os.environ[key] = value
        mlflow.set_tracking_uri(self.tracking_uri)
        if registry := self.connection.extra_dejson.get("registry_uri"):
            mlflow.set_registry_uri(registry)
        return mlflow

    @cached_property
    def client(self):
        return self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def run_url(self, run_id: str, experiment_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.tracking_uri}/#/models/{name}/versions/{version}"

    def find_version_for_run(self, name: str, run_id: str):
        """The registered version of ``name`` created from ``run_id``, or None (makes retries idempotent)."""
        versions = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return min(versions, key=lambda v: int(v.version)) if versions else None

    def wait_until_ready(self, name: str, version: str, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            mv = self.client.get_model_version(name, version)
            if mv.status == "READY":
                return mv
            if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RuntimeError(f"Model {name} version {version} is {mv.status}: {mv.status_message}")
            time.sleep(1)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias).version
        except MlflowException:
            return None

    def test_connection(self) -> tuple[bool, str]:
        import requests

        try:
            response = requests.get(f"{self.tracking_uri}/health", timeout=5)
            response.raise_for_status()
            return True, f"MLflow server at {self.tracking_uri} is healthy."
        except Exception as err:
            return False, f"MLflow server at {self.tracking_uri} is not reachable: {err}"
