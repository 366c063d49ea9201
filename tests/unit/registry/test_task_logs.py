"""The task logs of the registry operators, as Airflow 3 writes them, against a real MLflow server.

The operators run in a fresh interpreter set up as Airflow's task runner sets up a task process
(``_jobs/task_logs.py``): JSON logging, and stdout/stderr read line by line into the log —
**stderr at ERROR level**, as Airflow's supervisor does. MLflow prints its routine notices
("Successfully registered model", "Created version ...", its own log records) to stderr, so a
successful registration used to show errors and bury what the task did. Here: nothing at ERROR,
and the first line of each task's log is its one-line summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start_server
from flights_models import FEATURES, LABEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_jobs"))
from task_logs import read_log  # noqa: E402

REGISTER = "airflow_mlops.operators.registry:MlflowRegisterModelOperator"
GATE = "airflow_mlops.operators.registry:ChampionChallengerGateOperator"
SELECT = "airflow_mlops.operators.select:SelectBestRunOperator"


def start_jobs(jobs) -> None:
    start_server(jobs)


def _shown(events: list[dict]) -> list[dict]:
    """What a task log shows at its default level (INFO)."""
    return [e for e in events if e["level"] not in ("debug", "trace")]


def _finished_runs(url: str, *metrics: dict[str, float]) -> list[str]:
    """One finished run per ``metrics`` (training runs for the selection), their ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("task_logs") or client.create_experiment("task_logs")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    ids = []
    for values in metrics:
        run = client.create_run(experiment_id)
        for key, value in values.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return ids


@pytest.fixture(scope="module")
def logs(jobs, mlflow_url, runs, holdout, tmp_path_factory) -> dict:
    """Register (new, then again from the same run), gate and select, each as an Airflow task."""
    work = tmp_path_factory.mktemp("task-logs")
    name = f"task_logs_{work.name}"
    evaluation = {"data_path": holdout, "features": FEATURES, "label": LABEL, "metric": "roc_auc"}
    candidates = _finished_runs(mlflow_url, {"holdout_roc_auc": 0.70}, {"holdout_roc_auc": 0.90})
    tasks = [
        # the first model: registered and made champion
        {"name": "register_first", "operator": REGISTER,
         "kwargs": {"run_id": runs["medium"], "model_name": name}, "ti": {"task_id": "register"}},
        # a retry of it: nothing new registered
        {"name": "register_again", "operator": REGISTER,
         "kwargs": {"run_id": runs["medium"], "model_name": name}, "ti": {"task_id": "register"}},
        # a challenger, left to the gate
        {"name": "register_challenger", "operator": REGISTER,
         "kwargs": {"run_id": runs["strong"], "model_name": name, "champion_alias": None},
         "ti": {"task_id": "register"}},
        {"name": "gate", "operator": GATE,
         "kwargs": {"model_name": name, "evaluation": evaluation, "slices": ["carrier"],
                    "deploy_task_ids": "deploy"},
         "ti": {"task_id": "gate"}, "method": "choose_branch"},
        {"name": "select", "operator": SELECT,
         "kwargs": {"run_ids": candidates, "metric": "holdout_roc_auc", "tag_best": False},
         "ti": {"task_id": "select"}},
    ]  # fmt: skip
    (work / "spec.json").write_text(json.dumps({"tasks": tasks}))
    env = jobs.airflow_env(
        work / "airflow-home",
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [jobs.python, jobs.script("task_logs"), work / "spec.json", work / "out"],
        env=env, cwd=work, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = work / "out"
    return {
        "name": name,
        "runs": runs,
        "candidates": candidates,
        **{
            task["name"]: {
                "events": read_log(out / f"{task['name']}.jsonl"),
                "outcome": json.loads((out / f"{task['name']}.json").read_text()),
            }
            for task in tasks
        },
    }


TASKS = ["register_first", "register_again", "register_challenger", "gate", "select"]


@pytest.mark.parametrize("task", TASKS)
def test_a_successful_task_logs_no_error(logs, task):
    """MLflow's "Successfully registered model" / "Created version" went to stderr: ERROR lines."""
    log = logs[task]
    assert "result" in log["outcome"], log["outcome"]
    shown = _shown(log["events"])
    assert [e for e in shown if e["level"] in ("error", "critical", "exception")] == [], shown
    assert [e for e in shown if e["logger"] in ("task.stderr", "task.stdout")] == [], shown


@pytest.mark.parametrize("task", TASKS)
def test_the_first_line_of_the_task_log_is_what_the_task_did(logs, task):
    name, runs = logs["name"], logs["runs"]
    expected = {
        "register_first": f"Registered {name} version 1 from run {runs['medium']}; alias 'challenger', "
        "now 'champion' (no evaluation configured).",
        "register_again": f"Reused {name} version 1, already registered from run {runs['medium']}; "
        "alias 'challenger'; 'champion' stays v1 (version 1 is already champion).",
        "register_challenger": f"Registered {name} version 2 from run {runs['strong']}; alias 'challenger'; "
        "the champion is decided downstream.",
        "gate": f"Gate {name}: promote v2 — challenger v2 roc_auc=",
        "select": f"Selected run {logs['candidates'][1]}: best of 2 run(s) by max holdout_roc_auc = 0.9",
    }[task]
    first = _shown(logs[task]["events"])[0]
    assert first["event"].startswith(expected), first
    assert first["logger"].startswith("airflow.task.operators.airflow_mlops."), first


def test_the_gate_summary_carries_its_numbers(logs):
    first = _shown(logs["gate"]["events"])[0]["event"]
    assert " vs champion v1 " in first and "better overall and in every slice" in first, first
    assert logs["gate"]["outcome"]["xcoms"]["comparison"]["outcome"] == "promote"
