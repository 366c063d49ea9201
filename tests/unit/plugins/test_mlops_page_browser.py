"""The MLOps page in headless Chromium, inside an iframe sandboxed exactly as Airflow 3.3's UI does.

Airflow shows an ``external_views`` page in ``<iframe sandbox="allow-scripts allow-same-origin
allow-forms allow-downloads">``: no dialogs (``confirm()`` returns false without asking), no
popups, no navigation of the top window. This check serves, from one HTTP server on 127.0.0.1
(same origin, as in Airflow):

* ``/parent`` — a tiny stand-in for Airflow's UI: the iframe with Airflow's sandbox attribute,
  and a record of the ``popstate`` events its router would act on;
* ``/mlops/`` — the page as the plugin renders it (:func:`render_page`), ``/mlops/api/*`` — JSON
  shaped by the plugin's own readers from real serialized DAGs (``DagSerialization``) with the
  Params, ``MlflowRegisterModelOperator`` and ``SeldonRollbackOperator`` of the example DAGs;
* ``/api/v2/dags/{dag_id}/dagRuns`` — a fake of Airflow's trigger endpoint that records the
  request, and ``.../dagRuns/{run_id}`` answering *running* then *success*;
* ``/mlops/drift-report/...`` — a report page rendered by :func:`render_report`;
* ``/mlflow/...`` — a stand-in for MLflow's UI (the page's external links).

Chromium is driven over the DevTools protocol (``websockets``, no driver), as in the system
tests; it comes from ``make browser`` (Debian's package at ``/usr/bin/chromium``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
from browser import CHROMIUM, Browser  # noqa: E402  (tests/support)

#: what Airflow 3.3's UI puts on the iframe of an external view (its ui/dist bundle)
AIRFLOW_SANDBOX = "allow-scripts allow-same-origin allow-forms allow-downloads"
MODEL, OTHER = "flights_delay", "churn"
PIPELINE, RETRAIN, ROLLBACK = "flights_delay_pipeline", "flights_delay_retrain", "flights_delay_rollback"
DEPLOYMENT, OTHER_DEPLOYMENT = "flights-delay", "churn-svc"
MONTHS = ["replay"] + [f"2013-{m:02d}" for m in range(1, 13)]

pytestmark = pytest.mark.timeout(180)


# --------------------------------------------------------------------------- the data the page shows


def example_dags() -> dict[str, dict[str, Any]]:
    """The readers' catalog of DAGs shaped like the example DAGs, serialized by Airflow itself."""
    from airflow.sdk import DAG, Param
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow_mlops.operators.deploy import SeldonDeployOperator, SeldonRollbackOperator
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator
    from airflow_mlops.plugins.sources import catalog_entry

    start = datetime(2013, 1, 1, tzinfo=UTC)
    month = Param(
        "replay",
        type="string",
        enum=MONTHS,
        values_display={"replay": "From the run's date (replay clock)"} | {m: m for m in MONTHS[1:]},
        description="The month of flights to train on",
    )
    dags = []
    with DAG(
        PIPELINE,
        schedule=None,
        start_date=start,
        params={
            "month": month,
            "drift_check_offset_months": Param(
                1,
                type="integer",
                minimum=1,
                maximum=11,
                description="Check drift on the month this many months later",
            ),
        },
    ) as pipeline:
        MlflowRegisterModelOperator(
            task_id="register", model_name=MODEL, run_id="{{ ti.xcom_pull('train') }}"
        )
        SeldonDeployOperator(task_id="deploy", deployment_name=DEPLOYMENT, model_name=MODEL)
    dags.append(pipeline)
    with DAG(RETRAIN, schedule=None, start_date=start, params={"month": month}) as retrain:
        MlflowRegisterModelOperator(
            task_id="register", model_name=MODEL, run_id="{{ ti.xcom_pull('train') }}"
        )
    dags.append(retrain)
    with DAG(
        ROLLBACK,
        schedule=None,
        start_date=start,
        params={
            "to_version": Param(None, type=["null", "string"], description="Version to go back to"),
        },
    ) as rollback:
        SeldonRollbackOperator(
            task_id="rollback", deployment_name=DEPLOYMENT, to_version="{{ params.to_version }}"
        )
    dags.append(rollback)
    return {d.dag_id: catalog_entry(d.dag_id, DagSerialization.to_dict(d)) for d in dags}


