"""OpenLineage of register, set alias and the gate, run for real against the session's MLflow server.

The training run's model (``runs/<run_id>/model`` on the tracking server) is what register
reads; the model version it writes (``models/<name>/versions/<v>``, type MODEL) is what the
gate and the deployment read.
"""

from __future__ import annotations

from airflow_mlops import lineage
from airflow_mlops.operators.registry import (
    ChampionChallengerGateOperator,
    MlflowRegisterModelOperator,
    MlflowSetAliasOperator,
)
from conftest import start_server
from flights_models import FEATURES, LABEL


def start_jobs(jobs) -> None:
    start_server(jobs)


def _ids(datasets) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def _register(tracking, run_id, model_name, context) -> tuple[MlflowRegisterModelOperator, dict]:
    op = MlflowRegisterModelOperator(
        task_id="register",
        run_id=run_id,
        model_name=model_name,
        champion_alias=None,
        lineage={"dataset_version": "0123456789abcdef", "feature_views": {"weather_hourly": "abc"}},
    )
    return op, op.execute(context)


def _gate(model_name, holdout) -> ChampionChallengerGateOperator:
    evaluation = {"data_path": holdout, "features": FEATURES, "label": LABEL, "metric": "roc_auc"}
    return ChampionChallengerGateOperator(
        task_id="gate", model_name=model_name, evaluation=evaluation, deploy_task_ids="deploy", slices=[]
    )


def test_register_reads_the_runs_model_and_writes_a_model_version(tracking, runs, model_name, make_context):
    op, result = _register(tracking, runs["medium"], model_name, make_context())
    started = op.get_openlineage_facets_on_start()
    done = op.get_openlineage_facets_on_complete(None)
    run_model = lineage.run_model_dataset(tracking.url, runs["medium"])  # what the training task wrote
    assert _ids(started.inputs) == _ids(done.inputs) == [run_model]
    assert started.outputs == []
    (version,) = done.outputs
    assert (version.namespace, version.name) == (
        tracking.url,
        f"models/{model_name}/versions/{result['version']}",
    )
    assert version.facets["datasetType"].datasetType == "MODEL"
    assert version.facets["version"].datasetVersion == result["version"]
    facet = version.facets["airflowMlops_modelVersion"]
    assert (facet.name, facet.version, facet.runId) == (model_name, result["version"], runs["medium"])
    assert facet.aliases == ["challenger"] and facet.modelUri == f"models:/{model_name}/{result['version']}"
    assert facet.tags == {"dataset_version": "0123456789abcdef", "feature_views": '{"weather_hourly": "abc"}'}
    assert facet.url == f"{tracking.url}/#/models/{model_name}/versions/{result['version']}"


def test_set_alias_writes_the_version_it_points_at(tracking, runs, model_name, make_context):
    _register(tracking, runs["medium"], model_name, make_context())
    op = MlflowSetAliasOperator(task_id="promote", model_name=model_name, alias="champion", version="1")
    op.execute(make_context("promote"))
    (version,) = op.get_openlineage_facets_on_complete(None).outputs
    assert (version.namespace, version.name) == (tracking.url, f"models/{model_name}/versions/1")
    assert version.facets["airflowMlops_modelVersion"].aliases == ["champion"]


def test_gate_reads_holdout_and_versions_and_writes_the_new_champion(
    tracking, runs, model_name, make_context, holdout
):
    _register(tracking, runs["medium"], model_name, make_context())
    gate = _gate(model_name, holdout)
    assert gate.choose_branch(make_context("gate")) == ["deploy"]  # the first model becomes champion
    done = gate.get_openlineage_facets_on_complete(None)
    first = (tracking.url, f"models/{model_name}/versions/1")
    assert _ids(done.inputs) == [lineage.path_dataset(holdout), first]
    (champion,) = done.outputs
    assert (champion.namespace, champion.name) == first
    assert set(champion.facets["airflowMlops_modelVersion"].aliases) == {"challenger", "champion"}
    decided = done.run_facets["airflowMlops_gate"]
    assert (decided.outcome, decided.challengerVersion, decided.championVersion) == ("promote", "1", None)
    assert decided.comparisonRunId and decided.reason.startswith("first model")


def test_a_rejected_challenger_is_read_with_the_champion_and_nothing_is_written(
    tracking, runs, model_name, make_context, holdout
):
    _register(tracking, runs["strong"], model_name, make_context())
    tracking.client.set_registered_model_alias(model_name, "champion", "1")
    _register(tracking, runs["medium"], model_name, make_context())
    gate = _gate(model_name, holdout)
    assert gate.choose_branch(make_context("gate")) is None  # rejected: every downstream task skipped
    done = gate.get_openlineage_facets_on_complete(None)
    versions = [(tracking.url, f"models/{model_name}/versions/{v}") for v in ("2", "1")]
    assert _ids(done.inputs) == [lineage.path_dataset(holdout), *versions]
    assert done.outputs == []
    decided = done.run_facets["airflowMlops_gate"]
    assert (decided.outcome, decided.challengerVersion, decided.championVersion) == ("reject", "2", "1")
