"""The MLOps view in a real browser: headless Chromium against ``airflow standalone``.

Uses the pipeline run the scheduler started on the session stack (it trained, registered,
deployed and checked drift). Chromium is driven over its DevTools protocol (``browser.py``);
install it with ``scripts/install_browser.sh``. Screenshots of every step go to
``tests/system/artifacts/`` (or ``$MLOPS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests
from browser import Browser, log_in
from run_checks import assert_every_task_ran

pytestmark = [pytest.mark.system, pytest.mark.timeout(3000)]

PIPELINE, RETRAIN, BAD = "flights_delay_pipeline", "flights_delay_retrain", "flights_delay_bad_input"
JANUARY = ("2013-01-01T00:00:00Z", "2013-02-01T00:00:00Z")
MODEL = "flights_delay"
DEPLOYMENT = "flights-delay"
DATASETS = {"flights", "weather"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pipeline_run(scheduled_run) -> str:
    """The pipeline run the scheduler started: it trained, registered, deployed and checked drift."""
    assert scheduled_run["state"] == "success", scheduled_run
    return scheduled_run["dag_run_id"]


@pytest.fixture(scope="module")
def logged_in(browser, stack, pipeline_run) -> Browser:
    return log_in(browser, stack)


# --------------------------------------------------------------------------- tests


#: the MLOps page inside Airflow's UI: the iframe of the external view (same origin)
FRAME = "document.querySelector('iframe[src*=\"/mlops/\"]')?.contentDocument"


def in_frame(expression: str) -> str:
    """``expression`` evaluated with ``doc`` bound to the MLOps page's document inside the iframe."""
    return f"(() => {{ const doc = {FRAME}; if (!doc || !doc.body) return null; return ({expression}); }})()"


def open_mlops_through_the_navigation(b: Browser, stack) -> None:
    """Airflow's home page, then MLOps in its navigation: the page in Airflow's iframe, loaded."""
    b.goto(f"{stack.airflow_url}/")
    link = b.wait_for(
        "(() => { const a = [...document.querySelectorAll('a')]"
        ".find(e => e.textContent.trim() === 'MLOps'); return a && a.getAttribute('href'); })()",
        what="the MLOps entry of the navigation",
    )
    assert link.rstrip("/").endswith("/plugin/mlops")
    b.eval("[...document.querySelectorAll('a')].find(e => e.textContent.trim() === 'MLOps').click()")
    b.wait_for(in_frame("doc.body.dataset.loaded === 'true'"), what="the MLOps page's data inside the iframe")
    sandbox = b.eval("document.querySelector('iframe[src*=\"/mlops/\"]').getAttribute('sandbox')")
    assert "allow-modals" not in sandbox and "allow-top-navigation" not in sandbox, sandbox


def test_mlops_is_in_the_navigation(logged_in, stack):
    b = logged_in
    b.reset_records()
    open_mlops_through_the_navigation(b, stack)
    assert b.eval(in_frame("[...doc.querySelectorAll('.error')].map(e => e.textContent)")) == []
    assert b.eval(in_frame(f"!!doc.querySelector('section.model[data-model=\"{MODEL}\"]')"))
    b.pump(2)
    assert b.console_errors == [] and b.failed_requests == [], (b.console_errors, b.failed_requests)
    b.screenshot("03-mlops-in-airflow-ui")


def press_in_the_frame(b: Browser, stack, scope: str, action: str) -> dict:
    """
    Press Retrain… or Roll back… in ``scope`` of the framed page, keep the form's parameters,
    press Confirm, and return the run the page started (``dag_id``, ``run_id``) once Airflow has it.
    """
    b.eval(in_frame(f"doc.querySelector('{scope} button.{action}').click()"))
    form = f"{scope} form.trigger-form[data-action={action}]"
    dag_id = b.wait_for(in_frame(f"doc.querySelector('{form}')?.dataset.dagId"), what=f"the {action} form")
    b.screenshot(f"05-{action}-form")
    b.eval(in_frame(f"doc.querySelector('{form} button.confirm').click()"))
    result = f"{scope} .run-result[data-action={action}][data-run-id]"
    run_id = b.wait_for(in_frame(f"doc.querySelector('{result}')?.dataset.runId"), what=f"the {action} run")
    assert b.eval(in_frame(f"doc.querySelector('{result}').dataset.dagId")) == dag_id
    assert any(r["dag_run_id"] == run_id for r in stack.dag_runs(dag_id)), (dag_id, run_id)
    return {"dag_id": dag_id, "run_id": run_id, "result": result}