def api_data() -> dict[str, Any]:
    """The four JSON documents of ``/mlops/api/*``, the button targets made by the plugin's readers."""
    from airflow_mlops.plugins import sources

    catalog = example_dags()
    mlflow = "/mlflow"
    found = [
        {
            "name": DEPLOYMENT,
            "namespace": None,
            "model_name": MODEL,
            "mode": "local",
            "version": "2",
            "previous_version": "1",
            "served_before": ["1"],
            "endpoint": "http://127.0.0.1:9",
            "health": "healthy",
            "traffic": [{"version": "2", "percent": 100}],
            "started_at": None,
            "last_rollout": {
                "dag_id": PIPELINE,
                "task_id": "deploy",
                "run_id": "manual__2",
                "state": "failed",
                "start_date": "2026-01-02T00:00:00+00:00",
                "end_date": "2026-01-02T00:01:00+00:00",
                "url": f"/dags/{PIPELINE}/runs/manual__2",
                "outcome": None,
            },
            "rollout_outcome": {"outcome": "succeeded", "version": "2", "strategy": "replace", "at": 1.0},
        },
        {
            "name": OTHER_DEPLOYMENT,
            "namespace": None,
            "model_name": OTHER,
            "mode": "local",
            "version": "3",
            "previous_version": "2",
            "served_before": ["2"],
            "endpoint": "http://127.0.0.1:10",
            "health": "stopped",
            "traffic": [{"version": "3", "percent": 100}],
            "started_at": None,
            "last_rollout": None,
            "rollout_outcome": None,
        },
    ]
    for d in found:
        d["rollback"] = sources.rollback_target(d, catalog)

    def version(n: str, aliases: list[str], run: str) -> dict[str, Any]:
        return {
            "version": n,
            "aliases": aliases,
            "status": "READY",
            "created_at": "2026-01-01T00:00:00+00:00",
            "mlflow_run_id": f"r{n}",
            "mlflow_run_url": f"{mlflow}/#/experiments/1/runs/r{n}",
            "mlflow_version_url": f"{mlflow}/#/models/{MODEL}/versions/{n}",
            "dataset_version": "f0f0f0f0f0f0f0f0",
            "evaluation": {"roc_auc": "0.71"},
            "metrics": {},
            "dag_id": RETRAIN,
            "dag_run_id": run,
            "dag_run": {
                "dag_id": RETRAIN,
                "run_id": run,
                "state": "success",
                "url": f"/dags/{RETRAIN}/runs/{run}",
            },
            "validation": None,
        }

    models = []
    for name, versions in (
        (MODEL, [version("2", ["champion"], "manual__b"), version("1", [], "manual__a")]),
        (OTHER, []),
    ):
        entry = {"name": name, "description": "", "versions": versions}
        entry["aliases"] = {a: v["version"] for v in versions for a in v["aliases"]}
        entry["trained_by_dag"] = RETRAIN if versions else None
        entry["retrain"] = sources.retrain_target(name, catalog, entry["trained_by_dag"])
        entry["rollbacks"] = [sources.rollback_target(d, catalog) for d in found if d["model_name"] == name]
        models.append(entry)

    def point(source, window, p, drift, checked="2026-01-05T10:00:00+00:00", **extra):
        return {
            "source": source,
            "window": window,
            "min_p_value": p,
            "threshold": 0.00625,
            "is_drift": drift,
            "drift_score": 0.5 if drift else 0.0,
            "drifted_features": ["temp"] if drift else [],
            "checked_at": checked,
            "triggered_runs": [],
            "model_version": "2",
            "dag_id": PIPELINE,
            "run_id": "manual__c",
            "task_id": "detect_drift",
            **extra,
        }

    report = f"/mlops/drift-report/{PIPELINE}/manual__c/detect_drift"
    series = [
        {
            "key": f"model:{MODEL}",
            "model": MODEL,
            "deployments": [DEPLOYMENT],
            "dag_ids": [PIPELINE],
            "points": [
                point(
                    "check",
                    {"start": "2013-01-01", "end": "2013-02-01"},
                    0.3,
                    False,
                    report_url=report,
                    run_url=f"/dags/{PIPELINE}/runs/manual__c",
                ),
                point("check", {"start": "2013-02-01", "end": "2013-03-01"}, 0.2, False),
                point("check", {"start": "2013-07-01", "end": "2013-08-01"}, 1e-40, True),
            ],
        },
        {
            "key": f"dag:{PIPELINE}",
            "model": None,
            "deployments": [],
            "dag_ids": [PIPELINE],
            "points": [
                point(
                    "watcher",
                    {"start": "2013-07-02T05:00:00+00:00", "end": "2013-07-03T05:00:00+00:00"},
                    1e-9,
                    True,
                ),
                point("check", None, 0.4, False, checked="2013-07-10T00:00:00+00:00"),
            ],
        },
    ]
    flights = [
        ("aaaaaaaaaaaaaaaa", "2013-01-01"),
        ("cccccccccccccccc", "2013-03-01"),
        ("bbbbbbbbbbbbbbbb", "2013-02-01"),
    ]
    validation = {"success": True, "evaluated": 7, "successful": 7, "data_docs_url": None}
    datasets = [
        {
            "name": "carrier_daily",
            "versions": [
                {
                    "version": "dddddddddddddddd",
                    "rows": 10,
                    "interval_start": "2013-01-01T00:00:00+00:00",
                    "interval_end": "2013-02-01T00:00:00+00:00",
                    "ingested_at": "2026-01-01T00:00:00+00:00",
                    "dag_id": None,
                    "run_id": None,
                    "validation": None,
                    "derived_from": {
                        "dataset": "flights",
                        "version": "aaaaaaaaaaaaaaaa",
                        "dag_id": PIPELINE,
                        "run_id": "manual__a",
                        "validation": validation,
                    },
                }
            ],
        },
        {
            "name": "flights",
            "versions": sorted(
                (
                    {
                        "version": v,
                        "rows": 100,
                        "interval_start": f"{start}T00:00:00+00:00",
                        "interval_end": None,
                        "ingested_at": "2026-01-01T00:00:00+00:00",
                        "dag_id": PIPELINE,
                        "run_id": "manual__a",
                        "validation": validation,
                        "derived_from": None,
                    }
                    for v, start in flights
                ),
                key=sources._newest_first,
                reverse=True,
            ),
        },
    ]
    return {
        "models": {"tracking_uri": "http://mlflow.example", "models": models},
        "deployments": {"deployments": found},
        "drift": {"series": series},
        "datasets": {"datasets": datasets},
    }


