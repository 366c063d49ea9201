"""One MLflow run tree per DAG run (``airflow_mlops.runtimes.run_tree``), against a real MLflow server.

* N processes asking for a DAG run's parent at the same instant all get the same run, and exactly
  one run carries the parent key; with every creator's candidate made before any election, one
  candidate wins and the others are deleted;
* a creator that stalled between its search and its create (its candidate even looks older, as a
  clock behind the others' would make it) defers to the parent already elected;
* the lock, purged by ``mlflow gc``, is not needed to find the parent again (its key tag is), and a
  parent someone deleted is restored rather than replaced;
* a retried task's run nests the runs of its earlier tries, sets a ``RUNNING`` one to ``KILLED``,
  and leaves the parent one child per task instance;
* registration and the gate record their runs as children of the DAG run's parent; the model
  version's tags point at its training run and at the parent of the DAG run that trained it.

The server is the session's (``tests/support/mlflow_server.py``), as for the other registry tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import start_server

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = "run_tree"
#: processes racing for one parent
CREATORS = 6

RACER = r"""
import json, sys, time
from pathlib import Path

url, experiment_id, n, me, folder, tag = sys.argv[1:7]
n = int(n)


def barrier(name):
    Path(folder, f"{name}-{me}").touch()
    while len(list(Path(folder).glob(f"{name}-*"))) < n:
        # a racer that failed never arrives: stop rather than wait for it forever
        failed = sorted(p.name for p in Path(folder).glob("failed-*"))
        if failed:
            sys.exit(f"racer {me} stopped waiting at {name!r}: {failed}")
        time.sleep(0.005)


try:
    from mlflow import MlflowClient

    from airflow_mlops.runtimes import run_tree

    client = MlflowClient(url)
    client.get_experiment(experiment_id)  # the first request loads MLflow's plugins: not in the race
    barrier("ready")
    # 1. the public function, every process at once
    first = run_tree.find_or_create_parent(client, experiment_id, "racing", f"manual__{tag}-1")
    # 2. the worst case: every creator has made its candidate before anyone elects
    candidate = client.create_run(experiment_id, run_name=f"racing/manual__{tag}-2").info.run_id
    barrier("candidates")
    second = run_tree.elect(client, experiment_id, f"racing/manual__{tag}-2", candidate)
except BaseException:
    Path(folder, f"failed-{me}").touch()
    raise
print("RESULT " + json.dumps({"first": first, "candidate": candidate, "second": second}), flush=True)
"""


def start_jobs(jobs) -> None:
    start_server(jobs)


@pytest.fixture
def experiment_id(tracking) -> str:
    from airflow_mlops.hooks.mlflow import MlflowHook

    return MlflowHook().experiment_id(EXPERIMENT)


def _runs(client, experiment_id: str, filter_string: str, deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([experiment_id], filter_string, run_view_type=view, max_results=1000)


def _tagged_parents(client, experiment_id: str, key: str) -> list:
    return _runs(client, experiment_id, f"tags.`airflow.parent_key` = '{key}'", deleted=True)


def test_concurrent_processes_get_one_parent(tracking, experiment_id, tmp_path):
    from airflow_mlops.runtimes.run_tree import lock_name

    tag = uuid.uuid4().hex[:8]
    logs = [tmp_path / f"racer-{i}.log" for i in range(CREATORS)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as out:  # the racer writes to its own copy of the descriptor
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        RACER,
                        tracking.url,
                        experiment_id,
                        str(CREATORS),
                        str(i),
                        str(tmp_path),
                        tag,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    # one racer's failure ends the others (see RACER's barrier); a stalled one is killed, and every
    # racer's output is shown rather than a bare timeout
    deadline = time.monotonic() + 600
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            proc.wait()
    outputs = [log.read_text() for log in logs]
    failed = [
        f"racer {i} exited with {p.returncode}:\n{out[-3000:]}"
        for i, (p, out) in enumerate(zip(procs, outputs, strict=True))
        if p.returncode
    ]
    assert not failed, "\n\n".join(failed)
    results = []
    for output in outputs:
        assert "Could not" not in output, output[-4000:]  # no lock or candidate left behind
        results.append(json.loads(next(x for x in output.splitlines() if x.startswith("RESULT "))[7:]))
    client = tracking.client

    # 1. everyone got the same parent, the only run with the key, active and named after the DAG run
    key = f"racing/manual__{tag}-1"
    (parent,) = {r["first"] for r in results}
    assert [r.info.run_id for r in _tagged_parents(client, experiment_id, key)] == [parent]
    run = client.get_run(parent)
    assert run.info.lifecycle_stage == "active"
    assert run.data.tags["mlflow.runName"] == key
    assert run.data.tags["airflow.dag_id"] == "racing"
    assert run.data.tags["airflow.run_id"] == f"manual__{tag}-1"
    # any other creator's candidate is deleted; the lock names the parent and is out of the UI's list
    named = _runs(client, experiment_id, f"tags.`mlflow.runName` = '{key}'", deleted=True)
    assert [r.info.run_id for r in named if r.info.lifecycle_stage == "active"] == [parent]
    lock = client.get_experiment_by_name(lock_name(experiment_id, key))
    assert lock.lifecycle_stage == "deleted"
    assert lock.tags["airflow_mlops.parent_run_id"] == parent

    # 2. all candidates existed before any election: one won, the others are deleted
    (winner,) = {r["second"] for r in results}
    candidates = {r["candidate"] for r in results}
    assert len(candidates) == CREATORS and winner in candidates
    stages = {c: client.get_run(c).info.lifecycle_stage for c in candidates}
    assert [c for c, stage in stages.items() if stage == "active"] == [winner], stages
    assert [r.info.run_id for r in _tagged_parents(client, experiment_id, f"racing/manual__{tag}-2")] == [
        winner
    ]
    print(f"{len(named)} candidate(s) raced in phase 1, {CREATORS} in phase 2")


def test_a_creator_that_stalled_defers_to_the_elected_parent(tracking, experiment_id):
    """Why not "keep the oldest run": the late candidate's clock says it is older, and still loses."""
    from airflow_mlops.runtimes.run_tree import elect, find_or_create_parent

    client = tracking.client
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    key = f"stalled/{run_id}"
    # the stalled creator searched (found nothing), then paused; meanwhile the parent was elected
    parent = find_or_create_parent(client, experiment_id, "stalled", run_id)
    hour_ago = int(time.time() * 1000) - 3_600_000
    late = client.create_run(experiment_id, start_time=hour_ago, run_name=key).info.run_id

    assert elect(client, experiment_id, key, late) == parent
    assert client.get_run(late).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in _tagged_parents(client, experiment_id, key)] == [parent]


