"""Kubernetes mode of a Seldon deployment against the fake Kubernetes API server (``fake_apiserver.py``).

Everything goes over HTTP through the cncf-kubernetes hooks to the fake, whose SeldonDeployment
controller follows seldon-core 1.17.1's (it reconciles a written spec a read later, creates the
Deployments and Services, reports ``Available``/``Creating``/``Failed`` by the Deployments'
conditions, writes a status only when it changes, and never ``observedGeneration``), and records
every request; what is POSTed/PUT is validated against the SeldonDeployment CRD schema.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import TaskDeferred
from airflow_mlops.exceptions import DeploymentError
from airflow_mlops.kubernetes import seldon
from conftest import CONN_ID, NAMESPACE, make_context
from fake_apiserver import RECONCILE_ERROR, Scenario
from test_seldon_manifests import errors

SELDON_CONN_ID = "seldon_k8s"
SDEPS = f"/apis/machinelearning.seldon.io/v1/namespaces/{NAMESPACE}/seldondeployments"
IMAGE = "registry.example/airflow-mlops-serving:1.0"
#: status.address.url: the first predictor's Service on the executor's port
MAIN_URL = f"http://flights-main.{NAMESPACE}.svc.cluster.local:8000/api/v1.0/predictions"


@pytest.fixture
def seldon_conn(fake, monkeypatch):
    """A ``seldon`` connection in Kubernetes mode pointing at the fake's ``kubernetes`` connection."""
    conn = {
        "conn_type": "seldon",
        "extra": {"mode": "kubernetes", "kubernetes_conn_id": CONN_ID, "namespace": NAMESPACE},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SELDON_CONN_ID.upper()}", json.dumps(conn))
    fake.scenario = Scenario(seldon_creating_polls=2)
    return fake


def _rollout(ready_timeout: float = 30):
    from airflow_mlops.kubernetes.seldon_rollout import KubernetesRollout

    return KubernetesRollout(SELDON_CONN_ID, ready_timeout=ready_timeout, poll_interval=0.05)


class DeployOperator(BaseOperator):
    """How an operator drives a rollout of its own manifest (the module docstring's example)."""

    def __init__(self, *, manifest: dict, deferrable: bool = False, ready_timeout: float = 30, **kwargs):
        super().__init__(**kwargs)
        self.manifest = manifest
        self.deferrable = deferrable
        self.ready_timeout = ready_timeout

    def execute(self, context):
        rollout = _rollout(self.ready_timeout)
        started = rollout.start(self.manifest)
        if self.deferrable:
            self.defer(
                trigger=rollout.trigger(started),
                method_name="execute_complete",
                timeout=rollout.defer_timeout,
            )
        return rollout.finish(started)

    def execute_complete(self, context, event=None):
        return _rollout().complete(event)


def _manifest(*predictors: tuple[str, str, int], shadow: str | None = None) -> dict:
    preds = [
        {"name": name, "version": version, "model_uri": f"models:/flights/{version}", "traffic": traffic}
        for name, version, traffic in predictors
    ]
    if shadow:
        preds.append(
            {"name": "mirror", "version": shadow, "model_uri": f"models:/flights/{shadow}", "shadow": True}
        )
    return seldon.render_seldon_deployment(
        "flights", NAMESPACE, image=IMAGE, predictors=preds, env_from_secret="mlflow-env"
    )


def _v(version: str) -> dict:
    return _manifest(("main", version, 100))


def _run(op: BaseOperator):
    """Run the operator like a worker would: execute, and when it defers, the trigger then resume."""
    context = make_context()
    try:
        return op.execute(context)
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        json.dumps(kwargs)
        json.dumps(deferred.kwargs)  # only plain values survive the metadata DB
        module, _, cls_name = classpath.rpartition(".")
        trigger = getattr(__import__(module, fromlist=[cls_name]), cls_name)(**kwargs)

        async def first_event():
            async for event in trigger.run():
                return event

        event = asyncio.run(asyncio.wait_for(first_event(), 30))
        return getattr(op, deferred.method_name)(context, event=event.payload, **(deferred.kwargs or {}))


def _crashes(version: str):
    """Scripted pods: those of model ``version`` never become ready (CrashLoopBackOff), others do."""

    def pods(predictor: dict, sdep: dict) -> str:
        return (
            "crashloop" if (predictor.get("labels") or {}).get(seldon.VERSION_LABEL) == version else "ready"
        )

    return pods


def _live(fake) -> dict:
    return fake.objects[("SeldonDeployment", NAMESPACE, "flights")]


def _writes(fake) -> list:
    return [r for r in fake.requests if r.method in ("POST", "PUT", "DELETE") and r.path.startswith(SDEPS)]


