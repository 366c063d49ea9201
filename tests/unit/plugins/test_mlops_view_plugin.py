"""The MLOps view: its endpoints in Airflow's real API app, on real data, behind Airflow's auth.

The requests run in a fresh interpreter (``_jobs/ui_api.py``): a real MLflow server with a
registered model, ``dag.test()`` runs that write real dataset snapshots, validation results,
a drift report and deploy results, and a deployment state file written by ``SeldonHook``.
A second job checks that loading the plugin imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
#: the serving and drift runtimes: the job deploys a real model and tests real drift
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
API = ["/mlops/api/models", "/mlops/api/deployments", "/mlops/api/drift", "/mlops/api/datasets"]
MODEL, PIPELINE, RETRAIN = "ui_flights_delay", "ui_pipeline", "ui_retrain"

LIGHT_IMPORT = """
import sys, time
t = time.perf_counter()
from airflow_mlops.plugins.mlops_view import MlopsPlugin
elapsed = time.perf_counter() - t
heavy = sorted(m for m in ("mlflow", "pandas", "feast", "great_expectations", "torch", "pyarrow")
               if m in sys.modules)
print(heavy, MlopsPlugin.name)
"""


def start_jobs(jobs) -> None:
    work = jobs.workdir("ui-api")
    jobs.submit(
        "ui-api",
        [jobs.python, jobs.script("ui_api"), work, work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
            AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES),
            AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production",
        ),
        timeout=600,
    )
    jobs.submit(
        "ui-light-import",
        [jobs.python, "-c", LIGHT_IMPORT],
        env=jobs.airflow_env(jobs.workdir("ui-light-import") / "airflow-home"),
    )


def stop_leftover_mlflow(work: Path) -> None:
    """Stop the job's MLflow server group by its recorded pid, if the job died before stopping it."""
    pid_file = work / "mlflow.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        if b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still ours, not a reused pid
            os.killpg(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


@pytest.fixture(scope="module")
def setup(jobs):
    start_jobs(jobs)
    work = jobs.workdir("ui-api")
    try:
        jobs.result("ui-api").check()
        yield json.loads((work / "result.json").read_text())
    finally:
        stop_leftover_mlflow(work)


@pytest.fixture(scope="module")
def responses(setup) -> dict:
    return setup["responses"]


def body(responses, name: str):
    entry = responses[name]
    assert entry["status"] == 200, entry
    return entry["body"]


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("path", ["/mlops/", *API])
def test_every_route_refuses_the_unauthenticated(responses, path):
    assert responses[f"anonymous {path}"]["status"] == 401
    assert responses[f"bad_token {path}"]["status"] == 403
    # a user without read access to DAG runs gets nothing either
    assert responses[f"nobody {path}"]["status"] == 403
    for who in ("anonymous", "bad_token", "nobody"):
        assert MODEL not in json.dumps(responses[f"{who} {path}"]["body"])


@pytest.mark.parametrize("path", ["/mlops/", *API])
def test_the_ui_session_cookie_is_accepted(responses, path):
    assert responses[f"viewer {path}"]["status"] == 200
    assert responses[f"cookie {path}"]["body"] == responses[f"viewer {path}"]["body"]


def test_page_trigger_path_works_with_the_session_cookie(responses):
    """The Retrain/Roll back buttons POST to Airflow's REST API with the UI's cookie."""
    triggered = body(responses, "trigger with cookie")
    assert triggered["dag_id"] == RETRAIN and triggered["conf"] == {"model_name": MODEL}
    assert responses["trigger anonymous"]["status"] == 401


# --------------------------------------------------------------------------- content


def test_models_show_versions_aliases_and_lineage(setup, responses):
    data = body(responses, "viewer /mlops/api/models")
    assert data["tracking_uri"] == setup["mlflow_url"]
    (model,) = [m for m in data["models"] if m["name"] == MODEL]
    assert model["aliases"] == {"champion": "1", "challenger": "2"}
    assert model["trained_by_dag"] == PIPELINE
    assert [v["version"] for v in model["versions"]] == ["2", "1"]
    dataset_version = setup["snapshots"][-1]["version"]
    for version, (dag_id, run_id, _) in zip(["1", "2"], setup["runs"], strict=True):
        v = next(v for v in model["versions"] if v["version"] == version)
        assert v["status"] == "READY"
        assert v["dag_run"]["run_id"] == run_id and v["dag_run"]["state"] == "success"
        assert v["dag_run"]["url"].startswith(f"/dags/{dag_id}/runs/manual__")
        assert v["dataset_version"] == dataset_version
        (check,) = v["validation"]
        assert check["success"] is True and check["task_id"] == "validate_flights"
        assert v["mlflow_run_url"].startswith(f"{setup['mlflow_url']}/#/experiments/")
        assert v["mlflow_run_url"].endswith(f"/runs/{v['mlflow_run_id']}")
        assert v["evaluation"]["roc_auc"].startswith("0.7")
        assert "holdout_roc_auc" in v["metrics"]


def test_models_say_what_is_wrong_when_mlflow_cannot_be_read(responses):
    down = responses["models via mlflow_down"]
    assert down["status"] == 502
    assert "mlflow_down" in down["body"]["detail"] and "tracking server is up" in down["body"]["detail"]
    missing = responses["models via no_such_connection"]
    assert missing["status"] == 502
    assert (
        "no_such_connection" in missing["body"]["detail"] and "ui_mlflow_conn_id" in missing["body"]["detail"]
    )


def test_deployments_show_endpoint_version_health_and_rollout(setup, responses):
    (d,) = body(responses, "viewer /mlops/api/deployments")["deployments"]
    assert d["name"] == "ui-flights-delay" and d["model_name"] == MODEL
    # the challenger replaced the champion blue/green behind the same stable address
    assert d["version"] == "2" and d["previous_version"] == "1"
    assert d["endpoint"] == setup["endpoint"]
    assert d["health"] == "healthy"  # the real router and model server answer
    assert d["traffic"] == [{"version": "2", "percent": 100}]
    rollout = d["last_rollout"]
    assert rollout["task_id"] == "deploy" and rollout["state"] == "success"
    assert rollout["run_id"] == setup["runs"][-1][1] and rollout["version"] == "2"
    assert d["rollout_outcome"]["outcome"] == "succeeded" and d["rollout_outcome"]["version"] == "2"


def test_drift_is_one_timeline_per_model_with_checks_watched_windows_and_retraining_runs(setup, responses):
    (series,) = body(responses, "viewer /mlops/api/drift")["series"]
    assert series["model"] == MODEL and series["deployments"] == ["ui-flights-delay"]
    assert series["dag_ids"] == [PIPELINE]
    points = series["points"]  # in window order: January (check, watched), then July
    assert [(p["source"], p["is_drift"]) for p in points] == [
        ("check", False),
        ("watcher", False),
        ("check", True),
        ("watcher", True),
    ]
    calm_check, calm_window, drift_check, drift_window = points
    assert calm_check["window"]["start"] == "2013-01-01" and drift_check["window"]["start"] == "2013-07-01"
    # the watcher's windows span the flights' own times (the requests' event_time)
    assert calm_window["window"]["start"].startswith("2013-01")
    assert drift_window["window"]["start"].startswith("2013-07")
    assert [calm_window["model_version"], drift_window["model_version"]] == ["1", "2"]
    # Bonferroni over the 7 weather features; the check also tests the scores (prediction drift)
    for point, tests in ((drift_check, 8), (drift_window, 7)):
        assert "temp" in point["drifted_features"]
        assert point["threshold"] == pytest.approx(0.05 / tests)
        assert point["min_p_value"] < point["threshold"]
    assert calm_check["min_p_value"] > calm_check["threshold"]
    assert calm_check["triggered_runs"] == calm_window["triggered_runs"] == []
    assert [r["run_id"] for r in drift_check["triggered_runs"]] == [setup["retrain_run_id"]]
    assert [r["run_id"] for r in drift_window["triggered_runs"]] == [setup["watcher_retrain_run_id"]]
    assert drift_window["triggered_runs"][0]["dag_id"] == RETRAIN
    assert drift_check["run_id"] == setup["runs"][1][1]
    (event,) = setup["watcher_events"][1]
    assert drift_window["report"] == event["report"]
    assert drift_window["report_url"].startswith("/mlops/drift-window/ui-flights-delay/")


def test_a_watched_window_has_its_report_page(setup, responses):
    page = responses["viewer watched window"]
    assert page["status"] == 200, page
    assert "Drift found" in page["body"] and "ui-flights-delay" in page["body"]
    assert f"{MODEL} v2" in page["body"]
    assert 'src="' in page["body"] and responses["viewer watched window plot"]["status"] == 200
    assert responses["anonymous watched window"]["status"] == 401
    assert responses["nobody watched window"]["status"] == 403
    assert responses["viewer watched window outside"]["status"] == 404


def test_datasets_show_versions_rows_and_validation(setup, responses):
    (flights,) = body(responses, "viewer /mlops/api/datasets")["datasets"]
    assert flights["name"] == "flights"
    snapshot = setup["snapshots"][-1]
    (version,) = flights["versions"]
    assert version["version"] == snapshot["version"]
    assert version["rows"] == snapshot["rows"] > 1000
    assert version["interval_start"].startswith("2013-01-07")
    assert version["validation"]["success"] is True
    assert version["dag_id"] == PIPELINE


def test_page_embeds_its_configuration_safely(responses):
    page = responses["viewer /mlops/"]
    assert page["content_type"].startswith("text/html")
    config = json.loads(re.search(r'id="mlops-config"[^>]*>(.*?)</script>', page["body"], re.S).group(1))
    assert config == {"airflow_base": "", "retrain_dag": None, "rollback_dag": None}
    configured = responses["page with query"]["body"]
    assert '"retrain_dag": "ui_retrain"' in configured and '"rollback_dag": "ui_pipeline"' in configured
    assert responses["page with bad query"]["status"] == 400


def test_plugin_shows_mlops_in_the_navigation(responses):
    plugins = body(responses, "plugins")["plugins"]
    (mlops,) = [p for p in plugins if p["name"] == "mlops"]
    assert [a["url_prefix"] for a in mlops["fastapi_apps"]] == ["/mlops"]
    (view,) = mlops["external_views"]
    assert view["name"] == "MLOps" and view["href"] == "/mlops/" and view["destination"] == "nav"
    assert body(responses, "icon").startswith("<svg")
    assert responses["data docs missing"]["status"] == 404


def test_loading_the_plugin_imports_nothing_heavy(jobs):
    start_jobs(jobs)
    result = jobs.result("ui-light-import").check()
    assert result.output.strip().splitlines()[-1] == "[] mlops"


# --------------------------------------------------------------------------- in-process


def test_plugin_is_registered_by_entry_point():
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points["airflow.plugins"] == {"mlops": "airflow_mlops.plugins.mlops_view:MlopsPlugin"}


def test_render_page_escapes_the_configuration():
    from airflow_mlops.plugins.mlops_view import render_page

    page = render_page({"retrain_dag": "</script><script>alert(1)</script>"})
    assert "</script><script>alert(1)" not in page
    assert "\\u003c/script>" in page


def test_readers_tolerate_missing_and_broken_files(tmp_path):
    from airflow_mlops.plugins import sources

    assert sources.deployments(tmp_path) == []
    assert sources.drift_reports(tmp_path, {"dag"}) == []
    (tmp_path / "deployments" / "broken").mkdir(parents=True)
    (tmp_path / "deployments" / "broken" / "current.json").write_text("{not json")
    assert sources.deployments(tmp_path) == []
    report = tmp_path / "drift" / "dag" / "run" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"is_drift": True, "drift_score": 1.0, "threshold": 0.05, "features": {}}))
    assert sources.drift_reports(tmp_path, {"other_dag"}) == []  # not readable: not shown
    (point,) = sources.drift_reports(tmp_path, {"dag"})
    assert point["min_p_value"] is None and point["threshold"] == 0.05


