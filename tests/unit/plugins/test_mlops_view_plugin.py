"""The MLOps view: its endpoints in Airflow's real API app, on real data, behind Airflow's auth.

The requests run in a fresh interpreter (``_jobs/ui_api.py``): a real MLflow server with a
registered model, ``dag.test()`` runs that write real dataset snapshots, validation results,
a drift report and deploy results, and a deployment state file written by ``SeldonHook``;
the DAG file also holds the DAGs the page's buttons find in the serialized DAGs (operators
``MlflowRegisterModelOperator`` / ``SeldonRollbackOperator``, with Params).
A second job checks that loading the plugin imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import pytest

REPO = Path(__file__).resolve().parents[3]
#: the serving and drift runtimes: the job deploys a real model and tests real drift
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
API = ["/mlops/api/models", "/mlops/api/deployments", "/mlops/api/drift", "/mlops/api/datasets"]
MODEL, PIPELINE, RETRAIN = "ui_flights_delay", "ui_pipeline", "ui_retrain"
DEPLOYMENT = "ui-flights-delay"
TRAIN, TRAIN_WEEKLY, ROLLBACK, BROKEN_DEPLOY = (
    "ui_train",
    "ui_train_weekly",
    "ui_rollback",
    "ui_deploy_broken",
)
OTHER_MODEL, OTHER_DEPLOYMENT = "ui_other_model", "ui-other"
PAGE = REPO / "provider/airflow_mlops/plugins/static/mlops.html"

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
    """The buttons POST the page's body to Airflow's REST API with the UI's cookie, then poll the run."""
    triggered = body(responses, "trigger with cookie")
    assert triggered["dag_id"] == TRAIN
    assert triggered["conf"] == {"month": "2013-03", "drift_check_offset_months": 2}
    assert triggered["logical_date"] is not None and triggered["note"] == "Triggered from the MLOps page"
    polled = body(responses, "poll with cookie")
    assert polled["dag_run_id"] == triggered["dag_run_id"] and polled["state"] == "queued"
    # Airflow checks the conf against the DAG's params: the page shows its answer
    refused = responses["trigger with bad param"]
    assert refused["status"] == 400 and "2099-01" in json.dumps(refused["body"])
    assert responses["trigger anonymous"]["status"] == 401


def test_a_browser_without_a_session_is_sent_to_the_login_page(responses):
    """HTML pages redirect to the auth manager's login URL with ``next``; the JSON API answers 401."""
    for page, path in (("page", "/mlops/?retrain_dag=ui_train"), ("window", "/mlops/drift-window/")):
        for who in ("logged out", "expired"):
            answer = responses[f"browser {who} {page}"]
            assert answer["status"] == 302, answer
            login, _, query = answer["location"].partition("?")
            assert login == "/auth/login"
            (next_url,) = parse_qs(query)["next"]
            assert next_url.startswith(f"http://testserver{path}")
    assert responses["browser logged out api"]["status"] == 401
    assert responses["browser logged out api"]["body"] == {"detail": "Not authenticated"}
    assert responses["browser expired api"]["status"] == 401
    assert responses["browser expired api"]["body"] == {"detail": "Token Expired"}
    # a script with a bad token is told so, even when it accepts HTML
    assert responses["script bad token page"]["status"] == 403


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


