"""``KubernetesJobTrigger`` polling the fake Kubernetes API server (tests/unit/kubernetes/fake_apiserver.py),
whose jobs report status as the Job controller and the mpi-operator write it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubernetes"))

from fake_apiserver import FakeKubeApiServer, Scenario  # noqa: E402

CONN_ID = "k8s_fake_trigger"
NAMESPACE = "training"
MPIJOB = {
    "apiVersion": "kubeflow.org/v2beta1",
    "kind": "MPIJob",
    "metadata": {"name": "hvd-train-0123456789", "namespace": NAMESPACE},
    "spec": {"mpiReplicaSpecs": {}},
}
JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "hvd-train-0123456789", "namespace": NAMESPACE},
    "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "img"}]}}},
}


@pytest.fixture
def fake(monkeypatch):
    with FakeKubeApiServer() as server:
        conn = {
            "conn_type": "kubernetes",
            "extra": {"kube_config": server.kubeconfig(), "namespace": NAMESPACE},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        yield server


def _trigger(kind: str = "MPIJob", **kwargs):
    from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

    args = dict(name=MPIJOB["metadata"]["name"], namespace=NAMESPACE, kind=kind, kubernetes_conn_id=CONN_ID)
    return KubernetesJobTrigger(**{**args, "poll_interval": 0.05, **kwargs})


def _events(trigger, limit: float = 30) -> list:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), limit))


@pytest.mark.parametrize("kind,obj", [("MPIJob", MPIJOB), ("IndexedJob", JOB)])
def test_run_polls_until_success_and_yields_one_event(fake, kind, obj):
    fake.scenario = Scenario(running_polls=3, outcome="Succeeded")
    fake.put(obj)

    events = _events(_trigger(kind))

    assert len(events) == 1
    assert events[0].payload["status"] == "success"
    assert events[0].payload["name"] == obj["metadata"]["name"]
    assert len(fake.calls("GET")) == 4  # running ×3, then done


def test_run_reports_a_failed_job_with_its_reason(fake):
    fake.scenario = Scenario(running_polls=0, outcome="Failed", reason="BackoffLimitExceeded", message="m")
    fake.put(JOB)
    (event,) = _events(_trigger("IndexedJob"))
    assert event.payload["status"] == "failed"
    assert event.payload["reason"] == "BackoffLimitExceeded"
    # decided at the Job controller's interim FailureTarget condition (Failed follows once pods are gone)
    assert len(fake.calls("GET")) == 1


@pytest.mark.parametrize("outcome", ["Succeeded", "Failed"])
def test_the_fake_job_controller_reports_as_the_real_one(fake, outcome):
    """batch/v1 (Kubernetes >= 1.31): no condition while running, the interim condition, then the
    terminal one; the mpi-operator: Created and Running, then Succeeded/Failed with Running False."""
    from kubernetes import client

    fake.scenario = Scenario(running_polls=1, outcome=outcome)
    fake.put(JOB)
    fake.put(MPIJOB)
    api = client.ApiClient(client.Configuration(host=fake.url))
    batch, custom = client.BatchV1Api(api), client.CustomObjectsApi(api)
    name = JOB["metadata"]["name"]

    running = batch.read_namespaced_job_status(name, NAMESPACE).status
    assert running.conditions is None and running.active == 1
    interim, terminal = (batch.read_namespaced_job_status(name, NAMESPACE).status for _ in range(2))
    first, last = (
        ("SuccessCriteriaMet", "Complete") if outcome == "Succeeded" else ("FailureTarget", "Failed")
    )
    assert [c.type for c in interim.conditions] == [first]
    assert [c.type for c in terminal.conditions] == [first, last]

    def mpijob_conditions() -> dict:
        obj = custom.get_namespaced_custom_object("kubeflow.org", "v2beta1", NAMESPACE, "mpijobs", name)
        return {c["type"]: c["status"] for c in obj["status"]["conditions"]}

    assert mpijob_conditions() == {"Created": "True", "Running": "True"}
    assert mpijob_conditions() == {"Created": "True", "Running": "False", outcome: "True"}


def test_run_reports_a_missing_job_and_a_passed_deadline(fake):
    (event,) = _events(_trigger())
    assert (event.payload["status"], event.payload["reason"]) == ("error", "NotFound")

    fake.scenario = Scenario(running_polls=10_000)
    fake.put(MPIJOB)
    (event,) = _events(_trigger(deadline=time.time() + 0.3))
    assert event.payload["status"] == "timeout"


def test_run_gives_up_after_repeated_connection_errors(monkeypatch):
    server = FakeKubeApiServer()
    kubeconfig = server.kubeconfig()  # an address nothing listens on: the server never starts
    server._server.server_close()
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    (event,) = _events(_trigger(max_errors=2), limit=60)
    assert event.payload["status"] == "error"


def test_serialize_round_trip_recreates_an_equal_trigger():
    from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

    trigger = _trigger("IndexedJob", deadline=1_900_000_000.0, max_errors=5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_mlops.triggers.kubernetes.KubernetesJobTrigger"
    json.dumps(kwargs)  # only plain values survive the metadata DB

    module, _, name = classpath.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    again = cls(**kwargs)
    assert isinstance(again, KubernetesJobTrigger)
    assert again.serialize() == (classpath, kwargs)
    assert vars(again).keys() >= kwargs.keys()


def test_the_former_names_still_import_with_a_deprecation_warning():
    """A task deferred before the rename has ``...TrainingJobTrigger`` as its trigger's classpath."""
    from airflow._shared.module_loading import import_string  # what the triggerer uses
    from airflow.exceptions import AirflowProviderDeprecationWarning
    from airflow_mlops.hooks.kubernetes import KubernetesJobHook
    from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

    with pytest.warns(AirflowProviderDeprecationWarning, match="KubernetesJobTrigger"):
        assert import_string("airflow_mlops.triggers.kubernetes.TrainingJobTrigger") is KubernetesJobTrigger
    with pytest.warns(AirflowProviderDeprecationWarning, match="KubernetesJobHook"):
        from airflow_mlops.hooks.kubernetes import TrainingJobHook
    assert TrainingJobHook is KubernetesJobHook
    with pytest.raises(ImportError):
        from airflow_mlops.triggers.kubernetes import NoSuchTrigger  # noqa: F401
