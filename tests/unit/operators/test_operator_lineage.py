"""What each operator emits to OpenLineage (``get_openlineage_facets_on_start/_complete/_failure``).

Operators run ``execute`` in this process where that needs no runtime or server (ingest); the
others get the result their ``execute`` returns (the shape the runtime or server produces) or,
for validation, the per-expectation records of real Great Expectations runs
(``_jobs/ge_validate.py``). The registry operators run against a real MLflow server in
``tests/unit/registry/test_registry_lineage.py``; a real local deployment and the drift check
scoring through it in ``test_seldon_operators.py``.

Each test also checks an edge of the example's graph: the writer's output and the reader's input
carry the same ``(namespace, name)``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from airflow_mlops import lineage

START, END = "2013-06-01T00:00:00+00:00", "2013-07-01T00:00:00+00:00"
#: the shipped suite, as tests/unit/hooks/test_great_expectations_hook.py runs it (same job)
SUITE = Path(__file__).resolve().parents[3] / "dags" / "include" / "expectations" / "flights.json"


def start_jobs(jobs) -> None:
    work = jobs.workdir("ge-validate")
    jobs.submit(
        "ge-validate",
        [jobs.python, jobs.script("ge_validate"), SUITE, work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home"),
    )


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": "http://127.0.0.1:5999"})
    )
    return tmp_path / "data"


def _ids(datasets) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def _context() -> dict:
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1)
    return {"ti": ti, "dag": SimpleNamespace(dag_id="d"), "run_id": "r", "outlet_events": {}}


def _weather(rows: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "origin": ["EWR", "JFK", "LGA"][:rows],
            "time_hour": pd.date_range("2013-06-01", periods=rows, freq="h", tz="UTC"),
            "temp": [20.5, 21.0, 19.0][:rows],
        }
    )


# -- ingest --------------------------------------------------------------------------------------


def test_ingest_from_files_emits_the_folder_in_and_the_snapshot_dataset_out(tmp_path, data_dir):
    from airflow_mlops.operators.ingest import IngestOperator

    raw = tmp_path / "raw"
    raw.mkdir()
    _weather().to_csv(raw / "2013-06.csv", index=False)
    op = IngestOperator(
        task_id="ingest_weather",
        dataset="weather",
        source_path=f"file://{raw}/*.csv",
        timestamp_column="time_hour",
        interval_start=START,
        interval_end=END,
    )
    started = op.get_openlineage_facets_on_start()
    result = op.execute(_context())
    done = op.get_openlineage_facets_on_complete(None)

    weather = ("file", str((data_dir / "datasets" / "weather").resolve()))
    assert _ids(started.inputs) == _ids(done.inputs) == [("file", str(raw.resolve()))]
    assert _ids(started.outputs) == _ids(done.outputs) == [weather]
    out = done.outputs[0]
    assert out.facets["version"].datasetVersion == result["version"]
    assert [f.name for f in out.facets["schema"].fields] == ["origin", "time_hour", "temp"]
    assert out.facets["airflowMlops_snapshot"].rows == 3 == out.outputFacets["outputStatistics"].rowCount
    assert out.facets["airflowMlops_snapshot"].intervalStart == START
    # the reader of the snapshot (validate) and of current/ (a Feast source) name the same dataset
    assert lineage.path_dataset(result["path"]) == weather
    assert lineage.path_dataset(str(data_dir / "datasets" / "weather" / "current")) == weather


def load_example(start, end) -> pd.DataFrame:
    return _weather()


load_example.openlineage_source = "s3://landing/weather/2013.parquet"


def test_ingest_from_a_callable_names_what_the_callable_reads():
    from airflow_mlops.operators.ingest import IngestOperator

    named = IngestOperator(task_id="a", dataset="w", source=load_example, timestamp_column="time_hour")
    plain = IngestOperator(task_id="b", dataset="w", source=_weather, timestamp_column="time_hour")
    assert _ids(named.get_openlineage_facets_on_start().inputs) == [("s3://landing", "weather/2013.parquet")]
    assert _ids(plain.get_openlineage_facets_on_start().inputs) == [("python", f"{__name__}:_weather")]


def test_ingest_from_sql_names_the_tables_through_the_hooks_database_info(monkeypatch):
    """As the common.sql operators do; the database is not reachable here: names, no schemas."""
    from airflow_mlops.operators.ingest import IngestOperator

    monkeypatch.setenv("AIRFLOW_CONN_FLIGHTS_PG", "postgresql://reader:secret@127.0.0.1:1/warehouse")
    op = IngestOperator(
        task_id="ingest",
        dataset="flights",
        sql="SELECT f.* FROM flights f JOIN carriers c ON c.code = f.carrier WHERE f.month = 6",
        conn_id="flights_pg",
        timestamp_column="time_hour",
    )
    lineage_ = op.get_openlineage_facets_on_start()
    assert sorted(_ids(lineage_.inputs)) == [
        ("postgres://127.0.0.1:1", "warehouse.public.carriers"),
        ("postgres://127.0.0.1:1", "warehouse.public.flights"),
    ]
    assert "secret" not in json.dumps([str(d) for d in lineage_.inputs])
    assert "SELECT f.*" in lineage_.job_facets["sql"].query


# -- validate ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ge_results(jobs) -> dict:
    start_jobs(jobs)
    jobs.result("ge-validate").check()
    return json.loads((jobs.workdir("ge-validate") / "result.json").read_text())


def test_validation_reports_each_expectation_of_a_real_ge_run_on_the_snapshot(ge_results, tmp_path):
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.operators.validate import GreatExpectationsValidateOperator

    snapshot, _ = write_snapshot(
        _weather(), tmp_path / "datasets", "flights", pd.Timestamp(START), pd.Timestamp(END)
    )
    broken = ge_results["small_broken"]  # 40 rows, a null origin, a distance out of range
    op = GreatExpectationsValidateOperator(
        task_id="validate", data_path=snapshot.path, suite={"expectations": []}
    )
    assert _ids(op.get_openlineage_facets_on_start().inputs) == [lineage.path_dataset(snapshot.path)]
    op._validation = {**broken, "rows": 40, "data_path": snapshot.path, "path": snapshot.path}
    failed = op.get_openlineage_facets_on_failure(None)

    (read,) = failed.inputs
    assert (read.namespace, read.name) == ("file", str((tmp_path / "datasets" / "flights").resolve()))
    assert read.facets["version"].datasetVersion == snapshot.version  # the version validated
    assertions = read.inputFacets["dataQualityAssertions"].assertions
    assert [(a.assertion, a.column, a.success) for a in assertions] == [
        ("expect_column_values_to_not_be_null", "origin", False),
        ("expect_column_values_to_be_between", "distance", False),
        ("expect_column_values_to_not_be_null", "carrier", True),
    ]
    assert {a.severity for a in assertions} == {"error"}  # policy fail
    assert json.loads(assertions[1].expected) == {"min_value": 10, "max_value": 6000}
    metrics = read.inputFacets["dataQualityMetrics"]
    assert metrics.rowCount == 40
    assert metrics.columnMetrics["origin"].nullCount == 1 and metrics.columnMetrics["carrier"].nullCount == 0
    assert failed.outputs == []  # no quarantine: validation writes nothing


def test_a_real_passing_month_reports_every_expectation_of_the_shipped_suite(ge_results):
    january = ge_results["january"]
    expectations = json.loads(Path(SUITE).read_text())["expectations"]
    facets = lineage.data_quality_facets(january["results"], rows=27004, policy="fail")
    assertions = facets["dataQualityAssertions"].assertions
    assert len(assertions) == len(expectations) and all(a.success for a in assertions)
    assert sorted(a.assertion for a in assertions) == sorted(e["type"] for e in expectations)
    columns = sorted(a.column for a in assertions if a.column)
    assert columns == sorted(e["kwargs"]["column"] for e in expectations if "column" in e["kwargs"])


# -- features ------------------------------------------------------------------------------------


def _view(name: str, source: str, version: str = "abc123def456") -> dict:
    """A view as ``FeastHook.view_lineage`` describes it (the example's repo: sources read ``current/``)."""
    return {
        "name": name,
        "project": "flights",
        "source": source,
        "fields": [("temp", "Float64"), ("visib", "Float64")],
        "entities": ["origin"],
        "ttl_seconds": 10800,
        "version": version,
    }


def test_materialize_reads_the_snapshot_datasets_and_writes_the_feature_views(tmp_path, data_dir):
    from airflow_mlops.datasets import write_snapshot
    from airflow_mlops.operators.feast import FeastApplyOperator, FeastMaterializeOperator

    root = data_dir / "datasets"
    snapshot, _ = write_snapshot(_weather(), root, "weather", pd.Timestamp(START), pd.Timestamp(END))
    ingest_output = lineage.snapshot_output(snapshot.to_dict())
    views = [_view("weather_hourly", str(root / "weather" / "current"))]

    apply = FeastApplyOperator(task_id="feast_apply")
    assert apply.get_openlineage_facets_on_start() is None  # nothing known before the repo is read
    apply._views = views
    applied = apply.get_openlineage_facets_on_complete(None)
    materialize = FeastMaterializeOperator(task_id="feast_materialize", feature_views=["weather_hourly"])
    materialize._views, materialize._rows = views, {"weather_hourly": 2160}
    done = materialize.get_openlineage_facets_on_complete(None)

    for emitted in (applied, done):
        assert _ids(emitted.inputs) == [(ingest_output.namespace, ingest_output.name)]
        assert _ids(emitted.outputs) == [("feast://flights", "weather_hourly")]
        (view,) = emitted.outputs
        assert [(f.name, f.type) for f in view.facets["schema"].fields] == [
            ("temp", "Float64"),
            ("visib", "Float64"),
        ]
        assert view.facets["version"].datasetVersion == "abc123def456"  # the definition's hash
    assert done.outputs[0].outputFacets["outputStatistics"].rowCount == 2160
    # the @task that reads features (FeastHook.historical_features) names the same views
    assert _ids(done.outputs) == [lineage.feature_view_dataset("weather_hourly", "flights")]


def test_materialize_before_the_run_names_the_views_it_was_given(monkeypatch):
    from airflow_mlops.operators.feast import FeastMaterializeOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_FEAST_DEFAULT", json.dumps({"conn_type": "feast", "extra": {"project": "p"}})
    )
    op = FeastMaterializeOperator(task_id="m", feature_views=["a", "b"])
    assert _ids(op.get_openlineage_facets_on_start().outputs) == [("feast://p", "a"), ("feast://p", "b")]


