"""Authentication and authorization of the provider's plugin endpoints.

FastAPI apps of plugins are mounted by Airflow's API server but not protected by it, so every
route resolves its caller the way Airflow's own API does (the JWT of the ``Authorization:
Bearer`` header, or the UI's ``_token`` cookie) and asks the configured auth manager.
Airflow's security modules are imported inside the functions: they cost ~1.5 s and every
Airflow process loads plugins, only the API server serves them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False)


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The authenticated caller (401 without credentials, 403 with an invalid token)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


def authorize_dag_tasks(user: Any, dag_id: str) -> None:
    """Refuse (403) a caller without read access to the task instances of ``dag_id``."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=dag_id), user=user
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"No read access to the tasks of DAG {dag_id!r}."
        )


def readable_dag_ids(user: Any) -> set[str]:
    """
    The DAG ids whose runs and task results ``user`` may read; 403 when DAGs are off limits.

    The MLOps view shows registry, deployment and dataset state next to DAG runs: a caller who
    may not read DAGs at all gets nothing, and DAG-run details are limited to these ids.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    manager = get_auth_manager()
    if not manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="The MLOps view needs read access to DAG runs.")
    return set(manager.get_authorized_dag_ids(user=user, method="GET"))