def test_retrain_and_rollback_targets_come_from_the_serialized_dags(responses):
    data = body(responses, "viewer /mlops/api/models")
    (model,) = [m for m in data["models"] if m["name"] == MODEL]
    retrain = model["retrain"]
    # the DAGs with an MlflowRegisterModelOperator(model_name=MODEL); the champion's DAG (its
    # airflow.dag_id tag: ui_pipeline) registers nothing, so the first is the default
    assert [d["dag_id"] for d in retrain["dags"]] == [TRAIN, TRAIN_WEEKLY]
    assert retrain["default"] == TRAIN and retrain["reason"] is None
    train = retrain["dags"][0]
    assert train["why"] == f"registers {MODEL} (register)" and train["url"] == f"/dags/{TRAIN}"
    month, offset = train["params"]
    assert month["name"] == "month" and month["default"] == "replay"
    assert month["description"] == "The month of flights to train on"
    assert month["schema"]["type"] == "string" and month["schema"]["enum"][:2] == ["replay", "2013-01"]
    assert month["schema"]["values_display"] == {"replay": "From the run's date (replay clock)"}
    assert offset == {
        "name": "drift_check_offset_months",
        "default": 1,
        "description": "Check drift on the month this many months later",
        "schema": {"type": "integer", "minimum": 1, "maximum": 11},
    }
    assert retrain["dags"][1]["params"] == []
    # the deployment serving the model, and the one DAG whose SeldonRollbackOperator rolls it back
    (rollback,) = model["rollbacks"]
    assert rollback["deployment"] == DEPLOYMENT and rollback["mode"] == "local"
    assert (rollback["version"], rollback["previous_version"], rollback["served_before"]) == ("2", "1", ["1"])
    (dag,) = rollback["dags"]
    assert dag["dag_id"] == ROLLBACK and dag["task_id"] == "rollback" and rollback["default"] == ROLLBACK
    assert dag["params"] == [
        {
            "name": "to_version",
            "default": None,
            "description": "Version to go back to",
            "schema": {"type": ["null", "string"]},
        }
    ]
    # the same target on the deployment's row
    (row,) = [
        d for d in body(responses, "viewer /mlops/api/deployments")["deployments"] if d["name"] == DEPLOYMENT
    ]
    assert row["rollback"] == rollback


def test_a_model_no_dag_registers_or_rolls_back_gets_no_target(responses):
    data = body(responses, "viewer /mlops/api/models")
    (other,) = [m for m in data["models"] if m["name"] == OTHER_MODEL]
    assert other["retrain"]["dags"] == [] and other["retrain"]["default"] is None
    assert f"MlflowRegisterModelOperator(model_name={OTHER_MODEL!r})" in other["retrain"]["reason"]
    (rollback,) = other["rollbacks"]  # its deployment exists; ui_rollback_elsewhere rolls back another
    assert (
        rollback["deployment"] == OTHER_DEPLOYMENT and rollback["dags"] == [] and rollback["default"] is None
    )
    assert f"SeldonRollbackOperator(deployment_name={OTHER_DEPLOYMENT!r})" in rollback["reason"]
    assert "docs/serving.md" in rollback["reason"]


def test_configured_dags_replace_the_ones_found(responses):
    data = body(responses, "models with query")  # ?retrain_dag=ui_train_weekly&rollback_dag=nope
    (model,) = [m for m in data["models"] if m["name"] == MODEL]
    assert [(d["dag_id"], d["why"]) for d in model["retrain"]["dags"]] == [
        (TRAIN_WEEKLY, "set by ?retrain_dag=")
    ]
    (other,) = [m for m in data["models"] if m["name"] == OTHER_MODEL]
    assert [d["dag_id"] for d in other["retrain"]["dags"]] == [TRAIN_WEEKLY]
    (rollback,) = model["rollbacks"]
    assert (
        rollback["dags"] == [] and "DAG 'nope' (set by ?rollback_dag=) does not exist" in rollback["reason"]
    )
    rows = body(responses, "deployments with query")["deployments"]
    assert all(d["rollback"]["dags"] == [] for d in rows)


def test_deployments_show_endpoint_version_health_and_rollout(setup, responses):
    found = {d["name"]: d for d in body(responses, "viewer /mlops/api/deployments")["deployments"]}
    d = found[DEPLOYMENT]
    assert d["model_name"] == MODEL
    # the challenger replaced the champion blue/green behind the same stable address
    assert d["version"] == "2" and d["previous_version"] == "1" and d["served_before"] == ["1"]
    assert d["endpoint"] == setup["endpoint"]
    assert d["health"] == "healthy"  # the real router and model server answer
    assert d["traffic"] == [{"version": "2", "percent": 100}]
    other = found[OTHER_DEPLOYMENT]
    assert (
        other["model_name"] == OTHER_MODEL and other["health"] == "stopped" and other["last_rollout"] is None
    )


