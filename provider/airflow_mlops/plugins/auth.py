"""Authentication and authorization of the provider's plugin endpoints.

FastAPI apps of plugins are mounted by Airflow's API server but not protected by it, so every
route resolves its caller the way Airflow's own API does (the JWT of the ``Authorization:
Bearer`` header, or the UI's ``_token`` cookie) and asks the configured auth manager.
The HTML pages send a browser without a valid session to Airflow's login page instead of
answering 401 (:func:`page_user`); the JSON routes answer 401 / 403.
Airflow's security modules are imported inside the functions: they cost ~1.5 s and every
Airflow process loads plugins, only the API server serves them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False)


class LoginRequired(Exception):
    """A browser asked for a page without a valid session: send it to Airflow's login page."""

    def __init__(self, login_url: str) -> None:
        super().__init__(login_url)
        self.login_url = login_url


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The authenticated caller (401 without credentials, 403 with an invalid token)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def login_url(request: Request) -> str:
    """
    Airflow's login page (the auth manager's ``get_url_login``) with ``next`` back to this page.

    ``next`` is the page's URL under ``[api] base_url`` when it is set (the address users
    reach Airflow at), else the URL of the request; a login path without Airflow's base path
    gets it.
    """
    from urllib.parse import urlsplit

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.configuration import conf

    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    if base.scheme and base.netloc:
        origin = f"{base.scheme}://{base.netloc}"
    else:
        origin = f"{request.url.scheme}://{request.url.netloc}"
    # the path as the browser sent it (still quoted: a run id may hold "/", ":" or "+")
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    next_url = origin + path + (f"?{request.url.query}" if request.url.query else "")
    login = get_auth_manager().get_url_login(next_url=next_url)
    prefix = base.path.rstrip("/")
    if login.startswith("/") and prefix and not login.startswith(prefix + "/"):
        login = prefix + login
    return login


async def page_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """
    The caller of an HTML page: as :func:`current_user`, but a browser without a valid session
    (no ``_token`` cookie, or an expired or revoked one; no ``Authorization`` header; ``Accept:
    text/html``) is redirected to Airflow's login page, which brings it back here afterwards.
    Scripts (a bearer token, or no ``text/html`` in ``Accept``) still get 401 / 403.
    """
    try:
        return await current_user(request, credentials)
    except HTTPException as err:
        if credentials is None and _wants_html(request) and err.status_code in (401, 403):
            raise LoginRequired(login_url(request)) from err
        raise


async def redirect_to_login(request: Request, exc: Exception) -> RedirectResponse:
    """The app's handler of :class:`LoginRequired`: a redirect that is never cached."""
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(
        exc.login_url, status_code=status.HTTP_302_FOUND, headers={"Cache-Control": "no-store"}
    )


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