def _names(items) -> set[str]:
    return {i["metadata"]["name"] for i in items}


# --- rollouts --------------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True])
def test_first_deploy_creates_then_waits_creating_until_available(seldon_conn, deferrable):
    fake = seldon_conn
    result = _run(DeployOperator(task_id="deploy", manifest=_v("3"), deferrable=deferrable))

    (post,) = _writes(fake)
    assert (post.method, post.path) == ("POST", SDEPS)
    assert errors(post.body) == []
    assert post.body["spec"] == _v("3")["spec"]
    assert seldon.PREVIOUS_SPEC_ANNOTATION not in post.body["metadata"].get("annotations", {})
    assert result["state"] == "Available" and result["version"] == "3"
    assert result["versions"] == {"main": "3"} and result["previous_version"] is None
    assert result["endpoint"] == MAIN_URL
    reads = [r for r in fake.requests if r.method == "GET" and r.path == f"{SDEPS}/flights"]
    assert len(reads) >= 3  # no status, Creating, Available (+ the reads around the writes)
    assert fake.states_written("flights") == ["Creating", "Available"]
    assert "observedGeneration" not in _live(fake)["status"]  # seldon-core 1.17.1 never writes it


def test_deferral_records_the_previous_spec_on_the_object_and_the_write_it_waits_for(seldon_conn):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    before = json.loads(json.dumps(_live(fake)))
    op = DeployOperator(task_id="deploy", manifest=_v("4"), deferrable=True, ready_timeout=120)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert not deferred.kwargs  # a plain execute_complete(context, event) resumes: all is on the object
    _, kwargs = deferred.trigger.serialize()
    assert kwargs["mode"] == "kubernetes" and kwargs["namespace"] == NAMESPACE
    assert kwargs["kubernetes_conn_id"] == CONN_ID
    assert kwargs["timeout_at"] is not None
    assert deferred.timeout.total_seconds() > 120  # Airflow's backstop comes after the trigger's deadline
    # the new object is already applied (replace keeping the resourceVersion it read)...
    put = _writes(fake)[-1]
    assert (
        put.method == "PUT"
        and put.body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    )
    assert seldon.recorded_previous(put.body) == seldon.spec_for_rollback(before)
    assert seldon.rollout_version(put.body) == "4"
    # ...and the trigger knows which write it waits for: the status still there is version 3's
    assert kwargs["written"] == {
        "resource_version": _live(fake)["metadata"]["resourceVersion"],
        "changes_pods": True,
    }
    assert _live(fake)["status"]["state"] == "Available"