def test_last_rollout_shows_the_outcome_of_its_own_run(setup):
    """A deploy that failed before recording anything is not shown with the previous rollout's outcome."""
    before = {d["name"]: d for d in setup["deployments before the failed deploy"]["body"]["deployments"]}
    rollout = before[DEPLOYMENT]["last_rollout"]
    assert (rollout["dag_id"], rollout["task_id"], rollout["state"]) == (PIPELINE, "deploy", "success")
    assert rollout["run_id"] == setup["runs"][-1][1] and rollout["version"] == "2"
    assert rollout["outcome"]["outcome"] == "succeeded" and rollout["outcome"]["version"] == "2"
    # then a deploy of another DAG fails (no such alias) before it records an outcome
    assert setup["broken_deploy_run"]["state"] == "failed"
    d = {d["name"]: d for d in setup["responses"]["viewer /mlops/api/deployments"]["body"]["deployments"]}[
        DEPLOYMENT
    ]
    rollout = d["last_rollout"]
    assert (rollout["dag_id"], rollout["run_id"]) == (BROKEN_DEPLOY, setup["broken_deploy_run"]["run_id"])
    assert rollout["state"] == "failed" and rollout["outcome"] is None
    # the deployment's own record still says what serves: the previous rollout, shown apart
    assert d["rollout_outcome"]["outcome"] == "succeeded" and d["rollout_outcome"]["version"] == "2"
    assert d["version"] == "2" and d["health"] == "healthy"


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
    found = {d["name"]: d for d in body(responses, "viewer /mlops/api/datasets")["datasets"]}
    flights = found["flights"]
    snapshot = setup["snapshots"][-1]
    (version,) = flights["versions"]
    assert version["version"] == snapshot["version"]
    assert version["rows"] == snapshot["rows"] > 1000
    assert version["interval_start"].startswith("2013-01-07")
    assert version["validation"]["success"] is True
    assert version["dag_id"] == PIPELINE and version["derived_from"] is None


def test_dataset_versions_are_newest_interval_first(responses):
    found = {d["name"]: d for d in body(responses, "viewer /mlops/api/datasets")["datasets"]}
    # ingested February, January, March
    starts = [v["interval_start"][:7] for v in found["ui_weather"]["versions"]]
    assert starts == ["2013-03", "2013-02", "2013-01"]
    assert [v["run_id"] for v in found["ui_weather"]["versions"]] == ["manual__3", "manual__2", "manual__1"]


def test_a_derived_table_says_what_it_came_from(setup, responses):
    found = {d["name"]: d for d in body(responses, "viewer /mlops/api/datasets")["datasets"]}
    (stats,) = found["ui_carrier_daily"]["versions"]
    assert stats["validation"] is None and stats["dag_id"] is None  # nothing of its own
    source = stats["derived_from"]
    assert source["dataset"] == "flights" and source["version"] == setup["snapshots"][-1]["version"]
    # the run that ingested the flights snapshot (the second run found the same content)
    assert source["dag_id"] == PIPELINE and source["run_id"] == setup["snapshots"][-1]["run_id"]
    assert source["validation"]["success"] is True and source["validation"]["task_id"] == "validate_flights"


def test_page_embeds_its_configuration_safely(responses):
    page = responses["viewer /mlops/"]
    assert page["content_type"].startswith("text/html")
    config = json.loads(re.search(r'id="mlops-config"[^>]*>(.*?)</script>', page["body"], re.S).group(1))
    assert config == {"airflow_base": "", "retrain_dag": None, "rollback_dag": None}
    configured = responses["page with query"]["body"]
    assert '"retrain_dag": "ui_retrain"' in configured and '"rollback_dag": "ui_pipeline"' in configured
    assert responses["page with bad query"]["status"] == 400


def test_page_confirms_in_the_page_not_with_dialogs(responses):
    """Airflow's iframe sandbox has no allow-modals / allow-popups / allow-top-navigation."""
    for page in (PAGE.read_text(), responses["viewer /mlops/"]["body"]):
        assert not re.search(r"\b(confirm|alert|prompt)\(", page)
        assert "_top" not in page and "window.open(" not in page
    page = PAGE.read_text()
    # the DOM the system test drives: the confirm button, the result with the run it started
    assert 'class: "primary confirm"' in page and 'id: "triggered-run"' in page
    assert all(f'"{a}"' in page for a in ("data-run-id", "data-dag-id", "data-state"))


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


