"""The drift report view and the *Drift report* link, through Airflow's real API app.

The requests run in a fresh interpreter (``_jobs/ui_drift.py``): a ``dag.test()`` run writes
``report.json`` and ``pvalues.png`` with the drift runtime's own writers, in the structure its
``detect`` builds, persists the link, and the API server's app is requested with TestClient.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from fastapi import HTTPException

JOB = "ui-drift"
BASE_URL = "http://airflow.example:8080"


def start_jobs(jobs) -> None:
    work = jobs.workdir(JOB)
    jobs.submit(
        JOB,
        [jobs.python, jobs.script("ui_drift"), work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
            AIRFLOW__API__BASE_URL=BASE_URL,
            AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production",
        ),
    )


@pytest.fixture(scope="module")
def result(jobs) -> dict:
    import json

    start_jobs(jobs)
    jobs.result(JOB).check()
    return json.loads((jobs.workdir(JOB) / "result.json").read_text())


def cell(page: str, cell_id: str) -> str:
    match = re.search(rf'<td id="{cell_id}">(.*?)</td>', page)
    assert match, f"no cell {cell_id!r} in the page"
    return match.group(1)


def test_authorized_request_renders_the_stored_report(result):
    page = result["page"]
    assert page["status"] == 200 and page["content_type"].startswith("text/html")
    html = page["body"]
    assert "Drift found" in html
    assert cell(html, "drift-score") == "0.5"
    assert cell(html, "threshold") == "0.05" and cell(html, "effective-threshold") == "0.025"
    assert cell(html, "drifted-features") == "temp"
    assert cell(html, "window") == "2013-07-01 → 2013-08-01"  # from the task's result
    assert cell(html, "rows") == "5000 / 4321"
    assert '<tr class="drift"><td>temp</td><td>ks</td><td>0.4242</td><td>3.200e-12</td>' in html
    assert '<tr class="ok"><td>visib</td><td>ks</td><td>0.0151</td><td>6.100e-01</td>' in html
    assert 'src="detect_drift/pvalues.png"' in html  # relative to the page: .../<task_id>/pvalues.png


def test_plot_is_the_stored_png(result):
    plot = result["plot"]
    assert plot["status"] == 200 and plot["content_type"] == "image/png"
    assert plot["png"] and plot["size"] == result["plot_size"] > 1000
    assert base64.b64decode(plot["body"])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["anonymous", "plot anonymous"])
def test_unauthenticated_requests_are_refused(result, name):
    assert result[name]["status"] == 401
    assert "Drift" not in result[name]["body"] and not result[name]["png"]


def test_bad_token_and_no_dag_access_are_forbidden(result):
    assert result["bad_token"]["status"] == 403
    assert result["nobody"]["status"] == 403
    assert "No read access to the tasks of DAG 'ui_drift_monitor'" in result["nobody"]["body"]


@pytest.mark.parametrize("name", ["traversal", "traversal plot"])
def test_nothing_outside_the_drift_folder_is_served(result, name):
    assert result[name]["status"] == 404
    assert "not for the browser" not in result[name]["body"]


def test_missing_report_is_a_clear_404(result):
    missing = result["missing"]
    assert missing["status"] == 404
    assert "No drift report for task 'detect_drift' of DAG run 'no_such_run'" in missing["body"]


def test_link_points_at_the_view_under_the_configured_base_url(result):
    # what the task persisted under the link's XCom key: [api] base_url + the view's path
    assert result["link"] == BASE_URL + result_page(result)


def result_page(result: dict) -> str:
    from urllib.parse import quote

    return f"/mlops/drift-report/ui_drift_monitor/{quote(result['run_id'], safe='')}/detect_drift"


def test_mlops_drift_api_links_each_window_to_the_view(result):
    import json

    (series,) = json.loads(result["drift api"]["body"])["series"]
    (point,) = series["points"]
    assert point["report_url"] == result_page(result)
    assert point["window"] == {"start": "2013-07-01", "end": "2013-08-01"}


# --------------------------------------------------------------------------- in-process


def test_drift_operator_declares_the_link():
    from airflow_mlops.links.drift import DriftReportLink
    from airflow_mlops.operators.drift import DriftDetectOperator

    assert [type(x) for x in DriftDetectOperator.operator_extra_links] == [DriftReportLink]
    assert DriftReportLink.name == "Drift report"


def test_link_url_quotes_every_part(monkeypatch):
    from airflow_mlops.links.drift import drift_report_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    url = drift_report_url("monitor", "manual__2024-01-01T00:00:00+00:00", "detect/drift")
    assert url == (
        "https://airflow.example.com/mlops/drift-report/monitor/"
        "manual__2024-01-01T00%3A00%3A00%2B00%3A00/detect%2Fdrift"
    )


def test_link_of_a_mapped_instance_names_its_map_index(monkeypatch):
    from airflow_mlops.links.drift import drift_report_url
    from airflow_mlops.plugins.sources import drift_report_path

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    assert (
        drift_report_url("monitor", "r", "check", 3)
        == "https://airflow.example.com/mlops/drift-report/monitor/r/check/3"
    )
    assert drift_report_url("monitor", "r", "check", -1).endswith("/drift-report/monitor/r/check")
    assert drift_report_path("monitor", "r", "check", 0) == "/mlops/drift-report/monitor/r/check/0"


def test_resolve_refuses_traversal_and_links_out(tmp_path):
    from airflow_mlops.plugins.drift_report import resolve

    root = tmp_path / "drift"
    (root / "dag" / "run").mkdir(parents=True)
    (root / "dag" / "run" / "report.json").write_text("{}")
    (tmp_path / "secret.json").write_text("{}")
    (root / "dag" / "out").symlink_to(tmp_path)
    assert resolve(root, "dag/run/report.json", "x") == (root / "dag" / "run" / "report.json").resolve()
    for bad in ("../secret.json", "dag/out/secret.json", "dag/run", str(tmp_path / "secret.json")):
        with pytest.raises(HTTPException) as err:
            resolve(root, bad, "missing")
        assert err.value.status_code == 404


def test_report_pages_link_back_to_the_mlops_page(result):
    assert '<a id="back" href="/mlops/" target="_self">← MLOps</a>' in result["page"]["body"]


def test_a_browser_without_a_session_is_sent_to_the_login_page(result):
    from urllib.parse import parse_qs, urlsplit

    for name in ("browser logged out", "browser expired"):
        answer = result[name]
        assert answer["status"] == 302, answer
        location = urlsplit(answer["location"])
        assert location.path == "/auth/login"
        # back to the report, under [api] base_url (where users reach Airflow)
        assert parse_qs(location.query)["next"] == [BASE_URL + result_page(result)]
    assert result["plot browser logged out"]["status"] == 401  # an image is not a page


def test_render_escapes_values_from_the_report():
    from airflow_mlops.plugins.drift_report import render_report

    report = {"features": {"<script>x</script>": {"test": "ks", "p_val": 0.5, "drift": False}}}
    html = render_report(report, source=[("run", "r<")], window=None, plot_url=None)
    assert "<script>x" not in html and "&lt;script&gt;x" in html and "r&lt;" in html
    assert "No p-value plot was stored." in html


def test_plugin_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, airflow_mlops.plugins.drift_report; "
        "print(sorted(m for m in ('airflow.api_fastapi.core_api.security', 'pandas', 'matplotlib', "
        "'mlflow', 'feast') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
