"""The example DAG files in ``dags/``: they load, stay cheap to parse, and are wired together."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
#: what Airflow parses: the top-level files (``include/`` and ``feature_repo/`` are in .airflowignore)
DAG_FILES = sorted(DAGS_DIR.glob("*.py"))
EXPECTED_DAG_IDS = {"flights_delay_pipeline", "flights_delay_retrain", "flights_delay_rollback"}
HEAVY_DAG = '''\
"""A DAG file that imports MLflow at parse time: the guard must report it."""
from airflow.sdk import DAG

import mlflow  # noqa: F401

with DAG("imports_mlflow_at_parse_time", schedule=None) as dag:
    pass
'''


def _guard_job(jobs, name: str, dag_file: Path, dags_folder: Path) -> None:
    work = jobs.workdir(name)
    jobs.submit(
        name,
        [jobs.python, jobs.script("parse_guard"), dag_file, dags_folder, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home"),
    )


def start_jobs(jobs) -> None:
    for dag_file in DAG_FILES:
        _guard_job(jobs, f"parse-guard-{dag_file.stem}", dag_file, DAGS_DIR)
    heavy_dags = jobs.workdir("parse-guard-control") / "dags"
    heavy_dags.mkdir(exist_ok=True)
    (heavy_dags / "imports_mlflow.py").write_text(HEAVY_DAG)
    _guard_job(jobs, "parse-guard-control", heavy_dags / "imports_mlflow.py", heavy_dags)


def _guard_result(jobs, name: str) -> dict:
    jobs.result(name).check()
    return json.loads((jobs.workdir(name) / "result.json").read_text())


@pytest.fixture(scope="module")
def dagbag():
    """The DAG folder parsed the way the DAG processor and ``dag.test()`` parse a bundle."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS_DIR, bundle_path=DAGS_DIR, bundle_name="dags-folder")


def _assets(condition) -> list:
    """The Assets named anywhere in an asset condition (AssetAll/AssetAny nest)."""
    if hasattr(condition, "objects"):
        return [a for obj in condition.objects for a in _assets(obj)]
    return [condition] if hasattr(condition, "uri") else []


# --- loading ---------------------------------------------------------------------------


def test_dag_folder_loads_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == EXPECTED_DAG_IDS


def test_every_parsed_file_is_covered_by_the_import_guard(dagbag):
    parsed = {Path(path).resolve() for path in dagbag.file_last_changed}
    assert parsed == {p.resolve() for p in DAG_FILES}


def test_every_dag_serializes_for_the_scheduler(dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in dagbag.dags.items():
        restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        assert restored.dag_id == dag_id
        assert set(restored.task_ids) == set(dag.task_ids)


# --- nothing heavy at parse time ------------------------------------------------------


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_library_at_parse_time(jobs, dag_file):
    start_jobs(jobs)
    result = _guard_result(jobs, f"parse-guard-{dag_file.stem}")
    assert result["dag_ids"], f"{dag_file.name} defined no DAG when parsed by the guard"
    assert result["heavy"] == [], f"{dag_file.name} imports {result['heavy']} while being parsed"


def test_import_guard_reports_a_dag_that_imports_mlflow(jobs):
    start_jobs(jobs)
    result = _guard_result(jobs, "parse-guard-control")
    assert result["dag_ids"] == ["imports_mlflow_at_parse_time"]
    assert result["heavy"] == ["mlflow"]


# --- wiring ----------------------------------------------------------------------------


def test_retrain_dag_is_scheduled_on_the_watched_drift_of_the_deployment(dagbag):
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow_mlops.triggers.drift import EVENT_TIME, DriftEventTrigger

    pipeline = dagbag.dags["flights_delay_pipeline"]
    retrain = dagbag.dags["flights_delay_retrain"]
    (drift_asset,) = _assets(retrain.timetable.asset_condition)
    assert list(retrain.schedule) == [drift_asset]
    # the Asset's watcher tests what the pipeline's deployment serves
    (watcher,) = drift_asset.watchers
    assert isinstance(watcher.trigger, DriftEventTrigger)
    deploy = pipeline.get_task("deploy")
    assert watcher.trigger.deployment_name == deploy.deployment_name
    assert "build_training_set" in str(deploy.reference_path)  # the version's training data
    assert watcher.trigger.event_time_column == EVENT_TIME
    drift_task = pipeline.get_task("detect_drift")
    assert drift_task.event_time_column and drift_task.drift_asset is None  # the watcher announces
    # what the scheduler sees after serialization is the same asset, with its watcher
    restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(retrain))
    (restored_asset,) = _assets(restored.timetable.asset_condition)
    assert (restored_asset.name, restored_asset.uri) == (drift_asset.name, drift_asset.uri)


def test_pipeline_features_match_the_training_script():
    import sys

    sys.path.insert(0, str(DAGS_DIR))
    try:
        from include.flights_pipeline import FEATURES
    finally:
        sys.path.remove(str(DAGS_DIR))

    # the training script imports torch: read its FEATURES without executing it
    tree = ast.parse((DAGS_DIR / "include" / "train_flights_delay.py").read_text())
    assigned = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "FEATURES" for t in node.targets)
    ]
    assert len(assigned) == 1, "train_flights_delay.py must assign FEATURES exactly once at top level"
    assert FEATURES == ast.literal_eval(assigned[0])


def test_no_example_dag_can_make_a_run_without_tasks(dagbag):
    """
    Airflow gives a run no task instance for a task whose start date is after the run's
    logical date or whose end date is before it: a green run that did nothing. The UI's Trigger
    form stamps runs with the current time, so no example DAG or task may end, or start later.
    """
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for dag in dagbag.dags.values():
        assert dag.end_date is None, dag.dag_id
        for task in dag.tasks:
            assert task.end_date is None, (dag.dag_id, task.task_id)
            assert task.start_date is None or task.start_date <= now, (dag.dag_id, task.task_id)


@pytest.mark.parametrize("dag_id", ["flights_delay_pipeline", "flights_delay_retrain"])
def test_dags_on_nycflights13_pick_their_months_first_and_offer_a_month_in_the_trigger_form(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    pick = dag.get_task("pick_months")
    assert pick.upstream_task_ids == set()
    for task_id in ("ingest_flights", "ingest_weather", "feast_materialize"):
        assert "pick_months" in dag.get_task(task_id).upstream_task_ids, task_id
    schema = dag.params.get_param("month").schema
    assert schema["enum"][0] == "replay" and "2013-07" in schema["enum"]


@pytest.mark.parametrize("dag_id", ["flights_delay_pipeline", "flights_delay_retrain"])
def test_example_dags_retry_through_the_documented_outage_budget(dagbag, dag_id):
    """Retries sized to an outage (docs/reliability.md); a data validation failure fails at once."""
    from datetime import timedelta

    for task in dagbag.dags[dag_id].tasks:
        if task.task_id == "validate_flights":
            assert task.retries == 0
            continue
        assert task.retries == 3, task.task_id
        # the shortest waits Airflow picks (it adds up to as much again): 2 + 4 + 8 minutes
        waits = [
            min(task.retry_delay * task.retry_exponential_backoff**n, task.max_retry_delay)
            for n in range(task.retries)
        ]
        assert sum(waits, timedelta()) == timedelta(minutes=14), task.task_id
