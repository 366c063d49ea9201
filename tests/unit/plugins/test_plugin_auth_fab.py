"""Every route of the plugin under a real auth manager that restricts DAGs: FAB's.

The simple auth manager cannot give a user some DAGs only, so the per-DAG rules are exercised
here with ``FabAuthManager`` (``apache-airflow-providers-fab``): a user whose FAB role reads
``alpha_pipeline`` only, a user reading no DAG and an admin, logged in through FAB's
``POST /auth/token``. The job (``_jobs/plugin_auth_fab.py``) makes two DAGs' real artifacts with
``dag.test()`` (snapshots, Great Expectations validations with Data Docs sites, deployment
records, drift reports, mapped too), watched windows, registered models in a real MLflow server,
and things no DAG made; then requests every route of the app mounted at ``/mlops`` — enumerated
from the API server's app, so a new route is requested too — with parameters naming each DAG's
artifacts.

The pure rules (who deployed a deployment, what a scope shows, the owner of a report's folder)
are tested in-process below; the owner of a resolved Data Docs path in ``test_data_docs_plugin.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
JOB = "plugin-auth-fab"
#: what only beta's DAG made, and what no DAG made: alice may see neither
BETA = ("beta_pipeline", "beta_model", "beta-serving", "beta_flights")
LOOSE = ("loose_model", "loose-serving", "loose_flights")
ALPHA = ("alpha_pipeline", "alpha_model", "alpha-serving", "alpha_flights")
#: the JSON routes and what each must name for alice (alpha's) and for the admin (everyone's)
API = {
    "mlops_models": ("alpha_model", "shared_model"),
    "mlops_deployments": ("alpha-serving",),
    "mlops_drift": ("alpha_pipeline", "alpha-serving"),
    "mlops_datasets": ("alpha_flights",),
}


def start_jobs(jobs) -> None:
    if importlib_missing("airflow.providers.fab"):
        return
    work = jobs.workdir(JOB)
    jobs.submit(
        JOB,
        [jobs.python, jobs.script("plugin_auth_fab"), work, work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
            AIRFLOW__CORE__AUTH_MANAGER=FAB,
            # FAB signs its tokens with HS512: a 64-byte key
            AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production-" + "x" * 32,
        ),
        timeout=600,
    )


def importlib_missing(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


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
def result(jobs) -> dict:
    if importlib_missing("airflow.providers.fab"):
        pytest.fail("apache-airflow-providers-fab is not installed: it is in docker/airflow/requirements.txt")
    start_jobs(jobs)
    work = jobs.workdir(JOB)
    try:
        jobs.result(JOB).check()
        return json.loads((work / "result.json").read_text())
    finally:
        stop_leftover_mlflow(work)


def answers(result: dict, user: str, **match) -> list[dict]:
    return [
        r for r in result["responses"] if r["user"] == user and all(r.get(k) == v for k, v in match.items())
    ]


def one(result: dict, user: str, route: str, owner=None) -> dict:
    (found,) = answers(result, user, route=route, owner=owner)
    return found


def json_of(answer: dict):
    assert answer["status"] == 200, answer
    return json.loads(answer["text"])


def names_in(answer: dict, markers) -> list[str]:
    return [m for m in markers if m in answer["text"]]


# --------------------------------------------------------------------------- the set-up


def test_the_auth_manager_is_fab_and_every_route_was_requested(result):
    assert result["auth_manager"] == FAB
    assert result["unfilled"] == []
    requested = {r["template"] for r in result["responses"] if "template" in r}
    assert requested == set(result["routes"])
    # the routes the plugin has today are among them (the enumeration found the app's routes)
    for route in ("/api/models", "/data-docs/{path:path}", "/drift-window/{deployment}/{window_id}"):
        assert route in requested
    assert len(requested) >= 14
    # each route naming a DAG's artifacts was requested with alpha's and with beta's
    for template in requested:
        owners = {r["owner"] for r in result["responses"] if r.get("template") == template}
        assert owners == {None} or {"alpha", "beta"} <= owners, template


# --------------------------------------------------------------------------- every route


def test_the_user_allowed_one_dag_gets_that_dags_data_only(result):
    enumerated = [r for r in answers(result, "alice") if "template" in r]
    for answer in enumerated:
        where = (answer["path"], answer["status"], answer["text"][:200])
        if answer["owner"] in ("beta", "loose"):
            assert answer["status"] == 403, where
            assert not answer["png"] and answer["size"] < 200, where
        else:
            assert answer["status"] == 200, where
            assert names_in(answer, BETA + LOOSE) == [], where
            assert result["runs"]["beta"] not in answer["text"], where


def test_the_admin_gets_every_dags_data(result):
    for answer in (r for r in answers(result, "admin") if "template" in r):
        assert answer["status"] == 200, (answer["path"], answer["text"][:200])
    for route in API:
        assert names_in(one(result, "admin", route), ALPHA) != [], route
        assert names_in(one(result, "admin", route), BETA) != [], route
        assert names_in(one(result, "admin", route), LOOSE) != [], route


def test_a_user_reading_no_dag_gets_only_the_public_assets(result):
    for answer in (r for r in answers(result, "norah") if "template" in r):
        if answer["route"] in ("data_docs_vendor", "mlops_icon"):  # any authenticated caller
            assert answer["status"] == 200, answer["path"]
        else:
            assert answer["status"] == 403, answer["path"]


@pytest.mark.parametrize("route", sorted(API))
def test_json_routes_name_the_readable_dags_things(result, route):
    alice = one(result, "alice", route)
    assert names_in(alice, API[route]) == list(API[route])


def test_models_show_only_versions_readable_dags_trained(result):
    models = {m["name"]: m for m in json_of(one(result, "alice", "mlops_models"))["models"]}
    assert sorted(models) == ["alpha_model", "shared_model"]
    shared = models["shared_model"]
    # v2 (the champion) was trained by beta: left out, with its alias
    assert [v["version"] for v in shared["versions"]] == ["1"]
    assert shared["aliases"] == {"challenger": "1"} and shared["trained_by_dag"] is None
    assert {v["dag_id"] for m in models.values() for v in m["versions"]} == {"alpha_pipeline"}
    admin = {m["name"]: m for m in json_of(one(result, "admin", "mlops_models"))["models"]}
    assert sorted(admin) == ["alpha_model", "beta_model", "loose_model", "shared_model"]
    assert [v["version"] for v in admin["shared_model"]["versions"]] == ["2", "1"]
    assert admin["shared_model"]["trained_by_dag"] == "beta_pipeline"


def test_deployments_show_only_those_readable_dags_rolled_out(result):
    alice = json_of(one(result, "alice", "mlops_deployments"))["deployments"]
    assert [d["name"] for d in alice] == ["alpha-serving"]
    assert alice[0]["last_rollout"]["dag_id"] == "alpha_pipeline"
    admin = json_of(one(result, "admin", "mlops_deployments"))["deployments"]
    assert sorted(d["name"] for d in admin) == ["alpha-serving", "beta-serving", "loose-serving"]


def test_drift_shows_readable_checks_and_the_watchers_of_readable_deployments(result):
    series = json_of(one(result, "alice", "mlops_drift"))["series"]
    assert [s["key"] for s in series] == ["model:alpha_model"]
    points = series[0]["points"]
    assert {p["source"] for p in points} == {"check", "watcher"}
    for point in points:
        assert point["dag_id"] in (None, "alpha_pipeline") and point["deployment"] == "alpha-serving"
        # alpha's check and alpha's window also started beta's run: not for alice to see
        assert {r["dag_id"] for r in point["triggered_runs"]} <= {"alpha_pipeline"}
    window = next(p for p in points if p.get("window_id"))
    assert [r["dag_id"] for r in window["triggered_runs"]] == ["alpha_pipeline"]
    admin = json_of(one(result, "admin", "mlops_drift"))["series"]
    assert sorted(s["key"] for s in admin) == ["model:alpha_model", "model:beta_model", "model:loose_model"]
    check = next(
        p for s in admin for p in s["points"] if p.get("task_id") == "detect_drift" and "alpha" in p["dag_id"]
    )
    assert [r["dag_id"] for r in check["triggered_runs"]] == ["beta_pipeline"]


def test_datasets_show_only_versions_readable_dags_ingested(result):
    alice = json_of(one(result, "alice", "mlops_datasets"))["datasets"]
    assert [d["name"] for d in alice] == ["alpha_flights"]
    assert alice[0]["versions"][0]["version"] == result["datasets"]["alpha"]
    admin = json_of(one(result, "admin", "mlops_datasets"))["datasets"]
    assert sorted(d["name"] for d in admin) == ["alpha_flights", "beta_flights", "loose_flights"]


def test_pages_of_the_readable_dag_show_its_reports(result):
    for route in ("drift_report", "drift_report_mapped"):
        page = one(result, "alice", route, "alpha")
        assert page["status"] == 200 and "alpha check" in page["text"], route
    window = one(result, "alice", "drift_window", "alpha")
    assert window["status"] == 200 and "alpha-serving watcher" in window["text"]
    docs = one(result, "alice", "data_docs", "alpha")
    assert docs["status"] == 200 and "<html" in docs["text"].lower()
    for route in ("drift_report_plot", "drift_report_mapped_plot", "drift_window_plot"):
        assert one(result, "alice", route, "alpha")["png"], route


# --------------------------------------------------------------------------- Data Docs across DAGs


@pytest.mark.parametrize("how", ["traversal", "symlink"])
def test_data_docs_of_another_dag_are_refused_whatever_the_path(result, how):
    """``alpha_pipeline/%2E%2E/beta_pipeline/...`` (or a link in alpha's folder) is beta's file."""
    alice = one(result, "alice", how, "beta")
    assert alice["status"] == 403, alice
    assert "beta_pipeline" in json.loads(alice["text"])["detail"]
    admin = one(result, "admin", how, "beta")
    assert admin["status"] == 200 and "<html" in admin["text"].lower()


def test_whether_another_dags_file_exists_is_not_told(result):
    assert one(result, "alice", "traversal missing", "beta")["status"] == 403
    assert one(result, "admin", "traversal missing", "beta")["status"] == 404
    for user in ("alice", "admin"):
        assert one(result, user, "out of data docs")["status"] == 404


# --------------------------------------------------------------------------- the rules, in-process


def test_a_report_in_another_folder_needs_access_to_its_owner(tmp_path, monkeypatch):
    from airflow_mlops.plugins import drift_report

    calls = []
    monkeypatch.setattr(drift_report, "drift_root", lambda: tmp_path / "drift")
    monkeypatch.setattr(drift_report, "_authorize", lambda user, dag_id: calls.append(("dag", dag_id)))
    monkeypatch.setattr(drift_report, "authorize_deployment", lambda user, name: calls.append(("dep", name)))
    root = tmp_path / "drift"
    for folder in ("dag_a/run/task", "dag_b/run/task", "watchers/dep/w1"):
        (root / folder).mkdir(parents=True)
    drift_report.authorize_report_folder("u", "dag_a", root / "dag_a/run/task")
    assert calls == []
    drift_report.authorize_report_folder("u", "dag_a", root / "dag_b/run/task")
    drift_report.authorize_report_folder("u", "dag_a", root / "watchers/dep/w1")
    assert calls == [("dag", "dag_b"), ("dep", "dep")]


def _deployment(name: str, made_by: str | None = None, mode: str = "local") -> dict:
    outcome = {"outcome": "succeeded", "made_by": {"dag_id": made_by, "run_id": "r", "task_id": "t"}}
    return {"name": name, "mode": mode, "namespace": None, "rollout_outcome": outcome if made_by else None}


def test_deployers_are_the_last_rollout_the_deploy_results_and_the_deploy_tasks():
    from airflow_mlops.plugins.auth import deployers

    results = [
        {"dag_id": "x_dag", "value": {"deployment": "dep", "mode": "local"}},
        {"dag_id": "k_dag", "value": {"deployment": "dep", "mode": "kubernetes", "namespace": "ns"}},
        {"dag_id": "o_dag", "value": {"deployment": "other"}},
        {"dag_id": "n_dag", "value": "not a dict"},
    ]
    catalog = {
        "c_dag": {
            "tasks": [{"task_id": "rb", "module": "airflow_mlops.operators.deploy", "deployment_name": "dep"}]
        },
        "d_dag": {"tasks": [{"task_id": "t", "module": "somewhere.else", "deployment_name": "dep"}]},
    }
    assert deployers(_deployment("dep", "m_dag"), results, catalog) == {"m_dag", "x_dag", "c_dag"}
    kube = {"name": "dep", "mode": "kubernetes", "namespace": "ns"}
    assert deployers(kube, results, catalog) == {"k_dag", "c_dag"}
    assert deployers(_deployment("nobody"), results, catalog) == set()


def test_a_scope_shows_what_a_readable_dag_made_and_the_unowned_to_readers_of_every_dag():
    from airflow_mlops.plugins.auth import DagScope

    alpha = DagScope(frozenset({"alpha"}))
    assert alpha.shows(["alpha", "beta"]) and not alpha.shows(["beta"]) and not alpha.shows([])
    assert not alpha.reads(None) and alpha.reads("alpha")
    everything = DagScope(frozenset({"alpha"}), every_dag=True)
    assert everything.shows([]) and everything.shows(["gone"])


def test_visible_deployments_hide_other_dags_rollouts():
    from airflow_mlops.plugins.auth import DagScope
    from airflow_mlops.plugins.mlops_view import hide_other_rollouts, visible_deployments

    found = [_deployment("mine", "alpha"), _deployment("theirs", "beta"), _deployment("shared", "beta")]
    results = [{"dag_id": "alpha", "value": {"deployment": "shared"}}]
    scope = DagScope(frozenset({"alpha"}))
    shown = visible_deployments(found, scope, results, {})
    assert [d["name"] for d in shown] == ["mine", "shared"]
    assert visible_deployments(found, DagScope(frozenset(), every_dag=True), [], {}) == found
    hide_other_rollouts(shown, scope)
    # the last rollout of "shared" was beta's: its outcome stays, the run that made it does not
    assert shown[1]["rollout_outcome"] == {"outcome": "succeeded"}
    assert shown[0]["rollout_outcome"]["made_by"]["dag_id"] == "alpha"


def test_visible_datasets_follow_ingestion_and_derivation():
    from airflow_mlops.plugins.auth import DagScope
    from airflow_mlops.plugins.mlops_view import visible_datasets

    def version(v, dag=None, derived=None):
        return {"version": v, "dag_id": dag, "run_id": dag and f"run-{dag}", "derived_from": derived}

    def source(v, dag):
        return {"dataset": "raw", "version": v, "dag_id": dag, "run_id": f"run-{dag}", "validation": None}

    found = [
        {"name": "raw", "versions": [version("r1", "alpha"), version("r2", "beta"), version("r3")]},
        {
            "name": "stats",
            "versions": [
                version("s1", derived=source("r1", "alpha")),
                version("s2", derived=source("r2", "beta")),
            ],
        },
        {"name": "beta_only", "versions": [version("b1", "beta")]},
    ]
    shown = visible_datasets(json.loads(json.dumps(found)), DagScope(frozenset({"alpha"})))
    assert [(d["name"], [v["version"] for v in d["versions"]]) for d in shown] == [
        ("raw", ["r1"]),
        ("stats", ["s1"]),
    ]
    every = visible_datasets(json.loads(json.dumps(found)), DagScope(frozenset({"alpha"}), every_dag=True))
    assert [v["version"] for d in every for v in d["versions"]] == ["r1", "r2", "r3", "s1", "s2", "b1"]
    # beta's runs stay hidden from a reader of every DAG that may not read beta (a deleted DAG)
    assert (
        every[0]["versions"][1]["dag_id"] is None
        and every[1]["versions"][1]["derived_from"]["run_id"] is None
    )