# -- training ------------------------------------------------------------------------------------


def _horovod_result(run_id: str = "f00d") -> dict:
    """What ``runtimes/horovod_entry.py`` hands back to the operator."""
    return {
        "run_id": run_id,
        "experiment_id": "7",
        "model_uri": f"runs:/{run_id}/model",
        "artifact_path": "model",
        "metrics": {"holdout_roc_auc": 0.71, "loss": 0.52},
        "num_proc": 2,
        "device": "cpu",
    }


def test_training_reads_the_feature_tables_and_writes_a_model_dataset(tmp_path):
    from airflow_mlops.datasets import write_table
    from airflow_mlops.operators.train import HorovodTrainOperator

    table = tmp_path / "feature_tables" / "flights" / "0123456789abcdef"
    train_path = write_table(_weather(), table / "train.parquet")
    holdout_path = write_table(_weather(2), table / "holdout.parquet")
    op = HorovodTrainOperator(
        task_id="train",
        training_script="train.py",
        inputs={"train": train_path, "holdout": holdout_path},
        hyperparameters={"epochs": 6, "lr": 0.002},
    )
    started = op.get_openlineage_facets_on_start()
    assert started.outputs == []
    op._lineage_result = _horovod_result()
    done = op.get_openlineage_facets_on_complete(None)
    # the tables the build task wrote (write_table) are the training's inputs, schema included
    assert _ids(done.inputs) == [lineage.path_dataset(train_path), lineage.path_dataset(holdout_path)]
    assert [f.name for f in done.inputs[0].facets["schema"].fields] == ["origin", "time_hour", "temp"]
    (model,) = done.outputs
    assert (model.namespace, model.name) == ("http://127.0.0.1:5999", "runs/f00d/model")
    assert model.facets["datasetType"].datasetType == "MODEL"
    run = model.facets["airflowMlops_trainingRun"]
    assert run.metrics == {"holdout_roc_auc": 0.71, "loss": 0.52}
    assert run.hyperparameters == {"epochs": 6, "lr": 0.002} and run.numProc == 2
    assert run.url == "http://127.0.0.1:5999/#/experiments/7/runs/f00d"
    # what the register task reads (run_id + artifact path) is this dataset
    assert (model.namespace, model.name) == lineage.run_model_dataset("http://127.0.0.1:5999", "f00d")