def test_smallest_p_value_includes_the_prediction_test():
    from airflow_mlops.plugins.sources import _min_p

    report = {"features": {"a": {"p_val": 0.2}, "b": {"p_val": None}}, "prediction": {"p_val": 0.01}}
    assert _min_p(report) == 0.01
    assert _min_p({"features": {}, "prediction": None}) is None


def test_page_script_is_valid_javascript(tmp_path):
    """The page's script parses (node, when installed; the browser test runs it for real)."""
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    page = (REPO / "provider/airflow_mlops/plugins/static/mlops.html").read_text()
    script = page.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    (tmp_path / "page.js").write_text(script)
    subprocess.run([node, "--check", str(tmp_path / "page.js")], check=True)


def test_drift_series_group_by_model_then_deployment_then_dag():
    from airflow_mlops.plugins.sources import drift_series

    def point(source, window, **kw):
        base = {"source": source, "dag_id": None, "checked_at": "2026-01-01T00:00:00+00:00"}
        return {**base, "window": {"start": window}, **kw}

    found = [
        {"name": "serving", "endpoint": "http://127.0.0.1:9000", "model_name": "delays"},
        {"name": "adhoc", "endpoint": "http://127.0.0.1:9001", "model_name": None},
    ]
    points = [
        point("watcher", "2013-07-02", deployment="serving", model_name="delays"),
        point("check", "2013-07-01", dag_id="monthly", endpoint="http://127.0.0.1:9000"),
        point("check", "2013-02-01", dag_id="other", endpoint="http://127.0.0.1:1"),  # no deployment
        point("watcher", "2013-03-01", deployment="adhoc", model_name=None),
    ]
    series = {s["key"]: s for s in drift_series(points, found)}
    assert set(series) == {"model:delays", "dag:other", "deployment:adhoc"}
    delays = series["model:delays"]
    assert [p["window"]["start"] for p in delays["points"]] == ["2013-07-01", "2013-07-02"]  # data order
    assert delays["deployments"] == ["serving"] and delays["dag_ids"] == ["monthly"]
    assert delays["points"][0]["deployment"] == "serving"  # the check's endpoint named it
    assert series["dag:other"]["model"] is None and series["dag:other"]["deployments"] == []
