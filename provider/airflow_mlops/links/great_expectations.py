"""Extra link from a validation task to the Great Expectations Data Docs page it rendered.

The page is a file under ``[mlops] data_dir``/``data_docs``; a ``file://`` URL does not open
from the Airflow UI, so the provider's plugin (``airflow_mlops.plugins.data_docs``) serves
that folder behind Airflow's authentication and the link points there.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

from airflow_mlops.links.mlflow import _XComUrlLink

#: where the plugin's app is mounted in the API server, and its Data Docs route
URL_PREFIX = "/mlops"
DATA_DOCS_ROUTE = "/data-docs"


def base_url() -> str:
    """The API server's public URL (``[api] base_url``), without a trailing slash."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


def data_docs_url(relative_path: str | PurePosixPath) -> str:
    """
    URL of a Data Docs file served by the plugin.

    :param relative_path: path of the file relative to the ``data_docs`` folder,
        ``<dag_id>/<run_id>/<task_id>/site/...``.
    """
    path = quote(PurePosixPath(relative_path).as_posix(), safe="/")
    return f"{base_url()}{URL_PREFIX}{DATA_DOCS_ROUTE}/{path}"


class DataDocsLink(_XComUrlLink):
    """Opens the Great Expectations Data Docs page of the validation a task ran."""

    name = "Data Docs"
