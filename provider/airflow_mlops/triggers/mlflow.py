"""Wait, in the triggerer, for a new model version or an alias change in the MLflow registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class MlflowModelVersionTrigger(BaseTrigger):
    """
    Poll the MLflow registry's REST API and yield exactly one event.

    Without ``alias`` it waits for a ``READY`` version of ``model_name`` numbered above
    ``after_version`` (any version when None); with ``alias``, for the alias to exist and point
    at a version other than ``after_version``. Credentials are never serialised: the trigger
    resolves ``mlflow_conn_id`` itself, with the async connection API, when it starts. It only
    reads, so it may run twice.

    The event is ``{"status": "success", "model_version": {...}}`` (see
    :func:`airflow_mlops.hooks.mlflow.version_summary`), ``{"status": "timeout", "message"}``
    once ``timeout_at`` has passed, or ``{"status": "error", "message"}`` after ``max_errors``
    consecutive failed requests (server unreachable, wrong credentials...).

    :param model_name: registered model name.
    :param alias: wait for this alias to (re)point; None waits for a new version.
    :param after_version: the version already known (a number, as a string or int); None: any.
    :param mlflow_conn_id: the ``mlflow`` connection.
    :param poll_interval: seconds between two requests.
    :param timeout_at: ISO-8601 instant after which a ``timeout`` event is sent (a fixed instant, so
        a trigger restarted on another triggerer keeps the task's deadline); never when None.
    :param max_errors: consecutive failed requests before an ``error`` event.
    """

    def __init__(
        self,
        model_name: str,
        alias: str | None = None,
        after_version: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        poll_interval: float = 30.0,
        timeout_at: str | None = None,
        max_errors: int = 3,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.alias = alias
        self.after_version = after_version
        self.mlflow_conn_id = mlflow_conn_id
        self.poll_interval = poll_interval
        self.timeout_at = timeout_at
        self.max_errors = max_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "model_name": self.model_name,
                "alias": self.alias,
                "after_version": self.after_version,
                "mlflow_conn_id": self.mlflow_conn_id,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "max_errors": self.max_errors,
            },
        )

    def describe(self) -> str:
        """What is waited for, in words (for logs and event messages)."""
        if self.alias:
            after = f" other than {self.after_version}" if self.after_version else ""
            return f"alias {self.alias!r} of model {self.model_name!r} pointing at a version{after}"
        after = f" after version {self.after_version}" if self.after_version else ""
        return f"READY version of model {self.model_name!r}{after}"

    async def _endpoint(self) -> tuple[str, dict[str, str]]:
        from airflow_mlops.hooks.mlflow import MlflowHook, registry_endpoint

        conn = await MlflowHook.aget_connection(self.mlflow_conn_id)
        return registry_endpoint(conn, self.mlflow_conn_id)

    async def _find(self, http: Any, base_url: str) -> dict[str, Any] | None:
        from airflow_mlops.hooks.mlflow import new_version_from_response, new_version_request, response_json

        path, params = new_version_request(self.model_name, self.alias, self.after_version)
        response = await http.get(f"{base_url}{path}", params=params)
        return new_version_from_response(
            response.status_code, response_json(response.text), self.alias, self.after_version
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import httpx

        deadline = datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        try:
            base_url, headers = await self._endpoint()
        except Exception as error:  # unknown connection, no host: nothing to poll
            yield TriggerEvent(
                {"status": "error", "message": f"Connection {self.mlflow_conn_id!r} unusable: {error}"}
            )
            return
        errors = 0
        async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
            while True:
                try:
                    found = await self._find(http, base_url)
                except Exception as error:  # transient (server restarting) unless it keeps failing
                    errors += 1
                    self.log.warning(
                        "Reading the MLflow registry failed (%d/%d): %s", errors, self.max_errors, error
                    )
                    if errors >= self.max_errors:
                        message = f"Looking for a {self.describe()} at {base_url} failed: {error}"
                        yield TriggerEvent({"status": "error", "message": message})
                        return
                else:
                    errors = 0
                    if found is not None:
                        self.log.info("Found %s: version %s", self.describe(), found["version"])
                        yield TriggerEvent({"status": "success", "model_version": found})
                        return
                now = datetime.now(UTC)
                if deadline is not None and now >= deadline:
                    message = f"No {self.describe()} by {self.timeout_at}."
                    yield TriggerEvent({"status": "timeout", "message": message})
                    return
                wait = self.poll_interval
                if deadline is not None:
                    wait = max(0.0, min(wait, (deadline - now).total_seconds()))
                await asyncio.sleep(wait)
