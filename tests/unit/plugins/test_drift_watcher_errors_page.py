"""What a drift watcher cannot do shows on the MLOps page, in headless Chromium.

Real ``DriftEventTrigger`` runs write their records on disk (no drift runtime is needed: none of
these windows gets tested): a watcher of a misspelled deployment name, and a watcher of a
deployment deployed without reference data whose inference log holds a corrupt file. The
plugin's own readers (``watcher_windows``, ``drift_series``) turn the records into the
``/mlops/api/drift`` answer, and the page (``render_page``) is loaded from a local HTTP server
that answers the page's API calls with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
from browser import CHROMIUM, Browser  # noqa: E402  (tests/support)

DEPLOYMENT, MISSPELLED = "flights-delay", "flights-dalay"

pytestmark = pytest.mark.timeout(180)


def log_rows(log_dir: Path, n: int, seq: int, corrupt: bool = False) -> Path:
    """One inference-log file of ``n`` rows of version 1 (the model server's layout)."""
    import pandas as pd

    now = pd.Timestamp("2026-01-05T10:00:00", tz="UTC")
    part = log_dir / now.strftime("hour=%Y-%m-%dT%H")
    part.mkdir(parents=True, exist_ok=True)
    path = part / f"part-{now.strftime('%Y%m%dT%H%M%S.%fZ')}-1-{seq:06d}.parquet"
    if corrupt:
        path.write_bytes(b"PAR1 torn write")
        return path
    pd.DataFrame(
        {
            "request_id": [f"r{seq}-{i // 10}" for i in range(n)],  # each file its own requests
            "row": [i % 10 for i in range(n)],
            "ts": now.floor("ms"),
            "model_version": "1",
            "latency_ms": 2.0,
            "prediction": 0.3,
            "temp": [float(i % 50) for i in range(n)],
        }
    ).to_parquet(path, index=False)
    return path


async def watch(trigger, seconds: float) -> None:
    async def collect():
        async for _ in trigger.run():
            pass

    try:
        await asyncio.wait_for(collect(), seconds)
    except TimeoutError:
        pass


@pytest.fixture(scope="module")
def drift_api(tmp_path_factory) -> dict[str, Any]:
    """``/mlops/api/drift`` over the records real watchers left."""
    data = tmp_path_factory.mktemp("watchers") / "data"
    old = os.environ.get("AIRFLOW__MLOPS__DATA_DIR")
    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(data)
    try:
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.plugins import sources
        from airflow_mlops.triggers.drift import DriftEventTrigger

        state = {
            "name": DEPLOYMENT,
            "predictors": [
                {"role": "main", "version": "1", "model_name": "flights_delay", "pid": os.getpid()}
            ],
        }
        (SeldonHook.deployment_dir(DEPLOYMENT)).mkdir(parents=True)
        (SeldonHook.deployment_dir(DEPLOYMENT) / "current.json").write_text(json.dumps(state))
        log = SeldonHook.inference_log_dir(DEPLOYMENT)
        log_rows(log, 60, 0)
        log_rows(log, 0, 1, corrupt=True)
        log_rows(log, 60, 2)
        for name in (DEPLOYMENT, MISSPELLED):
            trigger = DriftEventTrigger(name, numeric_features=["temp"], window_rows=100, poll_interval=0.1)
            asyncio.run(watch(trigger, 1.0))
        found = sources.deployments(data, health=False)
        return {"series": sources.drift_series(sources.watcher_windows(data), found)}
    finally:
        if old is None:
            os.environ.pop("AIRFLOW__MLOPS__DATA_DIR", None)
        else:
            os.environ["AIRFLOW__MLOPS__DATA_DIR"] = old


@pytest.fixture(scope="module")
def page_url(drift_api):
    from airflow_mlops.plugins.mlops_view import render_page

    answers = {
        "models": {"tracking_uri": None, "models": []},
        "deployments": {"deployments": []},
        "drift": drift_api,
        "datasets": {"datasets": []},
    }
    page = render_page({"airflow_base": "", "retrain_dag": None, "rollback_dag": None})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            if path == "/mlops/":
                body, kind, status = page, "text/html", 200
            elif path.startswith("/mlops/api/") and path.rsplit("/", 1)[1] in answers:
                body, kind, status = json.dumps(answers[path.rsplit("/", 1)[1]]), "application/json", 200
            else:
                body, kind, status = json.dumps({"detail": path}), "application/json", 404
            raw = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/mlops/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, page_url):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run `make browser`")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.goto(page_url)
        b.wait_for("document.body?.dataset.loaded === 'true'", what="the MLOps page's data")
        yield b
    finally:
        b.close()


def texts(b: Browser, selector: str) -> list[str]:
    return b.eval(f"[...document.querySelectorAll({json.dumps(selector)})].map((e) => e.textContent)")


def test_the_api_carries_the_watchers_problems(drift_api):
    points = [p for s in drift_api["series"] for p in s["points"]]
    (misspelled,) = [p for p in points if p["deployment"] == MISSPELLED]
    assert misspelled["kind"] == "status" and f"Did you mean '{DEPLOYMENT}'?" in misspelled["error"]
    (status,) = [p for p in points if p["deployment"] == DEPLOYMENT and p.get("kind") == "status"]
    assert status["error"] is None and status["unreadable_file_count"] == 1
    (window,) = [p for p in points if p["deployment"] == DEPLOYMENT and p.get("kind") != "status"]
    assert window["rows"] == 100 and "no reference data" in window["error"] and window["is_drift"] is None


def test_the_page_says_why_a_watcher_cannot_watch(browser):
    (error,) = texts(browser, ".watcher-error")
    assert error.startswith(f"Drift watcher of {MISSPELLED}: no local deployment '{MISSPELLED}'")
    assert f"Did you mean '{DEPLOYMENT}'?" in error and "Kubernetes" in error


def test_the_page_lists_skipped_log_files_and_windows_not_tested(browser):
    (skipped,) = texts(browser, ".watcher-skipped")
    assert f"Drift watcher of {DEPLOYMENT}: 1 unreadable inference-log file(s) skipped" in skipped
    assert "000001.parquet" in skipped
    (row,) = texts(browser, 'tr[data-tested="false"]')
    assert "not tested: version 1 has no reference data" in row
    # nothing was tested: no chart drawn from untested windows, and no error in the page's script
    assert browser.eval("document.querySelectorAll('svg.drift-chart').length") == 0
    assert [e for e in browser.console_errors if "favicon.ico" not in e] == []
