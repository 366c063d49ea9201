"""The Data Docs plugin: mounted in Airflow's real API app, refuses unauthenticated callers.

The requests run in a fresh interpreter (``_jobs/ge_plugin_auth.py``: Airflow reads its
configuration at import) against the API server's own FastAPI app with FastAPI's TestClient.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from fastapi import HTTPException

REPO = Path(__file__).resolve().parents[3]


def start_jobs(jobs) -> None:
    work = jobs.workdir("ge-plugin-auth")
    jobs.submit(
        "ge-plugin-auth",
        [jobs.python, jobs.script("ge_plugin_auth"), work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
            AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production",
        ),
    )


@pytest.fixture(scope="module")
def responses(jobs) -> dict:
    start_jobs(jobs)
    jobs.result("ge-plugin-auth").check()
    return json.loads((jobs.workdir("ge-plugin-auth") / "result.json").read_text())


def test_anonymous_request_is_refused(responses):
    assert responses["anonymous"]["status"] == 401
    assert "flights suite" not in responses["anonymous"]["body"]


def test_invalid_token_is_refused(responses):
    assert responses["bad_token"]["status"] == 403
    assert "flights suite" not in responses["bad_token"]["body"]


@pytest.mark.parametrize("how", ["bearer", "cookie"])
def test_authenticated_request_gets_the_page(responses, how):
    assert responses[how] == {"status": 200, "body": "<html>flights suite</html>"}


def test_nothing_outside_the_data_docs_folder_is_served(responses):
    assert responses["traversal"]["status"] == 404
    assert "not for the browser" not in responses["traversal"]["body"]
    assert responses["missing"]["status"] == 404


def test_resolve_refuses_traversal_and_links_out(tmp_path):
    from airflow_mlops.plugins.data_docs import resolve

    root = tmp_path / "data_docs"
    (root / "dag").mkdir(parents=True)
    (root / "dag" / "page.html").write_text("ok")
    (tmp_path / "secret").write_text("no")
    (root / "dag" / "link").symlink_to(tmp_path / "secret")
    assert resolve(root, "dag/page.html") == (root / "dag" / "page.html").resolve()
    for path in ("../secret", "dag/../../secret", "dag/link", "dag", "/etc/passwd"):
        with pytest.raises(HTTPException) as err:
            resolve(root, path)
        assert err.value.status_code == 404, path


def test_plugin_is_registered_by_entry_point():
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points["airflow.plugins"] == {"mlops": "airflow_mlops.plugins.mlops_view:MlopsPlugin"}
    # the old name (entry points of installs made before the MLOps view, plugins-folder imports)
    # is the same plugin, so both load it once
    from airflow_mlops.plugins.data_docs import MlopsDataDocsPlugin
    from airflow_mlops.plugins.mlops_view import MlopsPlugin

    assert MlopsDataDocsPlugin is MlopsPlugin
    (app,) = MlopsPlugin.fastapi_apps
    assert app["url_prefix"] == "/mlops"


def test_link_url_uses_the_api_base_url(monkeypatch):
    from airflow_mlops.links.great_expectations import data_docs_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    url = data_docs_url("dag/manual__2024-01-01T00:00:00+00:00/validate/site/index.html")
    assert url == (
        "https://airflow.example.com/mlops/data-docs/dag/manual__2024-01-01T00%3A00%3A00%2B00%3A00"
        "/validate/site/index.html"
    )