def test_select_reads_every_candidate_and_writes_the_winner():
    from airflow_mlops.operators.select import SelectBestRunOperator

    op = SelectBestRunOperator(task_id="best", runs=[{"run_id": "a"}, {"run_id": "b"}], metric="auc")
    op._lineage_result = {**_horovod_result("b"), "params": {"lr": "0.01"}}
    done = op.get_openlineage_facets_on_complete(None)
    tracking = "http://127.0.0.1:5999"
    assert _ids(done.inputs) == [(tracking, "runs/a/model"), (tracking, "runs/b/model")]
    assert _ids(done.outputs) == [(tracking, "runs/b/model")]
    assert done.outputs[0].facets["airflowMlops_trainingRun"].hyperparameters == {"lr": "0.01"}


# -- serving and drift ---------------------------------------------------------------------------


def test_deploy_reads_the_model_version_and_writes_the_deployment(tmp_path):
    from airflow_mlops.operators.deploy import (
        SeldonDeployOperator,
        SeldonPromoteCanaryOperator,
        SeldonRollbackOperator,
    )

    reference = str(tmp_path / "train.parquet")
    _weather().to_parquet(reference)
    op = SeldonDeployOperator(
        task_id="deploy",
        deployment_name="flights-delay",
        model_name="flights_delay",
        reference_path=reference,
    )
    deployment = (f"seldon://{socket.gethostname()}", "flights-delay")
    assert _ids(op.get_openlineage_facets_on_start().outputs) == [deployment]
    op._lineage_result = {  # SeldonDeployOperator._result of a local blue/green deploy
        "deployment": "flights-delay",
        "mode": "local",
        "model_name": "flights_delay",
        "version": "2",
        "previous_version": "1",
        "endpoint": "http://127.0.0.1:40123",
        "predictors": [
            {"role": "main", "version": "2", "traffic": 100, "endpoint": "http://127.0.0.1:40200"}
        ],
        "changed": True,
        "strategy": "replace",
    }
    done = op.get_openlineage_facets_on_complete(None)
    assert _ids(done.inputs) == [
        lineage.model_version_dataset("http://127.0.0.1:5999", "flights_delay", "2"),
        lineage.path_dataset(reference),
    ]
    (out,) = done.outputs
    assert (out.namespace, out.name) == deployment
    facet = out.facets["airflowMlops_deployment"]
    assert (facet.version, facet.previousVersion, facet.strategy, facet.mode) == (
        "2",
        "1",
        "replace",
        "local",
    )
    assert facet.predictors == [{"role": "main", "version": "2", "traffic": 100}]
    promote = SeldonPromoteCanaryOperator(task_id="promote", deployment_name="flights-delay")
    assert _ids(promote.get_openlineage_facets_on_start().outputs) == [deployment]
    # a rollback serves an earlier version again: that version in, the same deployment out
    rollback = SeldonRollbackOperator(task_id="rollback", deployment_name="flights-delay")
    rollback._lineage_result = {**op._lineage_result, "version": "1", "previous_version": "2"}
    rolled = rollback.get_openlineage_facets_on_complete(None)
    assert _ids(rolled.inputs) == [
        lineage.model_version_dataset("http://127.0.0.1:5999", "flights_delay", "1")
    ]
    assert _ids(rolled.outputs) == [deployment]
    assert rolled.outputs[0].facets["airflowMlops_deployment"].version == "1"