def test_a_rollout_outcome_belongs_to_the_try_that_recorded_it():
    from airflow_mlops.plugins.sources import outcome_of_run

    try_ = {"start_date": "2026-01-01T10:00:00+00:00", "end_date": "2026-01-01T10:05:00+00:00"}
    at = datetime(2026, 1, 1, 10, 3, tzinfo=UTC).timestamp()
    recorded = {"outcome": "failed", "version": "3", "at": at}
    assert outcome_of_run(try_, recorded) is recorded
    # written by an earlier try (the previous rollout), or none at all
    assert outcome_of_run(try_, {**recorded, "at": at - 3600}) is None
    assert outcome_of_run(try_, {"outcome": "succeeded", "version": "2"}) is None
    assert outcome_of_run(try_, None) is None
    # a try still running: anything since it started is its own
    assert outcome_of_run({**try_, "end_date": None}, {**recorded, "at": at + 3600}) is not None


def test_a_rollout_outcome_that_names_its_task_try_is_paired_by_name_not_by_time():
    from airflow_mlops.plugins.sources import outcome_of_run

    try_ = {
        "dag_id": "d",
        "run_id": "r2",
        "task_id": "deploy",
        "try_number": 2,
        "start_date": "2026-01-01T10:00:00+00:00",
        "end_date": "2026-01-01T10:05:00+00:00",
    }
    inside = datetime(2026, 1, 1, 10, 3, tzinfo=UTC).timestamp()
    made_by = {"dag_id": "d", "run_id": "r2", "task_id": "deploy", "try_number": 2}
    recorded = {"outcome": "succeeded", "version": "3", "at": inside, "made_by": made_by}
    assert outcome_of_run(try_, recorded) is recorded
    # written inside the try's time, but by another run (a concurrent deploy) or another try
    assert outcome_of_run(try_, {**recorded, "made_by": {**made_by, "run_id": "r1"}}) is None
    assert outcome_of_run(try_, {**recorded, "made_by": {**made_by, "try_number": 1}}) is None


def test_button_targets_from_a_serialized_dag():
    """Params and operators read from the form Airflow serializes DAGs in; the champion's DAG first."""
    from airflow.sdk import DAG, Param
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow_mlops.operators.deploy import SeldonRollbackOperator
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator
    from airflow_mlops.plugins import sources

    start = datetime(2013, 1, 1, tzinfo=UTC)
    params = {
        "month": Param(
            "replay", type="string", enum=["replay", "2013-01"], values_display={"replay": "Replay"}
        ),
        "when": Param("2013-02-01T00:00:00+00:00", type="string", format="date-time"),
        "plain": 3,
    }
    dags = []
    for dag_id in ("a_trains", "b_trains"):
        with DAG(dag_id, schedule=None, start_date=start, params=params) as dag:
            MlflowRegisterModelOperator(task_id="register", model_name="m", run_id="x")
            MlflowRegisterModelOperator(task_id="register_other", model_name="other", run_id="x")
        dags.append(dag)
    with DAG("c_rolls_back", schedule=None, start_date=start) as dag:
        SeldonRollbackOperator(task_id="rollback", deployment_name="{{ params.name }}")  # templated: no match
    dags.append(dag)
    catalog = {d.dag_id: sources.catalog_entry(d.dag_id, DagSerialization.to_dict(d)) for d in dags}
    month, when, plain = catalog["a_trains"]["params"]
    assert month["schema"]["values_display"] == {"replay": "Replay"} and month["default"] == "replay"
    assert when["default"] == "2013-02-01T00:00:00+00:00" and when["schema"]["format"] == "date-time"
    assert plain == {"name": "plain", "default": 3, "description": None, "schema": {}}
    target = sources.retrain_target("m", catalog, trained_champion="b_trains")
    assert [d["dag_id"] for d in target["dags"]] == ["a_trains", "b_trains"] and target[
        "default"
    ] == "b_trains"
    assert target["dags"][0]["why"] == "registers m (register)"
    # no DAG registers it: the champion's DAG, when readable, is still offered
    assert [d["dag_id"] for d in sources.retrain_target("x", catalog, "a_trains")["dags"]] == ["a_trains"]
    assert sources.retrain_target("x", catalog, "gone")["dags"] == []
    rollback = sources.rollback_target({"name": "svc", "version": "2"}, catalog)
    assert rollback["dags"] == [] and "SeldonRollbackOperator(deployment_name='svc')" in rollback["reason"]