def test_retrain_and_roll_back_from_the_mlops_page_inside_airflow(logged_in, stack):
    """
    A person on the MLOps page, inside Airflow: Retrain… on the model, Confirm in the page, the
    run it started succeeds with every task run; then Roll back… likewise. No dialog is used
    (the iframe's sandbox ignores them), the result appears in the model's section with the
    run's state kept up to date, and its link opens the run in Airflow's UI.
    """
    b = logged_in
    b.reset_records()
    open_mlops_through_the_navigation(b, stack)
    model = f'section.model[data-model="{MODEL}"]'

    retrain = press_in_the_frame(b, stack, model, "retrain")
    state = stack.wait_run(retrain["dag_id"], retrain["run_id"], timeout=1800)
    states = assert_every_task_ran(stack, retrain["dag_id"], retrain["run_id"], state)
    assert "pick_months" in states
    months = stack.xcom(retrain["dag_id"], retrain["run_id"], "pick_months")
    assert months["start"].startswith("2013-"), months  # the form's default month: the replay clock
    # the page polled the run to its end
    b.wait_for(in_frame(f"doc.querySelector('{retrain['result']}').dataset.state === 'success'"), timeout=120)
    b.screenshot("06-retrain-done")

    rollback = press_in_the_frame(b, stack, model, "rollback")
    state = stack.wait_run(rollback["dag_id"], rollback["run_id"], timeout=900)
    assert_every_task_ran(stack, rollback["dag_id"], rollback["run_id"], state)
    rolled = stack.xcom(rollback["dag_id"], rollback["run_id"], "rollback")
    current = json.loads((stack.data_dir / "deployments" / DEPLOYMENT / "current.json").read_text())
    assert str(current["version"]) == str(rolled["version"]) and rolled["changed"] is True
    b.wait_for(
        in_frame(f"doc.querySelector('{rollback['result']}').dataset.state === 'success'"), timeout=120
    )
    assert b.dialogs == []
    b.pump(1)
    assert b.console_errors == [] and b.failed_requests == [], (b.console_errors, b.failed_requests)

    # the run's link opens the run in Airflow's UI (the parent page), not inside the frame
    b.eval(in_frame(f"doc.querySelector('{rollback['result']} a.airflow-link').click()"))
    path = f"/dags/{rollback['dag_id']}/runs/"
    b.wait_for(f"location.pathname.startsWith({json.dumps(path)})", what="Airflow's page of the run")
    b.screenshot("07-run-opened-from-the-page")


