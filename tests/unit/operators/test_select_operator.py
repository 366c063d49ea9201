"""``SelectBestRunOperator`` against a real MLflow tracking server, and the search wiring.

The server is the session's (``tests/support/mlflow_server.py``: ``mlflow server``, SQLite,
one worker), started as soon as collection ends. Candidate runs are real runs logged with an
``MlflowClient``; the operator runs through ``execute`` with a task-instance stand-in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))

from mlflow_server import shared_server  # noqa: E402

EXPERIMENT = "select_best"


def start_jobs(jobs) -> None:
    shared_server(jobs.workdir("mlflow-server"))


@pytest.fixture(scope="module")
def tracking(jobs):
    server = shared_server(jobs.workdir("mlflow-server")).wait_healthy(timeout=300)  # slow on a busy machine
    from mlflow import MlflowClient

    return server.url, MlflowClient(tracking_uri=server.url)


@pytest.fixture
def connection(tracking, monkeypatch):
    url, _ = tracking
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": url}))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)  # MlflowHook.mlflow writes them into os.environ


def _run(client, metrics: dict[str, float], status: str = "FINISHED", **params) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run_id = client.create_run(experiment_id).info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in params.items():
        client.log_param(run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "hpo", "manual__2026-01-02", "best", -1, 1

    def __init__(self) -> None:
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def _execute(**kwargs) -> tuple[dict, FakeTI]:
    from airflow_mlops.operators.select import SelectBestRunOperator

    ti = FakeTI()
    result = SelectBestRunOperator(task_id="best", **kwargs).execute({"ti": ti, "dag": SimpleNamespace()})
    return result, ti


def test_picks_the_finished_run_with_the_highest_metric_and_tags_it(tracking, connection):
    _, client = tracking
    low = _run(client, {"holdout_roc_auc": 0.61}, lr="0.001")
    high = _run(client, {"holdout_roc_auc": 0.74, "holdout_log_loss": 0.4}, lr="0.003")
    mid = _run(client, {"holdout_roc_auc": 0.70}, lr="0.01")
    running = _run(client, {"holdout_roc_auc": 0.99}, status="RUNNING")  # a try still going: no
    failed = _run(client, {"holdout_roc_auc": 0.98}, status="FAILED")
    no_metric = _run(client, {"train_loss": 0.3})
    # training results as a mapped HorovodTrainOperator returns them, plus plain ids
    runs = [{"run_id": low, "metrics": {}}, {"run_id": high}, None, {"run_id": running}]
    result, ti = _execute(runs=runs, run_ids=[mid, failed, no_metric, low], metric="holdout_roc_auc")

    assert result["run_id"] == high
    assert result["value"] == pytest.approx(0.74)
    assert result["model_uri"] == f"runs:/{high}/model"
    assert result["params"] == {"lr": "0.003"}
    assert result["metrics"]["holdout_log_loss"] == pytest.approx(0.4)
    assert [r["run_id"] for r in result["ranking"]] == [high, mid, low]
    tags = client.get_run(high).data.tags
    assert tags["best_of"] == "hpo/manual__2026-01-02"
    assert tags["best_of.metric"] == "max holdout_roc_auc"
    assert "best_of" not in client.get_run(mid).data.tags
    assert ti.xcoms["_link_MlflowRunLink"].endswith(f"/runs/{high}")


def test_mode_min_picks_the_lowest(tracking, connection):
    _, client = tracking
    ids = [_run(client, {"holdout_log_loss": v}) for v in (0.52, 0.41, 0.47)]
    result, _ = _execute(run_ids=ids, metric="holdout_log_loss", mode="min", tag_best=False)
    assert result["run_id"] == ids[1]
    assert "best_of" not in client.get_run(ids[1]).data.tags


def test_no_usable_run_names_the_metric(tracking, connection):
    _, client = tracking
    ids = [_run(client, {"train_loss": 0.3})]
    with pytest.raises(ValueError, match="metric 'holdout_roc_auc'"):
        _execute(run_ids=ids, metric="holdout_roc_auc")


def test_arguments_are_checked_at_construction():
    from airflow_mlops.operators.select import SelectBestRunOperator

    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        SelectBestRunOperator(task_id="b", run_ids=["x"], metric="m", mode="best")
    with pytest.raises(ValueError, match="give run_ids, runs"):
        SelectBestRunOperator(task_id="b", metric="m")
    op = SelectBestRunOperator(task_id="b", runs=[{"metrics": {}}], metric="m")
    with pytest.raises(TypeError, match="'run_id' key"):
        op.candidate_ids()


def test_a_search_maps_training_over_a_grid_and_selects_from_its_output(tmp_path):
    """``.expand(hyperparameters=param_grid(...))`` builds one mapped instance per point, and the
    DAG (mapped template field, XComArg into ``runs``) survives serialisation."""
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow_mlops.operators.select import SelectBestRunOperator
    from airflow_mlops.operators.train import HorovodTrainOperator
    from airflow_mlops.training import param_grid

    grid = param_grid({"lr": [0.001, 0.003], "hidden": [16, 32], "epochs": 3})
    with DAG("hpo", schedule=None) as dag:
        train = HorovodTrainOperator.partial(
            task_id="train", training_script=str(tmp_path / "t.py"), num_proc=1
        ).expand(hyperparameters=grid)
        best = SelectBestRunOperator(task_id="best", runs=train.output, metric="holdout_roc_auc")
    assert "hyperparameters" in HorovodTrainOperator.template_fields
    assert train.expand_input.value["hyperparameters"] == grid
    assert best.upstream_task_ids == {"train"}
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert restored.get_task("train").expand_input.value["hyperparameters"] == grid
    assert restored.get_task("best").upstream_task_ids == {"train"}
