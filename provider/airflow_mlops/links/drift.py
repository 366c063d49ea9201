"""Extra link from a drift check to the page of its report, served by the provider's plugin.

The report (``report.json`` and ``pvalues.png`` under ``[mlops] data_dir``/drift/<dag>/<run>)
is a local file: the plugin (``airflow_mlops.plugins.drift_report``) renders it behind
Airflow's authentication, and the link points there.
"""

from __future__ import annotations

from urllib.parse import quote

from airflow_mlops.links.great_expectations import URL_PREFIX, base_url
from airflow_mlops.links.mlflow import _XComUrlLink

#: the plugin's route of the drift report page, under :data:`URL_PREFIX`
DRIFT_REPORT_ROUTE = "/drift-report"


def drift_report_url(dag_id: str, run_id: str, task_id: str) -> str:
    """URL of the drift report page of one task instance (``[api] base_url`` + plugin route)."""
    parts = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    return f"{base_url()}{URL_PREFIX}{DRIFT_REPORT_ROUTE}/{parts}"


class DriftReportLink(_XComUrlLink):
    """Opens the drift report (statistics, p-values, plot) of the check a task ran."""

    name = "Drift report"