def test_the_previous_specs_status_is_not_taken_for_the_new_ones(seldon_conn):
    """Right after a replace the object still carries the status the operator wrote for the previous
    spec — ``Available`` — and nothing in it says so (no observedGeneration): only the write's
    resourceVersion does. Without it the rollout of a version that never comes up succeeded at once."""
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    fake.scenario.seldon_reconcile_lag = 6  # a busy operator: 6 reads (3 × get + state) before it reconciles
    fake.scenario.seldon_pods = _crashes("4")
    rollout = _rollout()
    started = rollout.start(_v("4"))

    for _ in range(3):  # the operator has not reconciled version 4 yet
        live = rollout.hook.get("flights")
        assert live["status"]["state"] == "Available" and "observedGeneration" not in live["status"]
        assert seldon.deployment_state(live) == ("Available", "all predictors are available")  # the old check
        state, message = rollout.hook.state("flights", written=started.written)
        assert state == "Creating" and "has not reported on the new spec" in message
    assert fake.states_written("flights", after=started.written["resource_version"]) == []
    # once it has, its status is about version 4: Creating, the new pods crash behind the ready old one
    for _ in range(3):
        state, message = rollout.hook.state("flights", written=started.written)
    assert state == "Creating"
    assert set(fake.states_written("flights", after=started.written["resource_version"])) == {"Creating"}


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_crash_looping_new_version_behind_the_ready_old_one_times_out_and_rolls_back(
    seldon_conn, deferrable
):
    """seldon-core 1.17.1 reports Failed only for a Deployment neither progressing nor available: while
    the old pods serve, the Deployment stays available, even past its progress deadline, so the state
    stays Creating — no premature success, no Failed — until the rollout's own timeout rolls back."""
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    before = json.loads(json.dumps(_live(fake)))
    fake.scenario.seldon_pods = _crashes("4")
    fake.scenario.seldon_progress_deadline_polls = 2

    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("4"), deferrable=deferrable, ready_timeout=3))

    message = str(info.value)
    assert "SeldonDeployment training/flights (version 4) did not become Available in time" in message
    assert "flights-main-0-model: 1/2 replicas available" in message  # the old pod serves, the new crashes
    assert "Rolled back to the previous spec (version 3)" in message
    rollout_put, restore_put = _writes(fake)[-2:]
    written_at = json.loads(json.dumps(rollout_put.body))["metadata"]["resourceVersion"]
    # what the operator reported for version 4: Creating only, though the progress deadline passed
    states = fake.states_written("flights", after=written_at)
    assert states and set(states) == {"Creating"}, states
    deployment = fake.objects[("Deployment", NAMESPACE, "flights-main-0-model")]
    conditions = {c["type"]: c for c in deployment["status"]["conditions"]}
    assert conditions["Progressing"]["reason"] == "ProgressDeadlineExceeded"
    assert conditions["Available"]["status"] == "True"
    # the restore: the spec before, replacing the object version it read (optimistic concurrency)
    assert errors(rollout_put.body) == [] and errors(restore_put.body) == []
    body = json.loads(json.dumps(restore_put.body))
    assert body["metadata"].pop("resourceVersion")
    assert body == seldon.spec_for_rollback(before)
    assert _live(fake)["spec"] == before["spec"]
    # and the old pods, which never stopped, serve again
    rollout = _rollout()
    for _ in range(4):
        state = rollout.status("flights")[0]
    assert state == "Available"
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert template[seldon.VERSION_LABEL] == "3"


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_truly_failed_first_deploy_is_detected_and_deleted(seldon_conn, deferrable):
    """No old pods to fall back on: the Deployment is not available, and once its progress deadline
    passes it is not progressing either — the operator says Failed, and the rollout deletes it."""
    fake = seldon_conn
    fake.scenario.seldon_pods = "crashloop"
    fake.scenario.seldon_progress_deadline_polls = 3
    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("3"), deferrable=deferrable))
    message = str(info.value)
    assert "(version 3) became Failed: Deployment is no longer progressing and not available." in message
    assert "MinimumReplicasUnavailable" in message
    assert "no previous deployment, so the new SeldonDeployment was deleted" in message
    assert [r.method for r in _writes(fake)] == ["POST", "DELETE"]
    assert ("SeldonDeployment", NAMESPACE, "flights") not in fake.objects
    # what it owned went with it (garbage collection)
    assert fake.of_kind("Deployment", NAMESPACE) == [] and fake.of_kind("Service", NAMESPACE) == []


def test_a_failing_canary_is_detected_and_the_spec_before_restored(seldon_conn):
    """A canary is a new predictor, so a new Deployment with no ready pod: it fails for real."""
    fake = seldon_conn
    fake.scenario.seldon_progress_deadline_polls = 3
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    before = json.loads(json.dumps(_live(fake)))
    fake.scenario.seldon_pods = _crashes("4")
    with pytest.raises(DeploymentError, match=r"became Failed: .*flights-canary-0-model: 0/1 replicas"):
        _run(DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10))))
    assert _live(fake)["spec"] == before["spec"]


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_reconcile_error_fails_the_rollout_with_the_operators_message(seldon_conn, deferrable):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    fake.scenario.seldon_outcome = lambda obj: (
        "Failed" if "4" in seldon.predictor_versions(obj).values() else "x"
    )
    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("4"), deferrable=deferrable))
    assert f"(version 4) became Failed: {RECONCILE_ERROR}" in str(info.value)
    assert "Rolled back to the previous spec (version 3)" in str(info.value)
    assert seldon.predictor_versions(_live(fake)) == {"main": "3"}


def test_a_timed_out_new_version_is_rolled_back_too(seldon_conn):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    before = json.loads(json.dumps(_live(fake)))
    fake.scenario.seldon_creating_polls = 10_000

    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("4"), deferrable=True, ready_timeout=0.3))

    message = str(info.value)
    assert "(version 4) did not become Available in time" in message
    assert "Rolled back to the previous spec (version 3)" in message
    restore_put = _writes(fake)[-1]
    body = json.loads(json.dumps(restore_put.body))
    body["metadata"].pop("resourceVersion")
    assert body == seldon.spec_for_rollback(before)


def test_sync_timeout_rolls_back(seldon_conn):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    fake.scenario.seldon_creating_polls = 10_000
    with pytest.raises(DeploymentError, match=r"not Available within 0 s.*Rolled back .*version 3"):
        _run(DeployOperator(task_id="deploy", manifest=_v("4"), ready_timeout=0.2))
    assert seldon.predictor_versions(_live(fake)) == {"main": "3"}


