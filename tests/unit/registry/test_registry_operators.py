"""Register, set alias and the champion/challenger gate against a real MLflow server and real models."""

from __future__ import annotations

import json

import pytest
from airflow_mlops.operators.registry import (
    ChampionChallengerGateOperator,
    MlflowRegisterModelOperator,
    MlflowSetAliasOperator,
    champion_approval,
)
from conftest import start_server
from flights_models import BAD_CARRIER, FEATURES, LABEL, SLICES


def start_jobs(jobs) -> None:
    start_server(jobs)


def _register(run_id, model_name, context, **kwargs):
    op = MlflowRegisterModelOperator(task_id="register", run_id=run_id, model_name=model_name, **kwargs)
    return op.execute(context)


def _evaluation(holdout: str) -> dict:
    return {
        "data_path": holdout,
        "features": FEATURES,
        "label": LABEL,
        "metric": "roc_auc",
        "dataset_version": "holdout-2013-03",
    }


def _gate(model_name, holdout, **kwargs) -> ChampionChallengerGateOperator:
    kwargs.setdefault("slices", SLICES)
    return ChampionChallengerGateOperator(
        task_id="gate",
        model_name=model_name,
        evaluation=_evaluation(holdout),
        deploy_task_ids="deploy",
        reject_task_ids="rejected",
        **kwargs,
    )


def _challenge(tracking, runs, model_name, make_context, champion_kind, challenger_kind):
    """``champion_kind`` registered and made champion, ``challenger_kind`` registered as challenger."""
    _register(runs[champion_kind], model_name, make_context())
    tracking.client.set_registered_model_alias(model_name, "champion", "1")
    _register(runs[challenger_kind], model_name, make_context())
    assert tracking.client.get_model_version_by_alias(model_name, "challenger").version == "2"


def _recorded(tracking, comparison) -> tuple[dict, dict]:
    run = tracking.client.get_run(comparison["mlflow_run_id"])
    path = tracking.client.download_artifacts(run.info.run_id, "champion_challenger.json")
    with open(path) as f:
        return run.data.metrics, json.load(f)


# -- register ------------------------------------------------------------------------------------


def test_a_retry_of_register_reuses_the_version_and_tags_its_lineage(
    tracking, runs, model_name, make_context
):
    lineage = {
        "dataset_version": "0123456789abcdef",
        "feature_views": {"weather_hourly": "v2", "carrier_daily": "v1"},
        "validation": {"success": True, "suite": "flights"},
    }
    first = _register(
        runs["strong"], model_name, make_context(), lineage=lineage, version_tags={"team": "ml"}
    )
    retry = _register(
        runs["strong"], model_name, make_context(), lineage=lineage, version_tags={"team": "ml"}
    )
    assert (first["version"], first["created"]) == ("1", True)
    assert (retry["version"], retry["created"]) == ("1", False)
    assert len(tracking.client.search_model_versions(f"name='{model_name}'")) == 1
    tags = tracking.client.get_model_version(model_name, "1").tags
    assert tags["dataset_version"] == "0123456789abcdef"
    assert json.loads(tags["feature_views"]) == {"carrier_daily": "v1", "weather_hourly": "v2"}
    assert json.loads(tags["validation"]) == {"success": True, "suite": "flights"}
    assert tags["training_dag_run"] == "flights_delay_pipeline/manual__2026-01-01"
    assert tags["team"] == "ml" and tags["airflow.run_id"] == "manual__2026-01-01"
    assert first["aliases"] == ["challenger", "champion"]  # no evaluation, first model


def test_unknown_lineage_keys_are_refused(tracking, runs, model_name, make_context):
    with pytest.raises(ValueError, match=r"lineage keys \['dataset_verison'\].*version_tags"):
        _register(runs["strong"], model_name, make_context(), lineage={"dataset_verison": "x"})


def test_register_rule_keeps_the_champion_against_a_worse_model(
    tracking, runs, model_name, make_context, holdout
):
    evaluation = _evaluation(holdout)
    first = _register(runs["strong"], model_name, make_context(), evaluation=evaluation)
    worse = _register(runs["shuffled"], model_name, make_context(), evaluation=evaluation)
    assert first["promoted"] and first["decision"]["reason"] == "first model"
    assert not worse["promoted"] and worse["champion_version"] == "1"
    assert worse["decision"]["roc_auc"] < worse["decision"]["champion_roc_auc"]
    assert float(tracking.client.get_model_version(model_name, "2").tags["eval.roc_auc"]) < 0.5


