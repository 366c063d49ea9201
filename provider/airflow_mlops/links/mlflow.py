"""Extra links from tasks to what they recorded in MLflow.

The operator pushes the URL to XCom under the link's ``xcom_key`` while it runs (the API
server cannot reach MLflow to compute it), and the link reads it back.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class _XComUrlLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom under :attr:`xcom_key`."""

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""

    @classmethod
    def persist(cls, context: Any, url: str) -> None:
        context["ti"].xcom_push(key=cls().xcom_key, value=url)


class MlflowRunLink(_XComUrlLink):
    """Opens the MLflow run a training task recorded."""

    name = "MLflow run"


class MlflowModelVersionLink(_XComUrlLink):
    """Opens the model version a registration task created."""

    name = "MLflow model version"


class MlflowParentRunLink(_XComUrlLink):
    """Opens the parent run of the task's DAG run: the run tree of the whole pipeline run."""

    name = "MLflow DAG run"
