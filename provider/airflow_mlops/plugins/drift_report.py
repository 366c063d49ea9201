"""The drift report of one task instance, rendered as a page behind Airflow's authentication.

Mounted by the API server at ``/mlops`` (with the MLOps view, see :mod:`.mlops_view`):

* ``GET /mlops/drift-report/<dag_id>/<run_id>/<task_id>`` — an HTML page from the
  ``report.json`` ``DriftDetectOperator`` stored (written by the drift runtime): drift score,
  threshold, per-feature test / statistic / p-value, drifted features and the checked window;
  ``GET /mlops/drift-report/<dag_id>/<run_id>/<task_id>/<map_index>`` — the same for one instance
  of a mapped task;
* ``.../pvalues.png`` below either — its p-value plot;
* ``GET /mlops/drift-window/<deployment>/<window_id>`` (and ``.../pvalues.png``) — the same page
  for a window of served traffic tested by a ``DriftEventTrigger``
  (``drift/watchers/<deployment>/<window_id>/`` of ``[mlops] data_dir``, where the triggerer
  writes them), for callers who may read a DAG that rolled the deployment out
  (``auth.deployers``; a caller who may read every DAG reads every window).

The report is where the task instance's result (XCom ``return_value`` of that map index, key
``report``) says — reports of earlier versions, in ``drift/<dag_id>/<run>/``, are found that way —
else in the instance's own folder (``[mlops] data_dir``/drift/<dag_id>/<run>/<task_id>[/map_index=<n>],
:mod:`airflow_mlops.task_outputs`), as long as it is inside the ``drift`` folder: nothing else is
served. With an object-store ``data_dir`` the reports are read from the store. Every request
needs read access to the task instances of the DAG (401 without credentials, 403 otherwise), as
the Data Docs route, and of the DAG whose folder holds the report once its path is resolved (a
result may point into another DAG's folder; into a watcher's, it needs what that window's page
needs); a browser without a session asking for a page is sent to Airflow's login page instead.
Each page links back to the MLOps page ("← MLOps"): it opens in the same frame as the MLOps page,
inside Airflow's UI.

Only light imports at module level: plugins are loaded by every Airflow process.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import HTMLResponse, Response

from airflow_mlops.drift_config import PLOT_FILE, REPORT_FILE
from airflow_mlops.links.drift import DRIFT_REPORT_ROUTE
from airflow_mlops.links.great_expectations import URL_PREFIX
from airflow_mlops.plugins import files
from airflow_mlops.plugins.auth import authorize_dag_tasks as _authorize
from airflow_mlops.plugins.auth import authorize_deployment
from airflow_mlops.plugins.auth import current_user as _user
from airflow_mlops.plugins.auth import page_user as _page_user

router = APIRouter()
#: the page of a window of served traffic a ``DriftEventTrigger`` tested
DRIFT_WINDOW_ROUTE = "/drift-window"
#: the watchers' folder under ``drift/`` (``drift/watchers/<deployment>/<window_id>/``): not a DAG's
WATCHERS = "watchers"
User = Annotated[Any, Depends(_user)]
#: the caller of a page: a browser without a session is sent to Airflow's login page
PageUser = Annotated[Any, Depends(_page_user)]


def mlops_page_path() -> str:
    """Path of the MLOps page (under the path of ``[api] base_url``): the reports' back link."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/") + URL_PREFIX + "/"


def drift_root() -> Any:
    """Where drift checks leave their reports: ``[mlops] data_dir``/``drift``, a folder or a
    prefix of the object store."""
    from airflow_mlops import storage

    return storage.data_root() / "drift"


def watchers_root() -> Any:
    """Where the windows the drift watchers (in the triggerer) tested are read: ``drift/watchers``
    of ``[mlops] data_dir``, a folder of the triggerer's host or, with an object store, its prefix
    there, to which the watchers publish their records."""
    return drift_root() / WATCHERS


def resolve(root: Any, path: str | Path, what: str) -> Any:
    """The file ``path`` names under ``root``; 404 for anything else (``..``, links out, folders)."""
    return files.stored_file(root, path, what)