def test_the_parent_is_found_without_its_lock_and_restored_when_deleted(tracking, experiment_id, jobs):
    from airflow_mlops.runtimes.run_tree import find_or_create_parent, lock_name

    client = tracking.client
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    parent = find_or_create_parent(client, experiment_id, "gc", run_id)
    lock = client.get_experiment_by_name(lock_name(experiment_id, f"gc/{run_id}"))
    server = start_server(jobs)
    gc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "gc",
            "--backend-store-uri",
            f"sqlite:///{server.root / 'mlflow.db'}",
            "--experiment-ids",
            lock.experiment_id,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert client.get_experiment_by_name(lock.name) is None  # purged

    assert find_or_create_parent(client, experiment_id, "gc", run_id) == parent  # by its key tag
    client.delete_run(parent)
    assert find_or_create_parent(client, experiment_id, "gc", run_id) == parent
    assert client.get_run(parent).info.lifecycle_stage == "active"
    assert len(_tagged_parents(client, experiment_id, f"gc/{run_id}")) == 1


def test_a_retried_task_nests_its_earlier_tries_under_its_run(tracking, experiment_id):
    from airflow_mlops.hooks.mlflow import MlflowHook
    from airflow_mlops.runtimes.run_tree import TaskRef

    client, hook = tracking.client, MlflowHook()
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    try1 = TaskRef("retried", run_id, "score", map_index=0, try_number=1)
    parent = hook.dag_run_parent(experiment_id, try1)
    # try 1 was killed: its run stays RUNNING; another mapped instance has a run of its own
    killed = client.create_run(
        experiment_id, tags={**try1.tags(), "mlflow.parentRunId": parent}, run_name="score-0"
    ).info.run_id
    sibling = TaskRef("retried", run_id, "score", map_index=1)
    other = hook.log_record_run(
        experiment_id, "score-1", metrics={"m": 1.0}, tags={}, record={}, artifact_file="r.json",
        task=sibling, parent_run_id=parent,
    )  # fmt: skip

    runs = {}
    for try_number in (2, 3):  # try 2 fails after recording, try 3 succeeds
        task = TaskRef("retried", run_id, "score", map_index=0, try_number=try_number)
        runs[try_number] = hook.log_record_run(
            experiment_id, "score-0", metrics={"m": float(try_number)}, tags={}, record={},
            artifact_file="r.json", task=task, parent_run_id=parent,
        )  # fmt: skip

    live = runs[3]
    children = _runs(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_id for r in children) == sorted([live, other])
    earlier = _runs(client, experiment_id, f"tags.`mlflow.parentRunId` = '{live}'")
    assert sorted(r.info.run_id for r in earlier) == sorted([killed, runs[2]])
    for run in earlier:  # re-nested under the newest try, even the one try 2 had superseded
        assert run.data.tags["airflow.superseded_by"] == live
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(runs[2]).info.status == "FINISHED"
    live_run = client.get_run(live)
    assert (
        live_run.data.tags["airflow.try_number"] == "3" and "airflow.superseded_by" not in live_run.data.tags
    )
    assert client.get_run(other).data.tags["mlflow.parentRunId"] == parent  # untouched
    assert not _runs(
        client, experiment_id, f"tags.`airflow.run_id` = '{run_id}' and attributes.status = 'RUNNING'"
    )
    assert client.get_run(parent).info.status == "FINISHED"  # the latest task that ended did