def test_drift_check_reads_reference_window_and_deployment_and_writes_the_drift_assets_dataset(
    tmp_path, data_dir
):
    from airflow_mlops.operators.drift import DriftDetectOperator

    store = data_dir / "deployments" / "flights-delay"
    store.mkdir(parents=True)
    endpoint = "http://127.0.0.1:40123"
    (store / "current.json").write_text(
        json.dumps({"name": "flights-delay", "endpoint": endpoint, "predictors": []})
    )
    reference, window = str(tmp_path / "reference.parquet"), str(tmp_path / "window.parquet")
    _weather().to_parquet(reference)
    _weather(2).to_parquet(window)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"threshold": 0.05, "correction": "bonferroni", "tests": 8}))
    op = DriftDetectOperator(
        task_id="detect_drift",
        reference_path=reference,
        current_path=window,
        numeric_features=["temp"],
        endpoint=endpoint,
    )
    verdict = ("x-mlops://drift", "flights-delay")
    assert _ids(op.get_openlineage_facets_on_start().outputs) == [verdict]
    op._lineage_result = {
        "is_drift": True,
        "drift_score": 0.625,
        "drifted_features": ["temp", "prediction"],
        "window": {"start": START, "end": END},
        "endpoint": endpoint,
        "report": str(report),
    }
    done = op.get_openlineage_facets_on_complete(None)
    assert _ids(done.inputs) == [
        lineage.path_dataset(reference),
        lineage.path_dataset(window),
        lineage.deployment_dataset("flights-delay"),  # what the deploy task wrote
    ]
    (out,) = done.outputs
    assert (out.namespace, out.name) == verdict == lineage.drift_dataset("flights-delay")
    drift = out.facets["airflowMlops_drift"]
    assert (drift.isDrift, drift.driftScore, drift.tests, drift.correction) == (True, 0.625, 8, "bonferroni")
    assert (drift.windowStart, drift.windowEnd, drift.deployment) == (START, END, "flights-delay")


def test_lineage_that_cannot_be_built_never_fails_the_task(monkeypatch):
    from airflow_mlops.operators.train import HorovodTrainOperator

    op = HorovodTrainOperator(task_id="train", training_script="t.py")
    op._lineage_result = _horovod_result()
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT")  # the connection is gone: no tracking URI
    assert op.get_openlineage_facets_on_complete(None) is None
