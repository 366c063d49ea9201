"""The whole loop under the real scheduler, on real data, against a real MLflow server.

``airflow standalone`` (LocalExecutor, SQLite) runs the example DAGs as their users meet
them: nothing triggers the pipeline, the scheduler starts its latest month by itself and the
replay clock maps that month onto 2013 (``pick_months``); it trains, registers and deploys the
first model; the drift check scores the month six months later through the Seldon endpoint,
finds drift and announces it; the retraining DAG runs without a person. A month with a broken
column (triggered through the REST API) fails validation and registers nothing. Re-running
the register task creates no second version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import requests

pytestmark = [pytest.mark.system, pytest.mark.timeout(3000)]

PIPELINE, RETRAIN, BAD = "flights_delay_pipeline", "flights_delay_retrain", "flights_delay_bad_input"
JANUARY = ("2013-01-01T00:00:00Z", "2013-02-01T00:00:00Z")
MODEL = "flights_delay"


def mlflow_get(stack, path: str, **params):
    return requests.get(f"{stack.mlflow_url}/api/2.0/mlflow/{path}", params=params, timeout=30)


def versions_of(stack, name: str) -> list[dict]:
    response = mlflow_get(stack, "model-versions/search", filter=f"name='{name}'")
    response.raise_for_status()
    return response.json().get("model_versions", [])


def alias_version(stack, name: str, alias: str) -> str:
    response = mlflow_get(stack, "registered-models/alias", name=name, alias=alias)
    response.raise_for_status()
    return response.json()["model_version"]["version"]


@pytest.fixture(scope="module")
def runs(stack, scheduled_run):
    """The bad month, triggered through the REST API, and the run the scheduler started."""
    for dag_id in (PIPELINE, RETRAIN, BAD):
        stack.wait_for_dag(dag_id)
    bad = stack.trigger(BAD, *JANUARY)
    good = scheduled_run["dag_run_id"]
    return {
        "bad": (bad, stack.wait_run(BAD, bad, timeout=1200)),
        "good": (good, scheduled_run["state"]),
        "months": stack.xcom(PIPELINE, good, "pick_months"),
    }


def test_the_scheduler_runs_the_pipeline_on_a_month_of_2013_and_every_task_runs(stack, runs, scheduled_run):
    from airflow_mlops.replay import ReplayClock
    from include.flights_pipeline import CLOCK

    run_id, state = runs["good"]
    assert scheduled_run["run_type"] == "scheduled"
    assert state == "success", stack.task_states(PIPELINE, run_id)
    states = stack.task_states(PIPELINE, run_id)
    dag_tasks = {t["task_id"] for t in stack.api("GET", f"/dags/{PIPELINE}/tasks")["tasks"]}
    assert set(states) == dag_tasks and set(states.values()) == {"success"}, states
    # the run's data interval (a recent month) is replayed on the same month of 2013
    expected = CLOCK.interval(
        data_interval_start=scheduled_run["data_interval_start"],
        data_interval_end=scheduled_run["data_interval_end"],
    )
    assert isinstance(CLOCK, ReplayClock) and expected.start.year == 2013
    months = runs["months"]
    assert (months["start"], months["end"]) == (expected.start.isoformat(), expected.end.isoformat())
    ingest = stack.xcom(PIPELINE, run_id, "ingest_flights")
    assert pd.Timestamp(ingest["interval_start"]) == pd.Timestamp(months["start"])
    assert pd.Timestamp(ingest["interval_end"]) == pd.Timestamp(months["end"])
    log = stack.task_log(PIPELINE, run_id, "pick_months")
    assert f"This run works on {months['label']}" in log and "replay clock" in log


def test_bad_month_fails_validation_and_registers_nothing(stack, runs):
    run_id, state = runs["bad"]
    assert state == "failed"
    states = stack.task_states(BAD, run_id)
    assert states["ingest_flights"] == "success"
    assert states["validate_flights"] == "failed"
    for downstream in ("build_training_set", "train", "register", "deploy"):
        assert states[downstream] == "upstream_failed", (downstream, states)
    log = stack.task_log(BAD, run_id, "validate_flights")
    assert "Data validation failed" in log
    assert "arr_delay" in log
    # nothing reached the registry or the tracking server
    missing = mlflow_get(stack, "registered-models/get", name="flights_delay_bad_input")
    assert missing.status_code == 404
    assert versions_of(stack, "flights_delay_bad_input") == []


def test_pipeline_registers_champion_with_lineage(stack, runs):
    run_id, state = runs["good"]
    assert state == "success", stack.task_states(PIPELINE, run_id)
    ingest = stack.xcom(PIPELINE, run_id, "ingest_flights")
    train = stack.xcom(PIPELINE, run_id, "train")
    registered = stack.xcom(PIPELINE, run_id, "register")
    gate = stack.xcom(PIPELINE, run_id, "gate", key="comparison")
    assert ingest["rows"] > 20000  # every month of 2013 has 24,951 to 29,425 flights
    assert train["num_proc"] == 2
    assert 0.5 < train["metrics"]["holdout_roc_auc"] <= 1.0
    # the gate scores the *logged* model (MLflow pyfunc, as serving does) on the same
    # holdout: it must agree with what the training code measured on the live model
    challenger_auc = gate["challenger"]["overall"]["value"]
    assert challenger_auc == pytest.approx(train["metrics"]["holdout_roc_auc"], abs=1e-4)
    assert gate["outcome"] == "promote" and gate["previous_champion"] is None  # the first model
    assert {"origin", "carrier"} <= set(gate["challenger"]["slices"])
    mine = [v for v in versions_of(stack, MODEL) if v["run_id"] == train["run_id"]]
    assert len(mine) == 1
    version = mine[0]
    assert registered["version"] == version["version"]
    # the gate made it champion; by now the drift-triggered retraining may have moved the alias on
    assert int(alias_version(stack, MODEL, "champion")) >= int(registered["version"])
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["dataset_version"] == ingest["version"]
    assert tags["airflow.run_id"] == run_id
    applied = stack.xcom(PIPELINE, run_id, "feast_apply")
    assert json.loads(tags["feature_views"]) == applied["versions"]
    assert set(applied["versions"]) == {"weather_hourly", "carrier_daily"}
    assert json.loads(tags["validation"])["success"] is True
    assert tags["gate.outcome"] == "promote"
    run = mlflow_get(stack, "runs/get", run_id=train["run_id"]).json()["run"]
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run_tags["airflow.dag_id"] == PIPELINE and run_tags["airflow.task_id"] == "train"
    assert run_tags["dataset_version"] == ingest["version"]


def test_endpoint_serves_probabilities_for_real_rows(stack, runs):
    import mlflow

    run_id, _ = runs["good"]
    deployed = stack.xcom(PIPELINE, run_id, "deploy")
    table = stack.xcom(PIPELINE, run_id, "build_training_set")
    # imported here, not at module top: tests/unit isolates AIRFLOW_HOME before airflow loads
    from airflow_mlops.hooks.seldon import seldon_payload
    from include.flights_pipeline import FEATURES  # the example DAGs' folder is on sys.path

    rows = pd.read_parquet(table["holdout"]).head(3)
    body = seldon_payload(rows[FEATURES])  # a missing feature travels as JSON null
    # the endpoint may have moved on to the retrained version: ask the current deployment
    current = json.loads((stack.data_dir / "deployments" / "flights-delay" / "current.json").read_text())
    answer = requests.post(f"{current['endpoint']}/api/v1.0/predictions", json=body, timeout=30)
    assert answer.ok, answer.text
    probabilities = answer.json()["data"]["ndarray"]
    assert len(probabilities) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
    mlflow.set_tracking_uri(stack.mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{current['version']}")
    expected = model.predict(rows[FEATURES].astype("float64"))
    assert probabilities == pytest.approx(list(pd.DataFrame(expected).iloc[:, -1]), abs=1e-5)
    assert deployed["endpoint"].startswith("http://127.0.0.1:")


def test_drift_found_six_months_later_and_requests_logged(stack, runs):
    run_id, _ = runs["good"]
    drift = stack.xcom(PIPELINE, run_id, "detect_drift")
    recent = stack.xcom(PIPELINE, run_id, "build_recent_features")
    report = json.loads(Path(drift["report"]).read_text())
    assert report["is_drift"] is True and drift["is_drift"] is True
    assert "temp" in report["drifted_features"]
    # prediction drift: the model's scores on July against its scores on the training rows,
    # one more member of the corrected family (7 weather features + the prediction)
    assert report["prediction_column"] == "prediction" and report["prediction"]["p_val"] is not None
    assert report["tests"] == 8
    assert Path(drift["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.Timestamp(drift["window"]["start"]) == pd.Timestamp(runs["months"]["check_start"])
    # every row of the checked month went through the endpoint and landed in the inference log
    from airflow_mlops.inference_log import list_files, read

    log_dir = stack.data_dir / "deployments" / "flights-delay" / "inference_log"
    logged = read(list_files(log_dir))
    # ... with their flight's time (smoke predictions of deploys have none)
    assert logged["event_time"].notna().sum() >= recent["rows"]
    # the reference rows the check scored (5,000) were not logged: only a few smoke rows lack a time
    assert logged["event_time"].isna().sum() <= 50


def test_drift_event_triggers_retraining_that_registers_a_new_version(stack, runs):
    run_id, _ = runs["good"]
    first = stack.xcom(PIPELINE, run_id, "register")
    retrain = stack.wait_for_new_run(RETRAIN, timeout=300)
    state = stack.wait_run(RETRAIN, retrain["dag_run_id"], timeout=1800)
    assert state == "success", stack.task_states(RETRAIN, retrain["dag_run_id"])
    ingest = stack.xcom(RETRAIN, retrain["dag_run_id"], "ingest_flights")
    # trained on the drifted window: the month the pipeline's drift check sent through the endpoint
    assert pd.Timestamp(ingest["interval_start"]) == pd.Timestamp(runs["months"]["check_start"])
    second = stack.xcom(RETRAIN, retrain["dag_run_id"], "register")
    assert int(second["version"]) == int(first["version"]) + 1
    gate = stack.xcom(RETRAIN, retrain["dag_run_id"], "gate", key="comparison")
    # both versions scored on the same holdout of the drifted month
    assert gate["previous_champion"] == first["version"] and gate["champion"] is not None
    champion = alias_version(stack, MODEL, "champion")
    states = stack.task_states(RETRAIN, retrain["dag_run_id"])
    if gate["promote"]:
        assert champion == second["version"]
        assert states["deploy"] == "success"
        assert stack.xcom(RETRAIN, retrain["dag_run_id"], "deploy")["version"] == champion
    else:  # the challenger lost: champion and deployment stay as they were
        assert champion == first["version"]
        assert states["deploy"] == "skipped"


def test_rerunning_register_creates_no_second_version(stack, runs):
    run_id, _ = runs["good"]
    train = stack.xcom(PIPELINE, run_id, "train")
    before = len(versions_of(stack, MODEL))
    stack.api(
        "POST",
        f"/dags/{PIPELINE}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": ["register"],
            "only_failed": False,
            "dry_run": False,
            "include_downstream": False,
            "reset_dag_runs": True,
        },
    )
    assert stack.wait_run(PIPELINE, run_id, timeout=900) == "success"
    assert len(versions_of(stack, MODEL)) == before
    again = stack.xcom(PIPELINE, run_id, "register")
    assert again["created"] is False
    assert [v["version"] for v in versions_of(stack, MODEL) if v["run_id"] == train["run_id"]] == [
        again["version"]
    ]


def test_online_store_answers_with_the_rows_of_the_latest_materialization(stack, runs):
    """
    Feast's SQLite online store holds, per entity, the last source row of the interval
    materialized last (``[start, end)``: a row stamped at ``end`` belongs to the next interval).

    Checked once the drift-triggered retraining, which materializes the drifted month after the
    pipeline's month, is done; the latest interval is read from Feast's registry, so the check
    holds whichever run of the session materialized last.
    """
    from feast import FeatureStore, RepoConfig

    retrain = stack.wait_for_new_run(RETRAIN, timeout=300)
    assert stack.wait_run(RETRAIN, retrain["dag_run_id"], timeout=1800) == "success"
    feast_dir = stack.data_dir / "feast"
    store = FeatureStore(
        config=RepoConfig(
            project="flights",
            registry=str(feast_dir / "registry.db"),
            provider="local",
            online_store={"type": "sqlite", "path": str(feast_dir / "online_store.db")},
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
        )
    )
    retrained = stack.xcom(RETRAIN, retrain["dag_run_id"], "feast_materialize")
    assert pd.Timestamp(retrained["end"]) == pd.Timestamp(runs["months"]["check_end"])
    checks = [
        ("weather_hourly", "weather", "time_hour", "origin", ["JFK", "LGA"], ["temp", "visib"]),
        (
            "carrier_daily",
            "carrier_daily",
            "event_timestamp",
            "carrier",
            ["UA", "DL"],
            ["carrier_delayed_share"],
        ),
    ]
    for view, dataset, time_column, entity, keys, features in checks:
        start, end = (pd.Timestamp(t) for t in store.get_feature_view(view).materialization_intervals[-1])
        start, end = (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in (start, end))
        source = pd.read_parquet(stack.data_dir / "datasets" / dataset / "current")
        source = source[(source[time_column] >= start) & (source[time_column] < end)]
        online = store.get_online_features(
            features=[f"{view}:{name}" for name in features], entity_rows=[{entity: key} for key in keys]
        ).to_dict()
        for i, key in enumerate(keys):
            last = source[source[entity] == key].sort_values(time_column).iloc[-1]
            for name in features:
                assert online[name][i] == pytest.approx(last[name]), (view, key, name, start, end)