# -- set alias -----------------------------------------------------------------------------------


def test_set_alias_is_idempotent_and_copies_aliases(tracking, runs, model_name, make_context):
    _register(runs["medium"], model_name, make_context())
    _register(runs["strong"], model_name, make_context())
    ctx = make_context("promote")
    set_v2 = MlflowSetAliasOperator(task_id="promote", model_name=model_name, alias="champion", version="2")
    changed, again = set_v2.execute(ctx), set_v2.execute(ctx)
    assert (changed["previous_version"], changed["version"], changed["changed"]) == ("1", "2", True)
    assert (again["previous_version"], again["changed"]) == ("2", False)
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "2"
    copy = MlflowSetAliasOperator(
        task_id="keep", model_name=model_name, alias="previous", from_alias="champion"
    )
    assert copy.execute(ctx)["version"] == "2"
    missing = MlflowSetAliasOperator(task_id="x", model_name=model_name, alias="a", from_alias="nope")
    with pytest.raises(ValueError, match="has no alias 'nope'"):
        missing.execute(ctx)
    with pytest.raises(ValueError, match="exactly one of version and from_alias"):
        MlflowSetAliasOperator(task_id="y", model_name=model_name, alias="a")


# -- the gate ------------------------------------------------------------------------------------


def test_gate_makes_the_first_model_champion(tracking, runs, model_name, make_context, holdout):
    _register(runs["medium"], model_name, make_context())
    tracking.client.delete_registered_model_alias(model_name, "champion")
    ctx = make_context("gate")
    assert _gate(model_name, holdout).choose_branch(ctx) == ["deploy"]
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert ctx["ti"].xcoms["comparison"]["reason"].startswith("first model")


def test_gate_refuses_a_worse_model_and_records_why(tracking, runs, model_name, make_context, holdout):
    _challenge(tracking, runs, model_name, make_context, "strong", "shuffled")
    ctx = make_context("gate")
    assert _gate(model_name, holdout).choose_branch(ctx) == ["rejected"]
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "1"
    comparison = ctx["ti"].xcoms["comparison"]
    assert comparison["outcome"] == "reject" and not comparison["promote"]
    assert comparison["improvement"] < 0
    assert ctx["ti"].xcoms["champion_version"] == "1" and ctx["ti"].xcoms["challenger_version"] == "2"
    metrics, artifact = _recorded(tracking, comparison)
    assert artifact["outcome"] == "reject" and artifact["reason"] == comparison["reason"]
    assert artifact["dataset_version"] == "holdout-2013-03" and artifact["data_path"] == holdout
    # both versions scored on the same rows, overall and per slice
    assert artifact["challenger"]["overall"]["rows"] == artifact["champion"]["overall"]["rows"] > 20000
    assert set(artifact["challenger"]["slices"]) == {"carrier", "origin"}
    assert metrics["champion.roc_auc"] > 0.9 > 0.5 > metrics["challenger.roc_auc"]
    for key in ("challenger.roc_auc.carrier.UA", "champion.roc_auc.origin.JFK"):
        assert key in metrics
    tags = tracking.client.get_model_version(model_name, "2").tags
    assert tags["gate.outcome"] == "reject" and tags["gate.mlflow_run_id"] == comparison["mlflow_run_id"]


def test_gate_promotes_a_better_model_and_a_retry_still_deploys(
    tracking, runs, model_name, make_context, holdout
):
    _challenge(tracking, runs, model_name, make_context, "medium", "strong")
    ctx = make_context("gate")
    assert _gate(model_name, holdout).choose_branch(ctx) == ["deploy"]
    comparison = ctx["ti"].xcoms["comparison"]
    assert comparison["outcome"] == "promote" and comparison["slice_regressions"] == []
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert _recorded(tracking, comparison)[1]["promote"] is True
    retry = make_context("gate")
    assert _gate(model_name, holdout).choose_branch(retry) == ["deploy"]
    assert retry["ti"].xcoms["comparison"]["outcome"] == "already_champion"


