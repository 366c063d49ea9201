"""Serve the stored Great Expectations Data Docs read-only, behind Airflow's authentication.

Mounted by the API server at ``/mlops`` (with the MLOps view, see :mod:`.mlops_view`):
``GET /mlops/data-docs/<dag_id>/<run_id>/<task_id>/...`` returns a file under
``[mlops] data_dir``/``data_docs``. FastAPI plugin apps are not protected by Airflow on their
own, so every request resolves the caller the way Airflow's own API does (the JWT of the
``Authorization: Bearer`` header, or the UI's ``_token`` cookie) and needs read access to the
task instances of the DAG (first path segment).

Only light imports at module level: plugins are loaded by every Airflow process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.responses import FileResponse

from airflow_mlops.links.great_expectations import DATA_DOCS_ROUTE
from airflow_mlops.plugins.auth import authorize_dag_tasks as _authorize
from airflow_mlops.plugins.auth import current_user as _user


def data_docs_root() -> Path:
    from airflow_mlops import settings

    return settings.data_dir() / "data_docs"


def resolve(root: Path, path: str) -> Path:
    """The file ``path`` names under ``root``; 404 for anything else (``..``, links out, folders)."""
    root = root.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No Data Docs file {path!r}.")
    return target


router = APIRouter()


@router.get(DATA_DOCS_ROUTE + "/{path:path}", name="data_docs")
def data_docs(path: str, user: Annotated[Any, Depends(_user)]) -> FileResponse:
    """A file of a stored Data Docs site, e.g. ``<dag_id>/<run_id>/<task_id>/site/index.html``."""
    _authorize(user, path.split("/", 1)[0])
    return FileResponse(resolve(data_docs_root(), path))


def create_app() -> FastAPI:
    """The provider's app (Data Docs and the MLOps view), as mounted at ``/mlops``."""
    from airflow_mlops.plugins.mlops_view import create_app as create_mlops_app

    return create_mlops_app()


def __getattr__(name: str) -> Any:
    # The plugin used to live here as ``MlopsDataDocsPlugin`` (entry point and plugins-folder
    # imports still name it): it is now the one MLOps plugin, which also serves these files.
    if name == "MlopsDataDocsPlugin":
        from airflow_mlops.plugins.mlops_view import MlopsPlugin

        return MlopsPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
