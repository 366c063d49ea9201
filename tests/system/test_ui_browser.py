"""The MLOps view in a real browser: headless Chromium against ``airflow standalone``.

Runs after ``test_flights_delay_loop.py`` (file order) on the same session stack, so the real
pipeline has trained, registered, deployed and checked drift; when run alone, it runs the
January pipeline first. Chromium is driven over its DevTools protocol (``websockets``, no
Selenium or driver); install it with ``scripts/install_browser.sh``. Screenshots of every
step go to ``tests/system/artifacts/`` (or ``$MLOPS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

pytestmark = [pytest.mark.system, pytest.mark.timeout(3000)]

PIPELINE, RETRAIN, BAD = "flights_delay_pipeline", "flights_delay_retrain", "flights_delay_bad_input"
JANUARY = ("2013-01-01T00:00:00Z", "2013-02-01T00:00:00Z")
MODEL = "flights_delay"
DEPLOYMENT = "flights-delay"
DATASETS = {"flights", "weather"}
ARTIFACTS = Path(os.environ.get("MLOPS_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


# --------------------------------------------------------------------------- a tiny CDP client


class Browser:
    """
    Headless Chromium driven over the DevTools protocol: navigate, evaluate, type, screenshot.

    ``confirm()`` / ``alert()`` dialogs are accepted as they open and their messages kept in
    :attr:`dialogs` (a page that asks for confirmation blocks until the dialog is answered).

    :param profile: an empty folder for the browser profile (cookies of this session only).
    """

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.dialogs: list[str] = []
        self._ids = itertools.count(1)
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1440,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port = self._devtools_port(profile)
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self._closing = ExitStack()
        self.ws = self._closing.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        )
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride", width=1440, height=1000, deviceScaleFactor=1, mobile=False
        )

    def _devtools_port(self, profile: Path, timeout: float = 60) -> int:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{CHROMIUM} exited with {self.proc.returncode} at start")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.2)
        raise TimeoutError(f"{CHROMIUM} did not open its DevTools port within {timeout}s")

    def send(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"]["message"])
                # answered without waiting: the call that opened the dialog is still pending
                answer = {
                    "id": next(self._ids),
                    "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": True},
                }
                self.ws.send(json.dumps(answer))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
                if value:
                    return value
            except RuntimeError as err:  # the page is between documents
                last_error = err
            time.sleep(0.5)
        self.screenshot(f"failed-{int(time.time())}")  # what the page showed instead
        raise TimeoutError(
            f"{what or expression} not true within {timeout}s on {self.eval('location.href')} ({last_error})"
        )

    def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` the way a keyboard does (frameworks see input events)."""
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._closing.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 15)  # the browser and its helper processes, by our pid
                self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pipeline_run(stack) -> str:
    """A successful January run of the pipeline: the loop tests' one, or a new one."""
    stack.wait_for_dag(PIPELINE)
    for run in stack.dag_runs(PIPELINE):
        if run["state"] in ("queued", "running"):
            stack.wait_run(PIPELINE, run["dag_run_id"])
    runs = stack.dag_runs(PIPELINE)
    done = [r for r in runs if r["state"] == "success"]
    if done:
        return done[0]["dag_run_id"]
    # a January run exists (logical dates are unique per DAG) but failed: say why, don't re-trigger
    for run in runs:
        if str(run.get("logical_date", "")).startswith(JANUARY[0][:10]):
            states = stack.task_states(PIPELINE, run["dag_run_id"])
            pytest.fail(f"the January pipeline run {run['dag_run_id']} failed: {states}")
    run_id = stack.trigger(PIPELINE, *JANUARY, conf={"drift_check_offset_months": 6})
    assert stack.wait_run(PIPELINE, run_id, timeout=1800) == "success", stack.task_states(PIPELINE, run_id)
    # the drift check's July traffic makes the deployment's watcher start a retraining
    stack.wait_for_new_run(RETRAIN, timeout=300)
    return run_id


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run scripts/install_browser.sh")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def logged_in(browser, stack, pipeline_run) -> Browser:
    """Log in through the simple auth manager's form with the password the stack generated."""
    browser.goto(f"{stack.airflow_url}/auth/login?next={quote(stack.airflow_url + '/')}")
    browser.wait_for("!!document.querySelector('input[name=username]')", what="the login form")
    browser.type_into("input[name=username]", stack.username)
    browser.type_into("input[name=password]", stack.password)
    browser.screenshot("01-login")
    browser.eval("document.querySelector('button[type=submit]').click()")
    browser.wait_for("!location.pathname.startsWith('/auth')", what="leaving the login page")
    cookies = browser.send("Network.getCookies", urls=[stack.airflow_url])["cookies"]
    assert any(c["name"] == "_token" for c in cookies), cookies
    return browser


# --------------------------------------------------------------------------- tests


def test_mlops_is_in_the_navigation(logged_in, stack):
    b = logged_in
    b.goto(f"{stack.airflow_url}/")
    link = b.wait_for(
        "(() => { const a = [...document.querySelectorAll('a')]"
        ".find(e => e.textContent.trim() === 'MLOps'); return a && a.getAttribute('href'); })()",
        what="the MLOps entry of the navigation",
    )
    assert link.rstrip("/").endswith("/plugin/mlops")
    b.screenshot("02-airflow-home-nav")
    b.eval("[...document.querySelectorAll('a')].find(e => e.textContent.trim() === 'MLOps').click()")
    # the page is embedded in Airflow's UI (an iframe on /plugin/mlops)
    b.wait_for("!!document.querySelector('iframe[src*=\"/mlops/\"]')", what="the MLOps iframe")
    time.sleep(3)  # let the embedded page load its data for the screenshot
    b.screenshot("03-mlops-in-airflow-ui")


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


def test_trigger_a_dag_run_from_the_page(logged_in, stack):
    """The Retrain button: form, confirmation dialog, then a new run through Airflow's REST API."""
    b = logged_in
    # a DAG that fails fast on its own: the test checks the trigger, not another training run
    b.goto(f"{stack.airflow_url}/mlops/?retrain_dag={BAD}")
    b.wait_for("document.body.dataset.loaded === 'true'", what="the MLOps page's data")
    before = {r["dag_run_id"] for r in stack.dag_runs(BAD)}
    b.eval(f"document.querySelector('section.model[data-model=\"{MODEL}\"] button.retrain').click()")
    assert b.eval("document.getElementById('trigger-dag').value") == BAD
    b.screenshot("05-trigger-form")
    b.eval("document.getElementById('trigger-submit').click()")
    run_id = b.wait_for(
        "document.getElementById('triggered-run')?.dataset.runId", what="the triggered run's id", timeout=60
    )
    assert b.dialogs and BAD in b.dialogs[-1]
    b.screenshot("06-triggered")
    runs = {r["dag_run_id"]: r for r in stack.dag_runs(BAD)}
    assert run_id in runs and run_id not in before
    assert runs[run_id]["conf"]["model_name"] == MODEL


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
