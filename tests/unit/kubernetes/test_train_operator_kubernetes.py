"""``HorovodTrainOperator(mode="kubernetes")`` against the fake Kubernetes API server and a real MLflow.

Everything Kubernetes goes over HTTP to ``fake_apiserver.py`` (the one faked component); MLflow is
a real tracking server (``tests/support/mlflow_server.py``, fixture ``mlflow``). What rank 0 would log in the
cluster is logged with a real ``MlflowClient``, from the config the operator shipped in the job's
ConfigMap, so the operator's result is checked against what the server returns.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import k8s_schema
import pytest
from airflow_mlops.kubernetes.jobs import job_name
from conftest import CONN_ID, NAMESPACE, kill_while_waiting, make_context
from fake_apiserver import Scenario
from mlflow_server import shared_server

MPIJOBS = "/apis/kubeflow.org/v2beta1/namespaces/training/mpijobs"
JOBS = "/apis/batch/v1/namespaces/training/jobs"
NONCE_TAG = "airflow_mlops.k8s_nonce"
#: the job the operators below create (``hvd-<task>-<hash of dag, run, task, map index>``)
JOB_NAME = job_name("flights", "manual__2026-01-01", "train", prefix="hvd")


def start_jobs(jobs) -> None:
    """Start the real MLflow server (~15-20 s) while the other modules run; ``mlflow_server`` waits."""
    shared_server(jobs.workdir("mlflow-server"))


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train_model.py"
    path.write_text("def train(ctx):\n    return {}\n")
    return path


def _operator(script, **kwargs):
    from airflow_mlops.operators.train import HorovodTrainOperator

    defaults = dict(
        task_id="train",
        training_script=str(script),
        inputs={"train": "s3://bucket/train.parquet"},
        hyperparameters={"epochs": 2},
        num_proc=2,
        experiment_name="flights_delay",
        mode="kubernetes",
        kubernetes_conn_id=CONN_ID,
        image="registry.example/airflow-mlops-training:1.0",
        container_resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        poll_interval=0.05,
    )
    return HorovodTrainOperator(**{**defaults, **kwargs})


def _pod_spec(job: dict) -> dict:
    if job["kind"] == "MPIJob":
        return job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    return job["spec"]["template"]["spec"]


def _log_run_for_created_job(fake, mlflow, kind: str = "MPIJob", nonce: str | None = None, **metrics):
    """What rank 0 does in the cluster (``horovod_entry.py``), with a real ``MlflowClient``.

    Reads ``config.json`` from the ConfigMap the job mounts and logs a run in its experiment, with
    its run name and tags (the nonce tag among them) and final metrics. ``nonce`` overrides the
    nonce tag (a run of some other job, started a minute later so that it is the newest run of the
    experiment). Returns the run as the server has it.
    """
    job = next(o for (k, _, _), o in fake.objects.items() if k == kind)
    config_map = next(v["configMap"]["name"] for v in _pod_spec(job)["volumes"] if "configMap" in v)
    cfg = json.loads(fake.objects[("ConfigMap", NAMESPACE, config_map)]["data"]["config.json"])
    # the nonce rank 0 tags its run with is the one the operator looks the run up by
    assert cfg["tags"][NONCE_TAG] == job["metadata"]["annotations"]["airflow-mlops.io/nonce"]
    assert cfg["experiment"] == job["metadata"]["annotations"]["airflow-mlops.io/experiment"]
    tags = {**cfg["tags"], NONCE_TAG: nonce} if nonce else dict(cfg["tags"])
    tags["mlflow.parentRunId"] = cfg["parent_run_id"]  # mlflow.start_run(parent_run_id=...) on rank 0

    client = mlflow.client
    experiment = client.get_experiment_by_name(cfg["experiment"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg["experiment"])
    started = int(time.time() * 1000) + (60_000 if nonce else 0)
    run = client.create_run(experiment_id, start_time=started, run_name=cfg["run_name"], tags=tags)
    for key, value in (metrics or {"roc_auc": 0.71}).items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return client.get_run(run.info.run_id)


@pytest.mark.parametrize("kind", ["MPIJob", "IndexedJob"])
def test_kubernetes_mode_creates_the_job_polls_it_and_returns_the_mlflow_result(fake, mlflow, script, kind):
    op = _operator(script, kind=kind, execution_timeout=timedelta(hours=2))
    fake.scenario = Scenario(running_polls=2, outcome="Succeeded")
    # the run appears in MLflow while the job runs: log it as soon as the job exists, then a run of
    # another job in the same experiment (newer, so it comes first unless the nonce filter works)
    original = fake._status
    logged = []

    def status_and_log(k, key, obj):
        if not logged:
            job_kind = "MPIJob" if kind == "MPIJob" else "Job"
            logged.append(_log_run_for_created_job(fake, mlflow, job_kind))
            _log_run_for_created_job(fake, mlflow, job_kind, nonce="some-other-job", roc_auc=0.5)
        return original(k, key, obj)

    fake._status = status_and_log
    context = make_context()
    result = op.execute(context)

    run = logged[0]
    assert run.data.tags["airflow_mlops.k8s_job"] == result["job_name"]
    # the DAG run's parent run, found or created by the operator, reached the pods in config.json
    parent = mlflow.client.get_run(result["parent_run_id"])
    assert parent.data.tags["airflow.parent_key"] == "flights/manual__2026-01-01"
    assert parent.info.experiment_id == run.info.experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["airflow.map_index"] == "-1"
    assert context["ti"].xcoms["_link_MlflowParentRunLink"].endswith(f"/runs/{parent.info.run_id}")
    assert result["run_id"] == run.info.run_id and result["metrics"] == {"roc_auc": 0.71}
    assert result["experiment_id"] == run.info.experiment_id
    assert mlflow.client.get_experiment(result["experiment_id"]).name == "flights_delay"
    assert result["model_uri"] == f"runs:/{run.info.run_id}/model"
    assert result["namespace"] == NAMESPACE and result["kind"] == kind
    # the MLflow run link, on the real server
    assert f"{mlflow.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in (
        context["ti"].xcoms.values()
    )
    created = [r for r in fake.calls("POST")]
    kinds = [r.body["kind"] for r in created]
    assert kinds == (["ConfigMap", "MPIJob"] if kind == "MPIJob" else ["ConfigMap", "Service", "Job"])
    for request in created:  # what went over the wire is schema-valid
        assert k8s_schema.errors(request.body) == [], request.body["kind"]
    job_path = MPIJOBS if kind == "MPIJob" else JOBS
    polls = [r for r in fake.calls("GET") if r.path.startswith(f"{job_path}/{result['job_name']}")]
    assert len(polls) >= 3  # running, running, succeeded (+ the read of the nonce)
    # helpers are owned by the job, so deleting the job deletes them
    patches = fake.calls("PATCH")
    assert patches and all(r.content_type == "application/merge-patch+json" for r in patches)
    assert all(r.body["metadata"]["ownerReferences"][0]["kind"] in ("MPIJob", "Job") for r in patches)
    assert all(r.authorization == "Bearer fake-token" for r in fake.requests)
    # the job's pods run the requested GPU and the image
    job = created[-1].body
    if kind == "MPIJob":
        worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200
    else:
        worker = job["spec"]["template"]["spec"]["containers"][0]
        assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"] == "registry.example/airflow-mlops-training:1.0"


def test_a_failed_job_fails_the_task_with_the_job_and_pod_reasons(fake, mlflow, script):
    from airflow_mlops.exceptions import MlopsError

    def oom_killed(pod: str, job: str) -> dict:
        return {
            "metadata": {"name": pod, "labels": {"airflow-mlops.io/job": job}},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "ready": False,
                        "restartCount": 0,
                        "image": "img",
                        "imageID": "",
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ],
            },
        }

    fake.scenario = Scenario(
        running_polls=1,
        outcome="Failed",
        reason="BackoffLimitExceeded/Error",
        message="Job has reached the specified backoff limit",
        # the pods of this job, and of another one in the namespace: the list's label selector picks
        pods=[oom_killed(f"{JOB_NAME}-worker-1", JOB_NAME), oom_killed("hvd-other-worker-0", "hvd-other")],
    )
    with pytest.raises(MlopsError) as err:
        _operator(script).execute(make_context())
    text = str(err.value)
    assert "BackoffLimitExceeded/Error" in text and "backoff limit" in text
    assert f"{JOB_NAME}-worker-1/worker: OOMKilled (exit code 137)" in text
    assert "hvd-other" not in text
    (pods,) = fake.calls("GET", "pods")
    assert pods.query["labelSelector"] == [f"airflow-mlops.io/job={JOB_NAME}"]


def test_a_retry_reattaches_to_the_running_job_instead_of_creating_another(fake, mlflow, script):
    # try 1 created the job, then its worker died (no result); the job still runs in the cluster
    op = _operator(script, wait_for_completion=False)
    op.execute(make_context(try_number=1))
    assert [r.body["kind"] for r in fake.calls("POST")] == ["ConfigMap", "MPIJob"]
    fake.requests.clear()

    run = _log_run_for_created_job(fake, mlflow)
    result = _operator(script).execute(make_context(try_number=2))

    assert fake.calls("POST") == [], "try 2 created a second job"
    assert fake.calls("DELETE") == []
    assert result["run_id"] == run.info.run_id and result["metrics"] == {"roc_auc": 0.71}
    assert run.data.tags["airflow.try_number"] == "1"  # the run of the job try 1 created
    assert result["parent_run_id"] == run.data.tags["mlflow.parentRunId"]  # the same DAG-run parent
    job = next(iter(o for (k, _, _), o in fake.objects.items() if k == "MPIJob"))
    assert job["metadata"]["labels"]["airflow-mlops.io/try-number"] == "1"  # created by try 1


def test_a_retry_replaces_a_job_that_failed(fake, mlflow, script):
    op = _operator(script, wait_for_completion=False)
    name = op.execute(make_context(try_number=1))["job_name"]
    key = ("MPIJob", NAMESPACE, name)
    fake.put(
        fake.objects[key], status={"conditions": [{"type": "Failed", "status": "True", "reason": "Boom"}]}
    )
    fake.requests.clear()

    _operator(script, wait_for_completion=False).execute(make_context(try_number=2))

    assert [r.method for r in fake.calls(kind_plural="mpijobs") if r.method != "GET"] == ["DELETE", "POST"]
    assert fake.objects[key]["metadata"]["labels"]["airflow-mlops.io/try-number"] == "2"


def test_on_kill_deletes_the_job(fake, mlflow, script):
    fake.scenario = Scenario(running_polls=10_000)
    errors = kill_while_waiting(_operator(script), make_context())

    deletes = fake.calls("DELETE", "mpijobs")
    assert len(deletes) == 1 and deletes[0].query.get("propagationPolicy") == ["Background"]
    assert not any(k == "MPIJob" for (k, _, _) in fake.objects)
    assert errors and "no longer exists" in str(errors[0])


def test_credentials_go_to_a_secret_reference_never_into_the_manifest(fake, mlflow, script):
    mlflow.connect(login="alice", password="s3cret")  # credentials on the mlflow_default connection
    with pytest.raises(ValueError, match="mlflow_secret_name"):
        _operator(script, wait_for_completion=False).execute(make_context())
    assert fake.calls("POST") == []

    _operator(script, wait_for_completion=False, mlflow_secret_name="mlflow-creds").execute(make_context())
    sent = str([r.body for r in fake.requests if r.body])
    assert "s3cret" not in sent and "alice" not in sent
    assert "'secretKeyRef': {'name': 'mlflow-creds', 'key': 'MLFLOW_TRACKING_PASSWORD'}" in sent
    assert f"{{'name': 'MLFLOW_TRACKING_URI', 'value': '{mlflow.url}'}}" in sent  # the real server's URI


def test_deferrable_mode_defers_to_the_kubernetes_job_trigger(fake, mlflow, script):
    from airflow.sdk.exceptions import TaskDeferred
    from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

    op = _operator(script, deferrable=True, kind="IndexedJob", execution_timeout=timedelta(minutes=30))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, KubernetesJobTrigger)
    assert (trigger.kind, trigger.namespace, trigger.kubernetes_conn_id) == ("IndexedJob", NAMESPACE, CONN_ID)
    assert trigger.deadline is not None
    assert deferred.value.method_name == "execute_complete"
    assert len(fake.calls("POST")) == 3  # created before deferring


def test_execute_complete_turns_events_into_a_result_or_an_error(fake, mlflow, script):
    from airflow_mlops.exceptions import MlopsError

    op = _operator(script, wait_for_completion=False)
    name = op.execute(make_context())["job_name"]
    run = _log_run_for_created_job(fake, mlflow, roc_auc=0.8, loss=0.25)
    event = {"status": "success", "name": name, "namespace": NAMESPACE, "kind": "MPIJob"}
    result = _operator(script).execute_complete(make_context(), event)
    assert result["run_id"] == run.info.run_id and result["metrics"] == {"roc_auc": 0.8, "loss": 0.25}

    fake.put(
        fake.objects[("MPIJob", NAMESPACE, name)],
        status={
            "conditions": [{"type": "Failed", "status": "True", "reason": "Evicted", "message": "node gone"}]
        },
    )
    with pytest.raises(MlopsError, match="Evicted"):
        _operator(script).execute_complete(make_context(), {**event, "status": "failed"})

    with pytest.raises(MlopsError, match="timed out and was deleted"):
        _operator(script).execute_complete(make_context(), {**event, "status": "timeout"})
    assert fake.calls("DELETE", "mpijobs")

    with pytest.raises(MlopsError, match="Lost track"):
        _operator(script).execute_complete(make_context(), {**event, "status": "error", "reason": "NotFound"})
    with pytest.raises(RuntimeError, match="no usable event"):
        _operator(script).execute_complete(make_context(), None)


def test_local_mode_stays_the_default_and_arguments_are_checked(script):
    from airflow_mlops.operators.train import HorovodTrainOperator

    op = HorovodTrainOperator(task_id="t", training_script=str(script))
    assert op.mode == "local" and op.kind == "MPIJob"
    for bad in ({"mode": "k8s"}, {"kind": "PyTorchJob"}, {"poll_interval": 0}):
        with pytest.raises(ValueError):
            HorovodTrainOperator(task_id="t", training_script=str(script), **bad)