def test_a_deployment_deleted_while_waiting_fails_the_rollout(seldon_conn):
    fake = seldon_conn
    fake.scenario.seldon_creating_polls = 10_000
    op = DeployOperator(task_id="deploy", manifest=_v("3"), deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    del fake.objects[("SeldonDeployment", NAMESPACE, "flights")]  # kubectl delete sdep flights

    async def first_event():
        async for event in info.value.trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), 30)).payload
    assert (event["status"], event["state"]) == ("failed", "Failed")
    assert "does not exist" in event["message"]
    with pytest.raises(DeploymentError, match="does not exist"):
        op.execute_complete(make_context(), event=event)


# --- what the Seldon operator creates ---------------------------------------------------


def test_services_and_deployments_are_named_and_labelled_as_the_seldon_operator_does(seldon_conn):
    """``<sdep>-<predictor>`` (the executor, port 8000), ``<sdep>-<predictor>-<container>`` and the
    Deployment ``<sdep>-<predictor>-0-<containers>``, all ``seldon-deployment-id=<sdep>``, listed
    through the real client with label selectors; the address is the first predictor's Service."""
    from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook

    fake = seldon_conn
    result = _run(
        DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10)))
    )
    assert result["endpoint"] == MAIN_URL
    kube = SeldonDeploymentHook(CONN_ID).kube  # the cncf-kubernetes hook and its real clients
    core, apps = kube.core_v1_client, kube.apps_v1_client

    def services(selector: str) -> set[str]:
        return {
            s.metadata.name for s in core.list_namespaced_service(NAMESPACE, label_selector=selector).items
        }

    assert services("seldon-deployment-id=flights") == {
        "flights-main",
        "flights-main-model",
        "flights-canary",
        "flights-canary-model",
    }
    assert services("seldon-app=flights-canary") == {"flights-canary", "flights-canary-model"}
    assert services("seldon-deployment-id=flights,seldon.io/model") == {
        "flights-main-model",
        "flights-canary-model",
    }
    assert services("seldon-deployment-id in (other)") == set()
    executor = core.read_namespaced_service("flights-main", NAMESPACE)
    assert [(p.name, p.port) for p in executor.spec.ports] == [("http", 8000), ("grpc", 5001)]
    deployments = apps.list_namespaced_deployment(NAMESPACE, label_selector="seldon-deployment-id=flights")
    assert {d.metadata.name for d in deployments.items} == {"flights-main-0-model", "flights-canary-0-model"}
    versions = apps.list_namespaced_deployment(NAMESPACE, label_selector=f"{seldon.VERSION_LABEL}=4")
    assert {d.metadata.name for d in versions.items} == {
        "flights-canary-0-model"
    }  # predictor labels go along
    assert set(_live(fake)["status"]["serviceStatus"]) == services("seldon-deployment-id=flights")

    # promoting the canary removes main's Deployment, then (a reconcile later) its Services; the
    # address moves to the canary's Service
    promoted = _rollout().promote_canary("flights")
    assert (
        promoted["endpoint"]
        == f"http://flights-canary.{NAMESPACE}.svc.cluster.local:8000/api/v1.0/predictions"
    )
    for _ in range(3):
        _rollout().status("flights")
    assert services("seldon-deployment-id=flights") == {"flights-canary", "flights-canary-model"}
    assert _names(fake.of_kind("Deployment", NAMESPACE)) == {"flights-canary-0-model"}


def test_a_new_traffic_split_alone_succeeds_though_the_operator_writes_no_status(seldon_conn):
    """The operator zeroes the traffic in what it deploys: a new split changes no Deployment, so it
    finds nothing to update and writes no status. The rollout must not wait for one."""
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    _run(DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10))))
    writes = len(fake.status_log)
    result = _run(
        DeployOperator(
            task_id="deploy", manifest=_manifest(("main", "3", 80), ("canary", "4", 20)), ready_timeout=2
        )
    )
    assert [p["traffic"] for p in result["predictors"]] == [80, 20]
    assert len(fake.status_log) == writes  # no status written for it: the Available before holds


# --- canary, promotion, rollback -------------------------------------------------------


def test_canary_then_promote(seldon_conn):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    result = _run(
        DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10)))
    )
    assert result["versions"] == {"main": "3", "canary": "4"}
    assert result["previous_version"] == "3"
    canary_spec = json.loads(json.dumps(_live(fake)))

    promoted = _rollout().promote_canary("flights")

    put = _writes(fake)[-1]
    assert put.method == "PUT" and errors(put.body) == []
    (p,) = put.body["spec"]["predictors"]
    assert (p["name"], p["traffic"], p["labels"][seldon.VERSION_LABEL]) == ("canary", 100, "4")
    assert put.body["metadata"]["labels"][seldon.VERSION_LABEL] == "4"
    assert seldon.recorded_previous(put.body) == seldon.spec_for_rollback(canary_spec)
    assert promoted["versions"] == {"canary": "4"} and promoted["state"] == "Available"
    assert promoted["previous_version"] == "main=3 (90%), canary=4 (10%)"