# --------------------------------------------------------------------------- a stand-in Airflow


PARENT = f"""<!doctype html><html><head><meta charset="utf-8"><title>Airflow (stand-in)</title>
<style>body {{ margin: 0 }} iframe {{ border: 0; display: block; width: 100%; height: 100vh }}</style></head>
<body><iframe id="plugin" title="MLOps" sandbox="{AIRFLOW_SANDBOX}" src="/mlops/"></iframe>
<script>
  window.parentLoadId = Math.random();  // survives pushState, not a reload
  window.popstates = [];
  window.addEventListener("popstate", () => window.popstates.push(location.pathname + location.search));
</script></body></html>"""


class FakeAirflow:
    """One HTTP server: the stand-in UI, the plugin's page and API, and Airflow's dagRuns endpoints."""

    def __init__(self, data: dict[str, Any]) -> None:
        from airflow_mlops.plugins.drift_report import render_report
        from airflow_mlops.plugins.mlops_view import render_page

        self.data = data
        self.posts: list[dict[str, Any]] = []
        self.polls: dict[str, int] = {}
        self.page = render_page(
            {"airflow_base": "", "retrain_dag": None, "rollback_dag": None, "poll_ms": 300}
        )
        self.report = render_report(
            {"is_drift": False, "features": {}},
            source=[("DAG", PIPELINE)],
            window=None,
            plot_url=None,
            back_url="/mlops/",
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any, kind: str = "application/json") -> None:
                raw = (json.dumps(body) if kind == "application/json" else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                if path == "/parent":
                    return self.reply(200, PARENT, "text/html")
                if path == "/mlops/":
                    return self.reply(200, fake.page, "text/html")
                if path.startswith("/mlops/api/") and path.rsplit("/", 1)[1] in fake.data:
                    return self.reply(200, fake.data[path.rsplit("/", 1)[1]])
                if path.startswith("/mlops/drift-report/"):
                    return self.reply(200, fake.report, "text/html")
                if match := re.fullmatch(r"/api/v2/dags/([^/]+)/dagRuns/([^/]+)", path):
                    run_id = unquote(match.group(2))
                    fake.polls[run_id] = fake.polls.get(run_id, 0) + 1
                    state = "running" if fake.polls[run_id] == 1 else "success"
                    return self.reply(
                        200, {"dag_id": unquote(match.group(1)), "dag_run_id": run_id, "state": state}
                    )
                if path.startswith(("/mlflow", "/dags/")):  # MLflow's UI / a page of Airflow's UI
                    return self.reply(200, f"<!doctype html><title>{path}</title><p>{path}</p>", "text/html")
                if path == "/favicon.ico":
                    return self.reply(200, "", "image/x-icon")
                return self.reply(404, {"detail": f"no {path}"})

            def do_POST(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                match = re.fullmatch(r"/api/v2/dags/([^/]+)/dagRuns", path)
                if not match:
                    return self.reply(404, {"detail": f"no {path}"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                dag_id = unquote(match.group(1))
                run_id = f"manual__{body['logical_date']}"
                fake.posts.append(
                    {"dag_id": dag_id, "body": body, "content_type": self.headers["Content-Type"]}
                )
                return self.reply(
                    200, {"dag_id": dag_id, "dag_run_id": run_id, "state": "queued", "conf": body["conf"]}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def airflow():
    fake = FakeAirflow(api_data())
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, airflow):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run `make browser`")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.goto(f"{airflow.url}/parent")
        b.wait_for(f"{FRAME}.body?.dataset.loaded === 'true'", what="the MLOps page's data in the iframe")
        yield b
    finally:
        b.close()


#: the iframe's document, from the parent's context (same origin)
FRAME = "document.getElementById('plugin').contentDocument"


def q(selector: str) -> str:
    """An expression for the first element of ``selector`` inside the iframe."""
    return f"{FRAME}.querySelector({json.dumps(selector)})"


def click(b: Browser, selector: str) -> None:
    b.eval(f"{q(selector)}.click()")


def section(model: str) -> str:
    return f'section.model[data-model="{model}"]'


def real_click(b: Browser, selector: str) -> None:
    """Scroll ``selector`` into view in the iframe and click its middle with the mouse."""
    x, y = b.eval(
        f"(() => {{ const el = {q(selector)}; el.scrollIntoView({{block: 'center'}});"
        " const f = document.getElementById('plugin').getBoundingClientRect();"
        " const r = el.getBoundingClientRect();"
        " return [f.left + r.left + r.width / 2, f.top + r.top + r.height / 2]; })()"
    )
    b.click_at(x, y)


# --------------------------------------------------------------------------- tests


def test_page_has_no_dialog_and_no_top_navigation(airflow):
    assert not re.search(r"\b(confirm|alert|prompt)\(", airflow.page)
    assert "_top" not in airflow.page


def test_retrain_in_the_sandboxed_iframe(browser, airflow):
    b = browser
    assert b.eval("document.getElementById('plugin').getAttribute('sandbox')") == AIRFLOW_SANDBOX
    click(b, f"{section(MODEL)} button.retrain")
    form = f"{section(MODEL)} form.trigger-form[data-action=retrain]"
    b.wait_for(f"!!{q(form)}", what="the Retrain form inside the model's section")
    # both DAGs that register the model are offered; the champion's (its run tags) is the default
    options = b.eval(f"[...{q(form + ' select.dag-select')}.options].map(o => [o.value, o.selected])")
    assert options == [[PIPELINE, False], [RETRAIN, True]]
    click_select = f"(() => {{ const s = {q(form + ' select.dag-select')}; s.value = {json.dumps(PIPELINE)};"
    b.eval(click_select + " s.dispatchEvent(new Event('change')); })()")
    assert b.eval(f"{q(form)}.dataset.dagId") == PIPELINE
    # the DAG's params, as Airflow's trigger form shows them
    month = b.eval(
        f"(() => {{ const s = {q(form + ' select[data-param=month]')};"
        " return {value: s.value, labels: [...s.options].map(o => o.textContent)}; })()"
    )
    assert month["value"] == "replay"
    assert (
        month["labels"][:2] == ["From the run's date (replay clock)", "2013-01"]
        and len(month["labels"]) == 13
    )
    offset = b.eval(
        f"(() => {{ const i = {q(form + ' input[data-param=drift_check_offset_months]')};"
        " return [i.type, i.value, i.min, i.max]; })()"
    )
    assert offset == ["number", "1", "1", "11"]
    descriptions = b.eval(f"[...{q(form)}.querySelectorAll('.param-description')].map(d => d.textContent)")
    assert "The month of flights to train on" in descriptions
    b.screenshot("mlops-page-retrain-form")
    b.eval(f"{q(form + ' select[data-param=month]')}.value = '2013-03'")
    before = len(airflow.posts)
    click(b, f"{form} button.confirm")
    result = f"{section(MODEL)} #triggered-run[data-run-id][data-dag-id][data-state]"
    run_id = b.wait_for(f"{q(result)}?.dataset.runId", what="the triggered run in the model's section")
    (post,) = airflow.posts[before:]
    assert post["dag_id"] == PIPELINE and post["content_type"] == "application/json"
    assert post["body"]["conf"] == {"month": "2013-03", "drift_check_offset_months": 1}
    assert post["body"]["note"] == "Triggered from the MLOps page"
    logical = datetime.fromisoformat(post["body"]["logical_date"].replace("Z", "+00:00"))
    assert logical.tzinfo is not None and abs((datetime.now(UTC) - logical).total_seconds()) < 60
    assert run_id == f"manual__{post['body']['logical_date']}"
    assert b.eval(f"{q(result)}.dataset.dagId") == PIPELINE
    assert b.eval(f"!!{q(form)}") is False  # the form closed; the result stays
    assert b.eval(f"!!{q(section(OTHER) + ' .run-result')}") is False  # not under another model
    # the run's state is read from Airflow's REST API until it ends
    b.wait_for(f"{q(result)}.dataset.state === 'success'", what="the polled state of the run")
    assert airflow.polls[run_id] >= 2
    b.screenshot("mlops-page-retrain-result")
    assert b.dialogs == []


def test_roll_back_the_models_deployment(browser, airflow):
    b = browser
    click(b, f"{section(MODEL)} button.rollback")
    form = f"{section(MODEL)} form.trigger-form[data-action=rollback]"
    b.wait_for(f"!!{q(form)}", what="the Roll back form")
    assert b.eval(f"{q(form)}.dataset.dagId") == ROLLBACK
    assert b.eval(f"{q(form)}.dataset.target") == DEPLOYMENT
    # to_version: the versions the deployment served before, the previous one selected
    version = b.eval(
        f"(() => {{ const s = {q(form + ' select[data-param=to_version]')};"
        " return [s.value, [...s.options].map(o => o.value)]; })()"
    )
    assert version == ["1", ["1", ""]]
    before = len(airflow.posts)
    click(b, f"{form} button.confirm")
    result = f"{section(MODEL)} .run-result[data-action=rollback][data-run-id]"
    b.wait_for(f"!!{q(result)}", what="the rollback run in the model's section")
    (post,) = airflow.posts[before:]
    assert post["dag_id"] == ROLLBACK and post["body"]["conf"] == {"to_version": "1"}


def test_buttons_without_a_dag_say_how_to_get_one(browser):
    b = browser
    assert b.eval(f"{q(section(OTHER) + ' button.retrain')}.disabled") is True
    assert b.eval(f"{q(section(OTHER) + ' button.rollback')}.disabled") is True
    note = b.eval(f"{q(section(OTHER) + ' .rollback-note')}.textContent")
    assert (
        f"SeldonRollbackOperator(deployment_name='{OTHER_DEPLOYMENT}')" in note and "docs/serving.md" in note
    )
    assert "MlflowRegisterModelOperator(model_name='churn')" in b.eval(
        f"{q(section(OTHER) + ' .retrain-note')}.textContent"
    )
    row = f'tr[data-deployment="{OTHER_DEPLOYMENT}"]'
    assert b.eval(f"{q(row + ' button.rollback')}.disabled") is True


def test_roll_back_from_the_deployment_row(browser, airflow):
    b = browser
    click(b, f'tr[data-deployment="{DEPLOYMENT}"] button.rollback')
    host = f'tr.action-row[data-for-deployment="{DEPLOYMENT}"]'
    b.wait_for(f"!!{q(host + ' form.trigger-form')}", what="the Roll back form under the deployment's row")
    b.eval(f"{q(host + ' select[data-param=to_version]')}.value = ''")  # the DAG's default
    click(b, f"{host} button.confirm")
    b.wait_for(f"!!{q(host + ' .run-result[data-run-id]')}", what="the result under the deployment's row")
    assert airflow.posts[-1]["body"]["conf"] == {"to_version": None}
    # the deploy that failed shows no outcome of another run
    cell = b.eval(f"{q(f'tr[data-deployment={DEPLOYMENT!r}] .last-rollout')}.textContent")
    assert "failed" in cell and "succeeded" not in cell and "recorded no outcome" in cell


def test_a_run_link_navigates_airflows_ui(browser):
    b = browser
    load_id = b.eval("window.parentLoadId")
    run_id = b.eval(f"{q(section(MODEL) + ' .run-result[data-action=retrain]')}.dataset.runId")
    click(b, f"{section(MODEL)} .run-result[data-action=retrain] a.airflow-link")
    expected = f"/dags/{PIPELINE}/runs/{run_id}"
    b.wait_for(f"decodeURIComponent(location.pathname) === {json.dumps(expected)}", what="the parent's URL")
    # the parent's router heard it (popstate), and the parent page was not reloaded
    assert [unquote(p) for p in b.eval("window.popstates")] == [expected]
    assert b.eval("window.parentLoadId") == load_id
    assert b.eval("!!document.getElementById('plugin')")


def test_own_reports_open_in_the_frame_with_a_back_link(browser):
    b = browser
    click(b, f'section.drift-series[data-model="{MODEL}"] a.report-link')
    b.wait_for(
        "document.getElementById('plugin').contentWindow.location.pathname.startsWith('/mlops/drift-report/')",
        what="the report in the iframe",
    )
    b.wait_for(f"!!{q('#back')}", what="the report's back link")
    assert b.eval(f"{q('#back')}.textContent") == "← MLOps"
    click(b, "#back")
    b.wait_for(f"{FRAME}.body?.dataset.loaded === 'true'", what="the MLOps page again")


def test_mlflow_links_open_a_tab_through_the_parent(browser):
    b = browser
    link = f"{section(MODEL)} tr[data-version='2'] a.external-link"
    href = b.eval(f"{q(link)}.href")
    before = {p["id"] for p in b.pages()}
    real_click(b, link)
    deadline = time.monotonic() + 15
    opened: list[dict] = []
    while time.monotonic() < deadline:
        opened = [p for p in b.pages() if p["id"] not in before]
        if opened and opened[0]["url"] == href:
            break
        b.pump(0.3)
    assert [p["url"] for p in opened] == [href], (b.console_errors, b.pages())
    assert b.eval(f"!!{q(section(MODEL) + ' .external-url')}") is False  # no fallback needed
    b.close_other_pages()


def test_drift_chart_is_a_time_axis(browser):
    b = browser
    chart = b.eval(
        f"(() => {{ const s = {q(f'svg.drift-chart[data-model={MODEL!r}]')};"
        " return {format: s.dataset.dateFormat,"
        " x: [...s.querySelectorAll('circle.point')].map(c => Number(c.getAttribute('cx'))),"
        " ticks: [...s.querySelectorAll('text.tick')].map(t => t.textContent)}; })()"
    )
    assert chart["format"] == "YYYY-MM"
    jan, feb, jul = chart["x"]
    # each check at the middle of its month: spaced by time, not by index
    mid = [datetime(2013, m, 1).timestamp() / 2 + datetime(2013, m + 1, 1).timestamp() / 2 for m in (1, 2, 7)]
    assert jan < feb < jul
    assert (jul - feb) / (feb - jan) == pytest.approx((mid[2] - mid[1]) / (mid[1] - mid[0]), rel=1e-3)
    assert chart["ticks"] and all(re.fullmatch(r"2013-\d\d", t) for t in chart["ticks"]), chart["ticks"]
    other_chart = q(f"svg.drift-chart[data-series='dag:{PIPELINE}']")
    other = b.eval(
        f"(() => {{ const s = {other_chart};"
        " return {format: s.dataset.dateFormat, hollow: s.querySelectorAll('circle.no-window').length,"
        " ticks: [...s.querySelectorAll('text.tick')].map(t => t.textContent)}; })()"
    )
    assert other["format"] == "YYYY-MM-DD" and other["hollow"] == 1
    assert other["ticks"] and all(re.fullmatch(r"2013-\d\d-\d\d", t) for t in other["ticks"]), other["ticks"]
    text = b.eval(f"{FRAME}.getElementById('drift-body').innerText")
    assert "— → —" not in text and "no data window (checked 2013-07-10)" in text


def test_datasets_newest_first_and_derived_tables_say_where_from(browser):
    b = browser
    versions = b.eval(
        f"[...{FRAME}.querySelectorAll('section.dataset[data-dataset=flights] tr[data-version]')]"
        ".map(r => r.dataset.version)"
    )
    assert versions == ["cccccccccccccccc", "bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa"]
    derived = b.eval(f"{q('section.dataset[data-dataset=carrier_daily] tr[data-derived]')}.innerText")
    assert "derived from flights aaaaaaaaaaaaaaaa" in derived and "✓ passed" in derived
    assert PIPELINE in derived


def test_no_console_error_and_no_dialog(browser):
    browser.pump(0.5)
    assert browser.console_errors == []
    assert browser.dialogs == []