def test_mlops_page_shows_champion_and_drift_chart(logged_in, stack, pipeline_run):
    b = logged_in
    b.goto(f"{stack.airflow_url}/mlops/")
    b.wait_for("document.body.dataset.loaded === 'true'", what="the MLOps page's data")
    errors = b.eval("[...document.querySelectorAll('.error')].map(e => e.textContent)")
    assert errors == []
    champion = b.eval(
        f"document.querySelector('section.model[data-model=\"{MODEL}\"] .badge.champion')?.textContent"
    )
    expected = requests.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/alias",
        params={"name": MODEL, "alias": "champion"},
        timeout=30,
    ).json()["model_version"]["version"]
    assert champion == f"champion: v{expected}"
    # the version row that carries the alias links to the DAG run that trained it
    row_text = b.eval(
        f'document.querySelector(\'section.model[data-model="{MODEL}"] tr[data-version="{expected}"]\')'
        ".textContent"
    )
    assert "champion" in row_text and (PIPELINE in row_text or RETRAIN in row_text)
    # one timeline for the model: the pipeline's July check and the windows of served traffic
    # its deployment's watcher tested, the one that started the retraining marked
    chart = b.eval(
        f"(() => {{ const s = document.querySelector('svg.drift-chart[data-model=\"{MODEL}\"]');"
        " return s && {checks: s.querySelectorAll('circle.point.check').length,"
        " watched: s.querySelectorAll('circle.point.watched').length,"
        " drift: s.querySelectorAll('circle.point.drift').length,"
        " retrained: s.querySelectorAll('circle.point[data-retrained=\"true\"]').length,"
        " threshold: !!s.querySelector('path.threshold')}; })()"
    )
    assert chart is not None and chart["threshold"], chart
    assert chart["checks"] >= 1 and chart["watched"] >= 1, chart
    assert chart["drift"] >= 2 and chart["retrained"] >= 1, chart  # July drifted against January
    health = b.eval(f"document.querySelector('tr[data-deployment=\"{DEPLOYMENT}\"]')?.dataset.health")
    assert health == "healthy"
    datasets = b.eval("[...document.querySelectorAll('section.dataset')].map(s => s.dataset.dataset)")
    assert DATASETS <= set(datasets)
    b.screenshot("04-mlops-page")


def test_train_task_links_to_its_mlflow_run(logged_in, stack, pipeline_run):
    b = logged_in
    links = stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{quote(pipeline_run)}/taskInstances/train/links")
    url = (links.get("extra_links") or links)["MLflow run"]
    train = stack.xcom(PIPELINE, pipeline_run, "train")
    assert url.startswith(stack.mlflow_url) and url.endswith(f"/runs/{train['run_id']}")
    # the same link on the Details tab of the task's page in Airflow's UI
    b.goto(f"{stack.airflow_url}/dags/{PIPELINE}/runs/{quote(pipeline_run, safe='')}/tasks/train/details")
    href = b.wait_for(
        "(() => { const a = [...document.querySelectorAll('a')]"
        ".find(e => e.textContent.trim() === 'MLflow run'); return a && a.href; })()",
        what="the task's 'MLflow run' extra link",
    )
    assert href == url
    b.screenshot("07-train-task-extra-link")
    b.goto(href)
    shows_run = f"document.body.innerText.includes({json.dumps(train['run_id'])})"
    b.wait_for(shows_run, what="the MLflow run page", timeout=90)
    b.screenshot("08-mlflow-run")


def test_every_page_we_serve_loads_without_error_and_nothing_from_outside(logged_in, stack, pipeline_run):
    """The MLOps page, a drift check's report, a watched window's report and the Data Docs."""
    from urllib.parse import urlsplit

    b = logged_in

    def extra_link(task_id: str, name: str) -> str:
        links = stack.api(
            "GET", f"/dags/{PIPELINE}/dagRuns/{quote(pipeline_run)}/taskInstances/{task_id}/links"
        )
        return (links.get("extra_links") or links)[name]

    series = stack.request("GET", "/mlops/api/drift")["series"]
    watched = next(p["report_url"] for s in series for p in s["points"] if p["source"] == "watcher")
    pages = {
        "mlops": f"{stack.airflow_url}/mlops/",
        "drift report": extra_link("detect_drift", "Drift report"),
        "watched window": stack.airflow_url + watched,
        "data docs": extra_link("validate_flights", "Data Docs"),
    }
    for what, url in pages.items():
        b.reset_records()
        b.goto(url)
        b.wait_for("document.readyState === 'complete'", what=f"the {what} page")
        b.pump(3)
        assert b.eval("document.title") and b.eval("!location.pathname.startsWith('/auth')"), what
        assert b.console_errors == [], (what, url, b.console_errors)
        assert b.failed_requests == [], (what, url, b.failed_requests)
        remote = [urlsplit(u) for u in b.requested if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
        outside = [u.geturl() for u in remote if u.hostname != "127.0.0.1"]
        assert outside == [], (what, outside)
        b.screenshot(f"09-page-{what.replace(' ', '-')}")