def test_promote_without_a_canary_is_refused(seldon_conn):
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    rollout = _rollout()
    with pytest.raises(DeploymentError, match="has no canary or shadow to promote"):
        rollout.promote_canary("flights")
    with pytest.raises(DeploymentError, match="no predictor 'blue'"):
        rollout.promote_canary("flights", canary="blue")
    with pytest.raises(DeploymentError, match="does not exist"):
        rollout.promote_canary("other")


def test_a_failing_promotion_restores_the_canary_spec(seldon_conn):
    fake = seldon_conn
    _run(DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10))))
    canary_spec = json.loads(json.dumps(_live(fake)))
    # the operator cannot reconcile version 4 alone (e.g. a resource it needs is missing)
    fake.scenario.seldon_outcome = lambda obj: (
        "Failed" if seldon.predictor_versions(obj) == {"canary": "4"} else "Available"
    )
    with pytest.raises(
        DeploymentError,
        match=r"\(version 4\) became Failed.*Rolled back to the previous spec "
        r"\(version main=3 \(90%\), canary=4 \(10%\)\)",
    ):
        _rollout().promote_canary("flights")
    assert _live(fake)["spec"] == canary_spec["spec"]


def test_rollback_to_the_recorded_previous_spec_and_to_a_version(seldon_conn):
    fake = seldon_conn
    rollout = _rollout()
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    with pytest.raises(DeploymentError, match="no recorded previous spec"):
        rollout.rollback("flights")

    _run(DeployOperator(task_id="deploy", manifest=_v("4")))
    result = rollout.rollback("flights")  # the spec version 4 replaced
    assert result["versions"] == {"main": "3"} and result["previous_version"] == "4"
    assert seldon.predictor_versions(_live(fake)) == {"main": "3"}
    assert errors(_writes(fake)[-1].body) == []

    # during a canary, "back to version 3" keeps only the predictor serving it
    _run(DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "5", 10))))
    result = rollout.rollback("flights", to_version="3")
    assert result["versions"] == {"main": "3"}
    assert _live(fake)["spec"]["predictors"][0]["traffic"] == 100

    # a version found only in the recorded previous spec (the canary one)
    result = rollout.rollback("flights", to_version=5)
    assert result["versions"] == {"canary": "5"}

    with pytest.raises(DeploymentError, match="Version 9 is neither in the live spec"):
        rollout.rollback("flights", to_version="9")


# --- the hook on its own ---------------------------------------------------------------