def test_a_slice_regression_blocks_a_model_better_overall(tracking, runs, model_name, make_context, holdout):
    _challenge(tracking, runs, model_name, make_context, "medium", f"strong_bad_for_{BAD_CARRIER}")
    ctx = make_context("gate")
    assert _gate(model_name, holdout).choose_branch(ctx) == ["rejected"]
    comparison = ctx["ti"].xcoms["comparison"]
    assert comparison["beats_champion"] and comparison["improvement"] > 0.1
    [regression] = comparison["slice_regressions"]
    assert (regression["slice"], regression["value"]) == ("carrier", BAD_CARRIER)
    assert regression["regression"] > 0.5 and f"carrier={BAD_CARRIER}" in comparison["reason"]
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "1"
    # the same comparison without the slice rule promotes: the slice rule is what blocked it
    lenient = make_context("gate")
    assert _gate(model_name, holdout, max_slice_regression=None).choose_branch(lenient) == ["deploy"]
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "2"


def test_a_slice_regression_asks_for_approval_when_told_to(tracking, runs, model_name, make_context, holdout):
    _challenge(tracking, runs, model_name, make_context, "medium", f"strong_bad_for_{BAD_CARRIER}")
    gate = _gate(model_name, holdout, require_approval="on_slice_regression", approval_task_ids="approve")
    ctx = make_context("gate")
    assert gate.choose_branch(ctx) == ["approve"]
    assert ctx["ti"].xcoms["comparison"]["outcome"] == "approval"
    assert tracking.client.get_model_version_by_alias(model_name, "champion").version == "1"


def test_small_slices_are_not_judged(tracking, runs, model_name, make_context, holdout):
    _challenge(tracking, runs, model_name, make_context, "medium", f"strong_bad_for_{BAD_CARRIER}")
    ctx = make_context("gate")  # WN has 950 hold-out rows
    assert _gate(model_name, holdout, min_slice_rows=1000).choose_branch(ctx) == ["deploy"]


def test_gate_arguments_are_checked(holdout):
    with pytest.raises(ValueError, match="needs approval_task_ids"):
        _gate("m", holdout, require_approval="always")
    with pytest.raises(ValueError, match="require_approval must be one of"):
        _gate("m", holdout, require_approval="sometimes")


def test_champion_approval_wires_airflows_approval_operator(holdout):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import DAG

    with DAG("approval_wiring", schedule=None):
        gate = _gate("m", holdout, require_approval="always", approval_task_ids="approve_champion")
        deploy = EmptyOperator(task_id="deploy", trigger_rule="none_failed_min_one_success")
        approve, promote = champion_approval(gate, deploy=deploy)
        gate >> deploy
    assert isinstance(approve, ApprovalOperator) and approve.ignore_downstream_trigger_rules
    assert gate.downstream_task_ids == {"approve_champion", "deploy"}
    assert promote.upstream_task_ids == {"approve_champion"} and deploy.upstream_task_ids == {
        "gate",
        "promote_champion",
    }
    assert "key='challenger_version'" in promote.version and promote.alias == "champion"
    assert "['reason']" in approve.body
    with DAG("approval_misconfigured", schedule=None):
        gate = _gate("m", holdout, require_approval="always", approval_task_ids="approve_champion")
        with pytest.raises(ValueError, match="trigger_rule='none_failed_min_one_success'"):
            champion_approval(gate, deploy=EmptyOperator(task_id="deploy"))
        with pytest.raises(ValueError, match="add 'ask'"):
            champion_approval(gate, task_id="ask")


def test_a_model_name_with_a_quote_is_found_by_every_search(tracking, runs, model_name, make_context):
    """MLflow allows ``'`` in model names; its filters have no escapes (see ``filter_value``)."""
    from airflow_mlops.hooks.mlflow import MlflowHook, filter_value
    from airflow_mlops.plugins.sources import MlflowRest

    name = f"o'hare {model_name}"
    first = _register(runs["strong"], name, make_context())
    retry = _register(runs["strong"], name, make_context())  # finds the version of that run
    assert retry["version"] == first["version"] == "1"
    assert len(tracking.client.search_model_versions(f"name={filter_value(name)}")) == 1
    found = MlflowHook().find_new_version(name, alias=None, after_version=0)
    assert found and found["version"] == "1"
    assert [v["version"] for v in MlflowRest(tracking.url).versions(name)] == ["1"]
    with pytest.raises(ValueError, match="both kinds of quotes"):
        filter_value("""it's "x\"""")