def _training_run(tracking, dag_id: str, run_id: str) -> tuple[str, str]:
    """A run with a model, made the training run of task ``train`` of DAG run ``dag_id``/``run_id``
    (as ``horovod_entry.py`` does): ``(run id, the DAG run's parent)``."""
    import flights_models
    from airflow_mlops.hooks.mlflow import MlflowHook
    from airflow_mlops.runtimes.run_tree import TaskRef

    client = tracking.client
    trained = flights_models.log_flights_model("medium", tracking.url, experiment="flights_delay")
    experiment_id = client.get_run(trained).info.experiment_id
    task = TaskRef(dag_id, run_id, "train")
    parent = MlflowHook().dag_run_parent(experiment_id, task)
    for key, value in {**task.tags(), "mlflow.parentRunId": parent}.items():
        client.set_tag(trained, key, value)
    return trained, parent


def test_register_and_gate_record_their_runs_in_the_dag_runs_tree(
    tracking, model_name, make_context, holdout
):
    from airflow_mlops.operators.registry import ChampionChallengerGateOperator, MlflowRegisterModelOperator
    from flights_models import FEATURES, LABEL

    client = tracking.client
    dag_run = f"manual__{uuid.uuid4().hex[:8]}"
    trained, parent = _training_run(tracking, "flights_delay_pipeline", dag_run)

    context = make_context("register", dag_run)
    registered = MlflowRegisterModelOperator(
        task_id="register", run_id=trained, model_name=model_name, champion_alias=None
    ).execute(context)
    version = client.get_model_version(model_name, registered["version"])
    assert version.run_id == trained
    assert version.tags["airflow.training_run_id"] == trained
    assert version.tags["airflow.parent_run_id"] == parent
    assert version.tags["airflow.registration_run_id"] == registered["mlflow_run_id"]
    assert registered["parent_run_id"] == parent
    record = client.get_run(registered["mlflow_run_id"])
    assert record.info.status == "FINISHED"
    assert record.data.tags["mlflow.runName"] == f"register-{dag_run}"
    expected = {
        "mlflow.parentRunId": parent,
        "airflow.task_id": "register",
        "airflow.map_index": "-1",
        "airflow.try_number": "1",
        "mlops.kind": "registration",
        "model_version": registered["version"],
        "source_run_id": trained,
    }
    assert {k: record.data.tags.get(k) for k in expected} == expected
    assert context["ti"].xcoms["_link_MlflowParentRunLink"].endswith(f"/runs/{parent}")

    context = make_context("gate", dag_run)
    ChampionChallengerGateOperator(
        task_id="gate",
        model_name=model_name,
        challenger_version=registered["version"],
        evaluation={"data_path": holdout, "features": FEATURES, "label": LABEL},
        deploy_task_ids="deploy",
    ).choose_branch(context)
    comparison = context["ti"].xcoms["comparison"]
    gate = client.get_run(comparison["mlflow_run_id"])
    assert comparison["parent_run_id"] == parent
    assert gate.data.tags["mlflow.parentRunId"] == parent
    assert gate.data.tags["airflow.task_id"] == "gate"
    assert "challenger.roc_auc" in gate.data.metrics  # the evaluation, as metrics of the child run
    assert context["ti"].xcoms["_link_MlflowRunLink"].endswith(f"/runs/{gate.info.run_id}")
    assert context["ti"].xcoms["_link_MlflowParentRunLink"].endswith(f"/runs/{parent}")
    children = _runs(client, gate.info.experiment_id, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["airflow.task_id"] for r in children) == ["gate", "register", "train"]


def test_a_version_links_to_the_parent_of_the_dag_run_that_trained_it(tracking, model_name, make_context):
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator

    trained, trainers_parent = _training_run(tracking, "flights_delay_pipeline", "scheduled__trainer")
    registrar = f"manual__{uuid.uuid4().hex[:8]}"
    registered = MlflowRegisterModelOperator(
        task_id="register", run_id=trained, model_name=model_name, champion_alias=None
    ).execute(make_context("register", registrar))

    version = tracking.client.get_model_version(model_name, registered["version"])
    assert version.tags["airflow.parent_run_id"] == trainers_parent
    # the registration itself is in the registering DAG run's tree
    assert registered["parent_run_id"] != trainers_parent
    record = tracking.client.get_run(registered["mlflow_run_id"])
    assert record.data.tags["mlflow.parentRunId"] == registered["parent_run_id"]
    assert tracking.client.get_run(registered["parent_run_id"]).data.tags["airflow.run_id"] == registrar
