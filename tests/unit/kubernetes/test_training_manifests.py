"""Rendered training-job manifests: schema-valid, GPU resources, names, secrets, status parsing.

The building blocks every job shares come from ``airflow_mlops.kubernetes.jobs``; what is Horovod's
from ``airflow_mlops.kubernetes.training``.
"""

from __future__ import annotations

import copy
import re

import k8s_schema
import pytest
from airflow_mlops.kubernetes import jobs, training

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _spec(**kwargs) -> jobs.JobSpec:
    name = jobs.job_name("flights", "scheduled__2026-01-01T00:00:00+00:00", "train", prefix="hvd")
    defaults = dict(
        name=name,
        namespace="training",
        image="airflow-mlops-training:1.0",
        num_proc=3,
        files={"config.json": "{}", "train_model.py": "def train(ctx): ...\n"},
        env=training.mlflow_env({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, None),
        resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        component="training",
        labels=jobs.job_labels(1),
        annotations=jobs.job_annotations("flights", "scheduled__2026", "train", -1, 1),
        active_deadline_seconds=3600,
    )
    return jobs.JobSpec(**{**defaults, **kwargs})


@pytest.mark.parametrize("kind", training.KINDS)
def test_rendered_manifests_validate_against_their_schemas(kind):
    manifests = training.render(_spec(), kind)
    assert [m["kind"] for m in manifests] == (
        ["ConfigMap", "MPIJob"] if kind == "MPIJob" else ["ConfigMap", "Service", "Job"]
    )
    for manifest in manifests:
        assert k8s_schema.errors(manifest) == [], manifest["kind"]


@pytest.mark.parametrize(
    "kind,breakage,expected",
    [
        ("MPIJob", lambda m: m["spec"].update(slotsPerWorker="one"), "slotsPerWorker"),
        ("MPIJob", lambda m: m["spec"].update(mpiImplementation="MPICH"), "mpiImplementation"),
        ("MPIJob", lambda m: m["spec"]["runPolicy"].update(cleanPodPolicyy="All"), "cleanPodPolicyy"),
        ("MPIJob", lambda m: m["spec"].pop("mpiReplicaSpecs"), "mpiReplicaSpecs"),
        (
            "MPIJob",
            lambda m: m["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
                comand=["x"]
            ),
            "comand",
        ),
        (
            "IndexedJob",
            lambda m: m["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
                {"nvidia.com/gpu": 1}
            ),
            "nvidia.com/gpu",
        ),
        ("IndexedJob", lambda m: m["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
        ("IndexedJob", lambda m: m["spec"].update(completions="3"), "completions"),
    ],
)
def test_a_broken_manifest_fails_validation(kind, breakage, expected):
    manifest = copy.deepcopy(training.render(_spec(), kind)[-1])
    breakage(manifest)
    problems = k8s_schema.errors(manifest)
    assert problems and any(expected in p for p in problems), problems


def test_gpu_resources_are_requested_and_limited_on_every_rank():
    assert jobs.resource_requirements({"cpu": "2", "memory": "4Gi", "gpu": 2}) == {
        "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "2"},
    }
    assert jobs.resource_requirements({"amd.com/gpu": 1, "gpu": 0}) == {
        "requests": {"amd.com/gpu": "1"},
        "limits": {"amd.com/gpu": "1"},
    }
    with pytest.raises(ValueError, match="whole number"):
        jobs.resource_requirements({"gpu": 1.5})

    mpijob = training.render_mpijob(_spec())
    workers = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]
    assert workers["replicas"] == 3
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(launcher["resources"])  # the launcher only coordinates
    assert launcher["command"][:4] == ["horovodrun", "--gloo", "-np", "3"]

    job = training.render_indexed_job(_spec())
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_indexed_job_pods_find_rank_0_through_the_headless_service():
    spec = _spec()
    _, service, job = training.render(spec, "IndexedJob")
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == spec.name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["HVD_RENDEZVOUS_ADDR"] == f"{spec.name}-0.{spec.name}.training.svc"
    assert env["HVD_HOST_PREFIX"] == f"{spec.name}-" and env["HVD_SIZE"] == "3"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "training"


def test_the_gloo_launcher_is_an_entry_script_of_the_training_image():
    """``gloo_launch.py`` lives with the other runtime entry scripts (docker/training/Dockerfile copies
    provider/airflow_mlops/runtimes/ to /opt/mlops/runtimes/); the indexed Job runs it from there."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    assert training.LAUNCHER_SOURCE == repo / "provider/airflow_mlops/runtimes/gloo_launch.py"
    assert training.LAUNCHER_SOURCE.is_file()
    dockerfile = (repo / "docker/training/Dockerfile").read_text()
    assert "COPY provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/" in dockerfile
    config_map, _, job = training.render(_spec(), "IndexedJob")
    assert "gloo_launch.py" not in config_map["data"]  # not shipped in the ConfigMap any more
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == [
        training.PYTHON,
        "/opt/mlops/runtimes/gloo_launch.py",
        "--",
        training.PYTHON,
        "/opt/mlops/runtimes/horovod_entry.py",
        "/opt/mlops/job/config.json",
    ]


def test_job_name_is_stable_across_tries_and_differs_across_runs_and_tasks():
    def name(*args, **kwargs):
        return jobs.job_name(*args, prefix="hvd", **kwargs)

    a = name("flights", "scheduled__2026-01-01T00:00:00+00:00", "train")
    assert a == name("flights", "scheduled__2026-01-01T00:00:00+00:00", "train")
    assert a != name("flights", "scheduled__2026-02-01T00:00:00+00:00", "train")
    assert a != name("flights", "scheduled__2026-01-01T00:00:00+00:00", "train", map_index=0)
    assert a != name("other", "scheduled__2026-01-01T00:00:00+00:00", "train")
    long = name("d" * 200, "r" * 200, "Train_The.Model__" * 20)
    drift = jobs.job_name("d" * 200, "r" * 200, "Train_The.Model__" * 20, prefix="drift")
    for job_name in (a, long, drift):
        assert DNS_LABEL.match(job_name) and len(job_name) <= jobs.NAME_MAX, job_name
    assert a.startswith("hvd-train-") and drift.startswith("drift-")
    # the try number only appears in a label and an annotation
    assert jobs.job_labels(3) == {jobs.TRY_LABEL: "3"}
    assert jobs.job_annotations("d", "r", "t", -1, 3)[jobs.TRY_LABEL] == "3"


def test_each_operator_names_its_jobs_after_what_they_do():
    from airflow_mlops.operators.drift import DriftDetectOperator
    from airflow_mlops.operators.train import HorovodTrainOperator

    assert HorovodTrainOperator.job_name_prefix == jobs.NAME_PREFIXES["training"] == "hvd"
    assert DriftDetectOperator.job_name_prefix == jobs.NAME_PREFIXES["drift"] == "drift"
    assert HorovodTrainOperator.job_component == "training"


def test_mlflow_credentials_are_secret_references():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_TOKEN": "tok"}
    with pytest.raises(ValueError, match="Secret"):
        training.mlflow_env(env, None)
    rendered = training.mlflow_env(env, "mlflow-creds")
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in rendered
    assert {
        "name": "MLFLOW_TRACKING_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "MLFLOW_TRACKING_TOKEN"}},
    } in rendered
    assert "tok" not in str(rendered)


@pytest.mark.parametrize(
    "kind,conditions,state",
    [
        ("MPIJob", [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], "running"),
        (
            "MPIJob",
            [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}],
            "succeeded",
        ),
        ("MPIJob", [{"type": "Failed", "status": "True", "reason": "x"}], "failed"),
        ("IndexedJob", [{"type": "Complete", "status": "True"}], "succeeded"),
        ("IndexedJob", [{"type": "Complete", "status": "False"}], "running"),
        ("IndexedJob", [{"type": "Failed", "status": "True"}], "failed"),
        ("IndexedJob", [], "running"),  # a running batch/v1 Job has no condition at all
        # Kubernetes >= 1.31: the interim condition decides, the terminal one follows
        ("Job", [{"type": "SuccessCriteriaMet", "status": "True"}], "succeeded"),
        ("Job", [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}], "failed"),
        (
            "Job",
            [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}],
            "failed",
        ),
    ],
)
def test_job_phase_reads_conditions(kind, conditions, state):
    assert jobs.job_phase(kind, {"status": {"conditions": conditions}}).state == state


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="MPIJob, IndexedJob"):
        training.render(_spec(), "PyTorchJob")