def task_result(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
    """What the drift task instance returned (``report``, ``window``...); ``{}`` when unknown."""
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        from airflow_mlops.plugins.sources import _deserialize

        with create_session() as session:
            row = session.execute(
                select(XComModel).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == "return_value",
                    XComModel.map_index == map_index,
                )
            ).scalar_one_or_none()
            value = _deserialize(row) if row is not None else None
    except Exception:  # the report on disk is still worth showing
        return {}
    return value if isinstance(value, dict) else {}


def report_dir(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> tuple[Any, dict[str, Any]]:
    """The folder of a task instance's report (inside :func:`drift_root`) and its result; 404 if none."""
    from airflow_mlops.task_outputs import instance_folder

    root = drift_root()
    result = task_result(dag_id, run_id, task_id, map_index)
    instance = f"task {task_id!r}" + (f" (map index {map_index})" if map_index >= 0 else "")
    missing = (
        f"No drift report for {instance} of DAG run {run_id!r} of {dag_id!r}: the check has "
        f"not run yet, failed before writing it, or wrote it outside {root}."
    )
    candidates = []
    if isinstance(result.get("report"), str):  # a location: a file path, or s3://... in a store
        candidates.append(result["report"])
    try:
        candidates.append(str(instance_folder(dag_id, run_id, task_id, map_index) / REPORT_FILE))
    except ValueError:  # ids that name no folder: only the task's own result can point at a report
        pass
    for candidate in candidates:
        try:
            return resolve(root, candidate, missing).parent, result
        except HTTPException:
            continue
    raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None:
        return "—"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return html.escape(str(value))


def render_report(
    report: dict[str, Any],
    *,
    source: list[tuple[str, str]],
    window: Any,
    plot_url: str | None,
    back_url: str | None = None,
) -> str:
    """
    The page of one report (every value from the file HTML-escaped).

    :param source: what made the report, as ``(label, value)`` pairs: DAG, run and task of a
        check, or the deployment and window a watcher tested.
    :param back_url: the MLOps page, linked as "← MLOps" (the report opens in the same frame,
        inside Airflow's UI).
    """
    e = html.escape
    drift = bool(report.get("is_drift"))
    rows = [(name, r) for name, r in (report.get("features") or {}).items()]
    if report.get("prediction"):
        rows.append((f"prediction: {report.get('prediction_column') or 'prediction'}", report["prediction"]))
    table = "".join(
        f'<tr class="{"drift" if r.get("drift") else "ok"}"><td>{e(str(name))}</td>'
        f"<td>{e(str(r.get('test', '')))}</td><td>{_num(r.get('distance'), '.4f')}</td>"
        f"<td>{_num(r.get('p_val'), '.3e')}</td><td>{'drift' if r.get('drift') else 'no drift'}</td></tr>"
        for name, r in rows
    )
    if isinstance(window, dict) and (window.get("start") or window.get("end")):
        window_text = f"{window.get('start') or '?'} → {window.get('end') or '?'}"
    else:
        window_text = "—"
    drifted = ", ".join(str(f) for f in report.get("drifted_features") or []) or "none"
    effective = report.get("effective_threshold")
    plot = (
        f'<h2>p-values</h2><img id="pvalues" src="{e(plot_url)}" alt="p-value of each drift test">'
        if plot_url
        else '<p class="muted">No p-value plot was stored.</p>'
    )
    facts = [
        ("drift-score", "Drift score (share of drifted features)", _num(report.get("drift_score"), ".4g")),
        ("threshold", "Significance level", _num(report.get("threshold"), ".3g")),
        ("correction", "Correction", e(str(report.get("correction") or "—"))),
        ("effective-threshold", "Per-feature threshold after correction", _num(effective, ".3g")),
        ("drifted-features", "Drifted features", e(drifted)),
        ("window", "Window", e(window_text)),
        (
            "rows",
            "Rows (reference / current)",
            f"{_num(report.get('n_reference'), 'd')} / {_num(report.get('n_current'), 'd')}",
        ),
        ("detector", "Detector", e(str(report.get("detector") or "—"))),
    ]
    summary = "".join(
        f'<tr><th>{label}</th><td id="{key}">{value}</td></tr>\n' for key, label, value in facts
    )
    made_by = ", ".join(f"{e(label)} <code>{e(str(value))}</code>" for label, value in source)
    back = f'<nav><a id="back" href="{e(back_url)}" target="_self">← MLOps</a></nav>\n' if back_url else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Drift report — {" / ".join(e(str(value)) for _, value in source)}</title>
<style>
  body {{ font: 14px system-ui, sans-serif; margin: 16px 24px; color: #1b1f24; }}
  table {{ border-collapse: collapse; margin: 8px 0 16px; }}
  td, th {{ border-bottom: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }}
  tr.drift td {{ color: #b42318; font-weight: 600; }} .muted {{ color: #57606a; }}
  .verdict.drift {{ color: #b42318; }} .verdict.ok {{ color: #1a7f37; }} img {{ max-width: 100%; }}
  nav a {{ color: #017cee; text-decoration: none; }} nav a:hover {{ text-decoration: underline; }}
</style></head>
<body>
{back}<h1>Drift report</h1>
<div class="muted" id="source">{made_by}</div>
<h2 class="verdict {"drift" if drift else "ok"}">{"Drift found" if drift else "No drift"}</h2>
<table id="summary">
{summary}</table>
<h2>Tests</h2>
<table id="features"><tr><th>Feature</th><th>Test</th><th>Statistic</th><th>p-value</th><th></th></tr>
{table}</table>
{plot}
</body></html>
"""


def authorize_report_folder(user: Any, dag_id: str, folder: Any) -> None:
    """
    Refuse (403) a report whose resolved ``folder`` belongs to what the caller may not read: the
    DAG whose folder it is, when that is not ``dag_id`` (already authorized), or the deployment of
    a watcher's window.
    """
    from airflow_mlops import storage

    parts = files.under(drift_root(), storage.location(folder), "No drift report.")[0]
    if parts and parts[0] == WATCHERS:
        authorize_deployment(user, parts[1] if len(parts) > 1 else "")
    elif parts and parts[0] != dag_id:
        _authorize(user, parts[0])


def _report_page(dag_id: str, run_id: str, task_id: str, map_index: int, user: Any) -> HTMLResponse:
    _authorize(user, dag_id)
    folder, result = report_dir(dag_id, run_id, task_id, map_index)
    authorize_report_folder(user, dag_id, folder)
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError) as err:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"The drift report of {dag_id!r} / {run_id!r} / {task_id!r} is unreadable: {err}",
        ) from err
    source = [("DAG", dag_id), ("run", run_id), ("task", task_id)]
    if map_index >= 0:
        source.append(("map index", str(map_index)))
    # relative to this page: .../<task_id>/pvalues.png, or .../<task_id>/<map_index>/pvalues.png
    last = quote(task_id, safe="") if map_index < 0 else str(map_index)
    page = render_report(
        report if isinstance(report, dict) else {},
        source=source,
        window=result.get("window"),
        plot_url=f"{last}/{PLOT_FILE}" if (folder / PLOT_FILE).is_file() else None,
        back_url=mlops_page_path(),
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


def _report_plot(dag_id: str, run_id: str, task_id: str, map_index: int, user: Any) -> Response:
    from airflow_mlops import storage

    _authorize(user, dag_id)
    folder, _ = report_dir(dag_id, run_id, task_id, map_index)
    authorize_report_folder(user, dag_id, folder)
    missing = f"No p-value plot for the drift report of {dag_id!r} / {run_id!r} / {task_id!r}."
    plot = resolve(drift_root(), storage.location(folder / PLOT_FILE), missing)
    return files.file_response(plot, media_type="image/png")


@router.get(
    DRIFT_REPORT_ROUTE + "/{dag_id}/{run_id}/{task_id}", response_class=HTMLResponse, name="drift_report"
)
def drift_report(dag_id: str, run_id: str, task_id: str, user: PageUser) -> HTMLResponse:
    """The drift report of one task instance (not mapped) as a page."""
    return _report_page(dag_id, run_id, task_id, -1, user)


@router.get(DRIFT_REPORT_ROUTE + "/{dag_id}/{run_id}/{task_id}/pvalues.png", name="drift_report_plot")
def drift_report_plot(dag_id: str, run_id: str, task_id: str, user: User) -> Response:
    """The p-value plot of one drift report."""
    return _report_plot(dag_id, run_id, task_id, -1, user)


@router.get(
    DRIFT_REPORT_ROUTE + "/{dag_id}/{run_id}/{task_id}/{map_index:int}",
    response_class=HTMLResponse,
    name="drift_report_mapped",
)
def drift_report_mapped(
    dag_id: str, run_id: str, task_id: str, map_index: int, user: PageUser
) -> HTMLResponse:
    """The drift report of one instance of a mapped task as a page."""
    return _report_page(dag_id, run_id, task_id, map_index, user)


@router.get(
    DRIFT_REPORT_ROUTE + "/{dag_id}/{run_id}/{task_id}/{map_index:int}/pvalues.png",
    name="drift_report_mapped_plot",
)
def drift_report_mapped_plot(dag_id: str, run_id: str, task_id: str, map_index: int, user: User) -> Response:
    """The p-value plot of one mapped instance's drift report."""
    return _report_plot(dag_id, run_id, task_id, map_index, user)


# --------------------------------------------------------------------------- watched windows


def authorize_window(user: Any, deployment: str, window_id: str) -> None:
    """
    Refuse (403) a caller who may not read the deployment owning the window the path names once
    resolved (``auth.authorize_deployment``); 404 for a path that leaves the watchers' folder.
    """
    missing = f"No drift report for window {window_id!r} of {deployment!r}."
    parts = files.under(watchers_root(), f"{deployment}/{window_id}", missing)[0]
    authorize_deployment(user, parts[0])


def window_dir(deployment: str, window_id: str) -> tuple[Any, dict[str, Any]]:
    """The folder of a window a ``DriftEventTrigger`` tested and its ``window.json``; 404 if none."""
    missing = f"No drift report for window {window_id!r} of deployment {deployment!r}."
    report = resolve(watchers_root(), Path(deployment) / window_id / "report.json", missing)
    try:
        meta = json.loads((report.parent / "window.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return report.parent, meta if isinstance(meta, dict) else {}


@router.get(
    DRIFT_WINDOW_ROUTE + "/{deployment}/{window_id}", response_class=HTMLResponse, name="drift_window"
)
def drift_window(deployment: str, window_id: str, user: PageUser) -> HTMLResponse:
    """The report of one window of served traffic a drift watcher tested, as a page."""
    authorize_window(user, deployment, window_id)
    folder, meta = window_dir(deployment, window_id)
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError) as err:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"The drift report of window {window_id!r} is unreadable: {err}"
        ) from err
    source = [("deployment", deployment), ("window", window_id)]
    if meta.get("model_name") or meta.get("model_version"):
        source.append(("model", f"{meta.get('model_name') or '?'} v{meta.get('model_version') or '?'}"))
    page = render_report(
        report if isinstance(report, dict) else {},
        source=source,
        window=meta.get("window"),
        plot_url=f"{quote(window_id, safe='')}/pvalues.png" if (folder / "pvalues.png").is_file() else None,
        back_url=mlops_page_path(),
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get(DRIFT_WINDOW_ROUTE + "/{deployment}/{window_id}/pvalues.png", name="drift_window_plot")
def drift_window_plot(deployment: str, window_id: str, user: User) -> Response:
    """The p-value plot of one watched window."""
    authorize_window(user, deployment, window_id)
    missing = f"No p-value plot for window {window_id!r} of deployment {deployment!r}."
    return files.file_response(
        resolve(watchers_root(), f"{deployment}/{window_id}/pvalues.png", missing), media_type="image/png"
    )