def test_hook_reads_writes_and_handles_conflicts(seldon_conn):
    fake = seldon_conn
    from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook
    from kubernetes.client.exceptions import ApiException

    hook = SeldonDeploymentHook(CONN_ID)
    assert hook.namespace == NAMESPACE  # from the kubernetes connection's extra
    assert hook.get("flights") is None
    assert hook.state("flights")[0] == "Failed"
    assert hook.delete("flights") is False
    assert hook.apply(_v("3")) is None

    created = hook.get("flights")
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # the operator has not reconciled it yet
    # someone else changed it since: a replace with the old resourceVersion is refused...
    stale = created["metadata"]["resourceVersion"]
    previous, written = hook.write(_v("4"))
    assert seldon.predictor_versions(previous) == {"main": "3"}
    assert written["metadata"]["resourceVersion"] != stale and written["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as info:
        hook._replace("flights", hook._body(_v("5")), stale)
    assert info.value.status == 409
    # ...while apply reads the current one first
    previous = hook.apply(_v("5"))
    assert seldon.predictor_versions(previous) == {"main": "4"}
    assert hook.get("flights")["metadata"]["generation"] == 3

    with pytest.raises(ValueError, match="namespace 'other'"):
        hook.apply(
            seldon.render_seldon_deployment(
                "flights", "other", image=IMAGE, model_uri="s3://m", predictors=[{"name": "a"}]
            )
        )

    assert hook.restore("flights", None) is None  # nothing before: delete
    assert hook.get("flights") is None
    restored = hook.restore("flights", seldon.spec_for_rollback(created))  # recreated when gone
    assert seldon.predictor_versions(restored) == {"main": "3"}
    assert [r.method for r in _writes(fake)][-2:] == ["DELETE", "POST"]


# --- deploy(): what a deploy operator's arguments roll out ------------------------------------


class ArgsDeployOperator(BaseOperator):
    """A deploy operator with the arguments of ``SeldonDeployOperator`` (Kubernetes mode only)."""

    def __init__(self, *, version: str, traffic: int = 100, shadow: bool = False, deferrable=False, **kwargs):
        kwargs.setdefault("task_id", "deploy")
        super().__init__(**kwargs)
        self.version = version
        self.traffic = traffic
        self.shadow = shadow
        self.deferrable = deferrable

    def _rollout(self):
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.kubernetes.seldon_rollout import KubernetesRollout

        # a hook works as well as its id
        return KubernetesRollout(SeldonHook(SELDON_CONN_ID), ready_timeout=30, poll_interval=0.05)

    def execute(self, context):
        from airflow_mlops.kubernetes.seldon_rollout import SeldonDeploySpec

        spec = SeldonDeploySpec(
            deployment_name="flights",
            version=self.version,
            model_uri=f"models:/flights_delay/{self.version}",
            traffic=self.traffic,
            shadow=self.shadow,
            replicas=2,
            container_resources={"cpu": "1", "memory": "2Gi"},
            model_name="flights_delay",
            image=None,  # from the connection's extras
        )
        rollout = self._rollout()
        started = rollout.deploy(spec)
        if started.result is None and self.deferrable:
            self.defer(
                trigger=rollout.trigger(started),
                method_name="execute_complete",
                timeout=rollout.defer_timeout,
            )
        return rollout.finish(started)

    def execute_complete(self, context, event=None):
        return self._rollout().complete(event)


@pytest.fixture
def seldon_image_conn(seldon_conn, monkeypatch):
    conn = {
        "conn_type": "seldon",
        "extra": {
            "mode": "kubernetes",
            "kubernetes_conn_id": CONN_ID,
            "namespace": NAMESPACE,
            "image": IMAGE,
            "env_from_secret": "mlflow-env",
            "request_logger_url": "http://logger.seldon-logs",
        },
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SELDON_CONN_ID.upper()}", json.dumps(conn))
    return seldon_conn


def test_deploy_replace_then_canary_then_shadow_compose_with_the_live_spec(seldon_image_conn):
    fake = seldon_image_conn
    result = _run(ArgsDeployOperator(version="3"))
    (post,) = _writes(fake)
    assert errors(post.body) == []
    (main,) = post.body["spec"]["predictors"]
    assert (main["name"], main["traffic"], main["replicas"]) == ("main", 100, 2)
    (container,) = main["componentSpecs"][0]["spec"]["containers"]
    assert container["image"] == IMAGE and container["envFrom"] == [{"secretRef": {"name": "mlflow-env"}}]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert {e["name"]: e["value"] for e in container["env"]}["MODEL_NAME"] == "flights_delay"
    assert main["graph"]["logger"] == {"mode": "all", "url": "http://logger.seldon-logs"}
    assert result["predictors"] == [{"name": "main", "version": "3", "traffic": 100, "shadow": False}]
    assert result["changed"] is True and result["predict_url"] == result["endpoint"] == MAIN_URL

    result = _run(ArgsDeployOperator(version="4", traffic=10, deferrable=True))
    put = _writes(fake)[-1]
    assert errors(put.body) == []
    assert [(p["name"], p["traffic"]) for p in put.body["spec"]["predictors"]] == [
        ("main", 90),
        ("canary", 10),
    ]
    assert put.body["spec"]["predictors"][0] == {**main, "traffic": 90}  # the live main, untouched
    assert put.body["metadata"]["labels"][seldon.VERSION_LABEL] == "3"  # main still serves most
    assert seldon.rollout_version(put.body) == "4"
    assert result["version"] == "4" and result["versions"] == {"main": "3", "canary": "4"}

    result = _run(ArgsDeployOperator(version="5", shadow=True))
    put = _writes(fake)[-1]
    assert errors(put.body) == []
    assert [(p["name"], p.get("traffic"), p.get("shadow")) for p in put.body["spec"]["predictors"]] == [
        ("main", 90, None),
        ("canary", 10, None),
        ("shadow", None, True),
    ]
    assert result["predictors"][-1] == {"name": "shadow", "version": "5", "traffic": 0, "shadow": True}
    shadow = fake.objects[("Deployment", NAMESPACE, "flights-shadow-0-model")]
    assert shadow["spec"]["template"]["metadata"]["labels"]["seldon.io/shadow"] == "true"

    # a new canary replaces the old one and keeps the shadow
    _run(ArgsDeployOperator(version="6", traffic=20))
    put = _writes(fake)[-1]
    assert seldon.describe_versions(put.body) == "main=3 (80%), shadow=5 (shadow), canary=6 (20%)"


def test_deploy_retry_of_what_already_serves_changes_nothing(seldon_image_conn):
    fake = seldon_image_conn
    _run(ArgsDeployOperator(version="3"))
    _run(ArgsDeployOperator(version="4", traffic=10))
    writes = len(_writes(fake))
    result = _run(ArgsDeployOperator(version="4", traffic=10, deferrable=True))
    assert len(_writes(fake)) == writes
    assert result["changed"] is False and result["versions"] == {"main": "3", "canary": "4"}


def test_deploy_canary_after_a_promotion_alternates_predictor_names(seldon_image_conn):
    fake = seldon_image_conn
    _run(ArgsDeployOperator(version="3"))
    _run(ArgsDeployOperator(version="4", traffic=10))
    _rollout().promote_canary("flights")
    assert seldon.predictor_versions(_live(fake)) == {"canary": "4"}
    _run(ArgsDeployOperator(version="5", traffic=10))
    assert seldon.predictor_versions(_live(fake)) == {"canary": "4", "main": "5"}
    assert _rollout().status("flights")[0] in ("Creating", "Available")


def test_deploy_canary_without_a_live_deployment_is_refused(seldon_image_conn):
    with pytest.raises(DeploymentError, match="A canary joins a serving deployment, but SeldonDeployment"):
        _run(ArgsDeployOperator(version="4", traffic=10))
    assert _writes(seldon_image_conn) == []


def test_deploy_with_the_prepackaged_server_refuses_registry_uris(seldon_conn):
    with pytest.raises(ValueError, match="cannot download 'models:/flights_delay/3'"):
        _run(ArgsDeployOperator(version="3"))


def test_the_real_deploy_promote_and_rollback_operators_in_kubernetes_mode(seldon_image_conn):
    """SeldonDeployOperator / SeldonPromoteCanaryOperator / SeldonRollbackOperator themselves, routed
    to Kubernetes by the connection; each builds its rollout and defers itself when deferrable."""
    from airflow_mlops.operators.deploy import (
        SeldonDeployOperator,
        SeldonPromoteCanaryOperator,
        SeldonRollbackOperator,
    )

    fake = seldon_image_conn
    common = {
        "deployment_name": "flights",
        "model_name": "flights_delay",
        "ready_timeout": 30,
        "seldon_conn_id": SELDON_CONN_ID,
        "poll_interval": 0.05,
    }
    for version, traffic in (("3", 100), ("4", 100), ("5", 10)):
        op = SeldonDeployOperator(
            task_id="deploy",
            version=version,
            model_uri=f"s3://models/flights/{version}",
            traffic=traffic,
            deferrable=True,
            **common,
        )
        result = _run(op)
        assert result["version"] == version and result["changed"] is True
        assert errors(_writes(fake)[-1].body) == []
    promote = SeldonPromoteCanaryOperator(
        task_id="promote", seldon_conn_id=SELDON_CONN_ID, deployment_name="flights", poll_interval=0.05
    )
    assert _run(promote)["versions"] == {"canary": "5"}
    rolled = _run(
        SeldonRollbackOperator(
            task_id="rollback",
            seldon_conn_id=SELDON_CONN_ID,
            deployment_name="flights",
            ready_timeout=30,
            poll_interval=0.05,
            deferrable=True,  # honoured in Kubernetes mode too
        )
    )
    assert rolled["versions"] == {"main": "4", "canary": "5"}  # the spec the promotion replaced
    rolled = _run(
        SeldonRollbackOperator(
            task_id="rollback",
            seldon_conn_id=SELDON_CONN_ID,
            deployment_name="flights",
            to_version="4",
            ready_timeout=30,
            poll_interval=0.05,
        )
    )
    assert rolled["version"] == "4" and rolled["versions"] == {"main": "4"}
    container = _live(fake)["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]}["MODEL_URI"] == "s3://models/flights/4"


def test_the_sensor_reads_the_deployment_through_the_rollouts_home(seldon_image_conn):
    from airflow_mlops.sensors.seldon import SeldonDeploymentSensor

    _run(ArgsDeployOperator(version="3"))
    sensor = SeldonDeploymentSensor(task_id="ready", deployment_name="flights", seldon_conn_id=SELDON_CONN_ID)
    assert sensor.poke(make_context()) is True


def test_seldon_connection_test_lists_deployments_in_kubernetes_mode(seldon_image_conn, monkeypatch):
    from airflow_mlops.hooks.seldon import SeldonHook

    _run(ArgsDeployOperator(version="3"))
    ok, message = SeldonHook(SELDON_CONN_ID).test_connection()
    assert ok and "'flights'" in message and NAMESPACE in message, message
    broken = {"conn_type": "seldon", "extra": {"mode": "kubernetes", "kubernetes_conn_id": "nowhere"}}
    monkeypatch.setenv("AIRFLOW_CONN_SELDON_BROKEN", json.dumps(broken))
    ok, message = SeldonHook("seldon_broken").test_connection()
    assert not ok and "cannot list SeldonDeployments" in message


# --- the MLOps view's deployments list ------------------------------------------------------------


def test_mlops_view_lists_kubernetes_deployments_with_their_live_state(seldon_image_conn, monkeypatch):
    """What ``/mlops/api/deployments`` adds for Kubernetes: the deploy tasks' results + live status."""
    from airflow_mlops.plugins import sources

    fake = seldon_image_conn
    xcoms = []  # as sources.xcoms returns them: newest first
    for i, op in enumerate([ArgsDeployOperator(version="3"), ArgsDeployOperator(version="4", traffic=10)]):
        xcoms.insert(0, {"dag_id": "flights", "run_id": f"r{i}", "task_id": "deploy", "value": _run(op)})
    assert seldon.registered_model(_live(fake)) == "flights_delay"  # recorded on the object
    xcoms.append({"dag_id": "other", "run_id": "r", "task_id": "t", "value": {"mode": "local"}})

    (listed,) = sources.kubernetes_deployments(xcoms)
    assert (listed["name"], listed["namespace"], listed["mode"]) == ("flights", NAMESPACE, "kubernetes")
    assert listed["model_name"] == "flights_delay"
    assert listed["version"] == "3" and listed["previous_version"] == "3"  # the main one serves most
    assert listed["traffic"] == [
        {"version": "3", "percent": 90},
        {"version": "4", "percent": 10, "role": "canary"},
    ]
    assert listed["endpoint"] == MAIN_URL
    assert listed["health"] == "healthy", listed["health_message"]

    def reads() -> int:
        return len([r for r in fake.requests if r.method == "GET" and r.path == f"{SDEPS}/flights"])

    before = reads()
    fake.scenario.seldon_outcome = "Failed"  # the Seldon operator's reconcile now fails
    (listed,) = sources.kubernetes_deployments(xcoms)
    assert listed["health"] == "unhealthy"
    assert RECONCILE_ERROR in listed["health_message"]
    assert reads() == before + 1  # one status read per listing

    del fake.objects[("SeldonDeployment", NAMESPACE, "flights")]  # deleted outside Airflow
    assert sources.kubernetes_deployments(xcoms)[0]["health"] == "stopped"
    assert sources.kubernetes_deployments(xcoms, health=False)[0]["health"] is None

    # a cluster that does not answer: listed, health unknown, with the reason
    moved = [{**x, "value": {**x["value"], "kubernetes_conn_id": "no_such_cluster"}} for x in xcoms[:2]]
    (listed,) = sources.kubernetes_deployments(moved)
    assert listed["health"] == "unknown" and "no_such_cluster" in listed["health_message"]


def test_kubernetes_deploys_name_the_seldondeployment_by_its_cluster_and_namespace_in_lineage(
    seldon_image_conn,
):
    """OpenLineage: the deployment is ``seldon://<API server>`` + ``<namespace>/<name>``, also after a
    deferral (the result of ``execute_complete`` is what the lineage reads)."""
    from airflow_mlops import lineage
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    fake = seldon_image_conn
    op = SeldonDeployOperator(
        task_id="deploy",
        deployment_name="flights",
        model_uri="s3://models/flights/3",
        version="3",
        ready_timeout=30,
        seldon_conn_id=SELDON_CONN_ID,
        poll_interval=0.05,
        deferrable=True,
    )
    host = fake.url.split("://", 1)[1]
    expected = (f"seldon://{host}", f"{NAMESPACE}/flights")
    assert [(d.namespace, d.name) for d in op.get_openlineage_facets_on_start().outputs] == [expected]
    result = _run(op)
    done = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in done.inputs] == [("s3://models", "flights/3")]
    (deployment,) = done.outputs
    assert (
        (deployment.namespace, deployment.name)
        == expected
        == lineage.deployment_dataset("flights", mode="kubernetes", host=host, k8s_namespace=NAMESPACE)
    )
    facet = deployment.facets["airflowMlops_deployment"]
    assert (facet.mode, facet.version, facet.endpoint) == ("kubernetes", "3", result["endpoint"])
    assert facet.predictors == [{"name": "main", "version": "3", "traffic": 100, "shadow": False}]
