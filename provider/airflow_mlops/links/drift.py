"""Extra link from a drift check to the page of its report, served by the provider's plugin.

The report (``report.json`` and ``pvalues.png`` in the task instance's folder under
``[mlops] data_dir``/drift, :mod:`airflow_mlops.task_outputs`) is a local file: the plugin
(``airflow_mlops.plugins.drift_report``) renders it behind Airflow's authentication, and the link
points there — at the page of the one task instance that made it (an instance of a mapped task
has its map index in the path).
"""

from __future__ import annotations

from urllib.parse import quote

from airflow_mlops.links.great_expectations import URL_PREFIX, base_url
from airflow_mlops.links.mlflow import _XComUrlLink

#: the plugin's route of the drift report page, under :data:`URL_PREFIX`
DRIFT_REPORT_ROUTE = "/drift-report"


def drift_report_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Path of one task instance's drift report page (same origin as the API server):
    ``/mlops/drift-report/<dag_id>/<run_id>/<task_id>``, then ``/<map_index>`` for a mapped instance."""
    parts = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    index = f"/{int(map_index)}" if map_index is not None and map_index >= 0 else ""
    return f"{URL_PREFIX}{DRIFT_REPORT_ROUTE}/{parts}{index}"


def drift_report_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """URL of the drift report page of one task instance (``[api] base_url`` + plugin route)."""
    return base_url() + drift_report_path(dag_id, run_id, task_id, map_index)


class DriftReportLink(_XComUrlLink):
    """Opens the drift report (statistics, p-values, plot) of the check a task instance ran."""

    name = "Drift report"
