"""Authentication and authorization of the provider's plugin endpoints.

FastAPI apps of plugins are mounted by Airflow's API server but not protected by it, so every
route resolves its caller the way Airflow's own API does (the JWT of the ``Authorization:
Bearer`` header, or the UI's ``_token`` cookie) and asks the configured auth manager.
The HTML pages send a browser without a valid session to Airflow's login page instead of
answering 401 (:func:`page_user`); the JSON routes answer 401 / 403.

What a caller sees is limited to the DAGs it may read (:class:`DagScope`): a file is authorized
against the DAG that owns it *after* its path is resolved, and registry, deployment and drift
entries are shown only when a readable DAG made them (:func:`deployers` for deployments).
Airflow's security modules are imported inside the functions: they cost ~1.5 s and every
Airflow process loads plugins, only the API server serves them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


#: a DAG id no DAG has: a caller the auth manager lets read its runs may read those of any DAG
_ANY_DAG = "__mlops_any_dag__"


@dataclass(frozen=True)
class DagScope:
    """
    What a caller may read: the runs and task results of ``dag_ids``.

    :param dag_ids: the DAGs the auth manager lets the caller read (``get_authorized_dag_ids``).
    :param every_dag: the caller may read every DAG, present or future (the auth manager grants
        it the runs of a DAG id no DAG has: FAB's global *DAGs* and *DAG Runs* permissions, any
        reading role of the simple auth manager). Only such a caller sees what no DAG is known to
        have made (a model version without an ``airflow.dag_id`` tag, a deployment no DAG rolled
        out, a dataset version ingested outside Airflow).
    """

    dag_ids: frozenset[str]
    every_dag: bool = False

    def reads(self, dag_id: Any) -> bool:
        return isinstance(dag_id, str) and dag_id in self.dag_ids

    def shows(self, made_by: Iterable[Any]) -> bool:
        """Whether something the DAGs ``made_by`` made (none known: empty) is shown to the caller."""
        return self.every_dag or any(self.reads(dag_id) for dag_id in made_by)


def dag_scope(user: Any) -> DagScope:
    """The :class:`DagScope` of ``user``; 403 when DAG runs are off limits (:func:`readable_dag_ids`)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    dag_ids = readable_dag_ids(user)
    every = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=_ANY_DAG), user=user
    )
    return DagScope(frozenset(dag_ids), bool(every))


def deployers(
    deployment: Mapping[str, Any], results: Iterable[Mapping[str, Any]], catalog: Mapping[str, Any]
) -> set[str]:
    """
    The DAGs known to have rolled ``deployment`` out (its visibility: :meth:`DagScope.shows`).

    * the DAG of the task try that made its last rollout (the record's ``last_rollout.made_by``);
    * the DAGs whose deploy task's result (XCom ``return_value``) names it, as
      ``sources.attach_rollouts`` pairs them (name, mode, namespace);
    * the DAGs with a deploy-family task (deploy, promote, rollback) whose ``deployment_name`` is
      its name (``sources.deploy_tasks``).

    :param deployment: from ``sources.deployments`` / ``sources.kubernetes_deployments`` (or a
        stub ``{"name", "mode"}`` for a deployment whose record is gone).
    :param results: XComs ``return_value`` of the readable DAGs (``sources.xcoms``).
    :param catalog: the readable DAGs (``sources.dag_catalog``).
    """
    from airflow_mlops.plugins import sources

    name, mode = deployment.get("name"), deployment.get("mode") or "local"
    found: set[str] = set()
    made_by = (deployment.get("rollout_outcome") or {}).get("made_by")
    if isinstance(made_by, Mapping) and isinstance(made_by.get("dag_id"), str):
        found.add(made_by["dag_id"])
    for xcom in results:
        value = xcom.get("value")
        if (
            isinstance(value, Mapping)
            and value.get("deployment") == name
            and (value.get("mode") or "local") == mode
            and value.get("namespace") == deployment.get("namespace")
        ):
            found.add(xcom["dag_id"])
    found |= {task["dag_id"] for task in sources.deploy_tasks(dict(catalog), str(name))}
    return found


def authorize_deployment(user: Any, deployment: str) -> DagScope:
    """
    Refuse (403) a caller who may read no DAG that rolled ``deployment`` out (:func:`deployers`),
    unless it reads every DAG; the caller's :class:`DagScope` otherwise.
    """
    from airflow_mlops import settings
    from airflow_mlops.plugins import sources

    scope = dag_scope(user)
    if scope.every_dag:
        return scope
    dag_ids = set(scope.dag_ids)
    record = next(
        (d for d in sources.deployments(settings.data_dir(), health=False) if d["name"] == deployment),
        {"name": deployment, "mode": "local", "namespace": None},
    )
    results, catalog = sources.xcoms(dag_ids, "return_value"), sources.dag_catalog(dag_ids)
    if not scope.shows(deployers(record, results, catalog)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"No read access to a DAG that deploys {deployment!r}.",
        )
    return scope
