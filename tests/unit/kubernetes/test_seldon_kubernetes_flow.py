"""Kubernetes mode of a Seldon deployment against the fake Kubernetes API server (``fake_apiserver.py``).

Everything goes over HTTP through the cncf-kubernetes hooks to the fake, which scripts the Seldon
operator's ``status.state`` (``Creating`` for a few reads, then ``Available`` or ``Failed``) and
records every request; what is POSTed/PUT is validated against the SeldonDeployment CRD schema.
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
from fake_apiserver import Scenario
from test_seldon_manifests import errors

SELDON_CONN_ID = "seldon_k8s"
SDEPS = f"/apis/machinelearning.seldon.io/v1/namespaces/{NAMESPACE}/seldondeployments"
IMAGE = "registry.example/airflow-mlops-serving:1.0"


@pytest.fixture
def seldon_conn(fake, monkeypatch):
    """A ``seldon`` connection in Kubernetes mode pointing at the fake's ``kubernetes`` connection."""
    conn = {
        "conn_type": "seldon",
        "extra": {"mode": "kubernetes", "kubernetes_conn_id": CONN_ID, "namespace": NAMESPACE},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SELDON_CONN_ID.upper()}", json.dumps(conn))
    fake.scenario = Scenario(seldon_creating_polls=2, seldon_outcome="Available")
    return fake


class DeployOperator(BaseOperator):
    """How a deploy operator drives the rollout (the module docstring's example)."""

    def __init__(self, *, manifest: dict, deferrable: bool = False, ready_timeout: float = 30, **kwargs):
        super().__init__(**kwargs)
        self.manifest = manifest
        self.deferrable = deferrable
        self.ready_timeout = ready_timeout

    def _rollout(self):
        from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

        return KubernetesRollout(SELDON_CONN_ID, ready_timeout=self.ready_timeout, poll_interval=0.05)

    def execute(self, context):
        return self._rollout().start(self, context, self.manifest)

    def execute_complete(self, context, event=None):
        return self._rollout().complete(event)


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


def _run(op: DeployOperator):
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


def _fails_version(version: str):
    """A scripted operator status: pods of ``version`` never become available, others do."""

    def outcome(obj: dict) -> str:
        versions = seldon.predictor_versions(obj).values()
        return "Failed" if version in versions else "Available"

    return outcome


def _live(fake) -> dict:
    return fake.objects[("SeldonDeployment", NAMESPACE, "flights")]


def _writes(fake) -> list:
    return [r for r in fake.requests if r.method in ("POST", "PUT", "DELETE") and r.path.startswith(SDEPS)]


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
    assert result["endpoint"].startswith("http://flights-default.training.svc")
    reads = [r for r in fake.requests if r.method == "GET" and r.path == f"{SDEPS}/flights"]
    assert len(reads) >= 3  # Creating, Creating, Available (+ the reads around the writes)


def test_deferral_records_the_previous_spec_on_the_object_and_sets_a_deadline(seldon_conn):
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
    # the new object is already applied (replace keeping the resourceVersion it read)
    put = _writes(fake)[-1]
    assert (
        put.method == "PUT"
        and put.body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    )
    assert seldon.recorded_previous(put.body) == seldon.spec_for_rollback(before)
    assert seldon.rollout_version(put.body) == "4"


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_failed_new_version_restores_the_previous_spec(seldon_conn, deferrable):
    fake = seldon_conn
    fake.scenario.seldon_outcome = _fails_version("4")
    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    before = json.loads(json.dumps(_live(fake)))

    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("4"), deferrable=deferrable))

    message = str(info.value)
    assert "SeldonDeployment training/flights (version 4) became Failed" in message
    assert "does not have minimum availability" in message
    assert "Rolled back to the previous spec (version 3)" in message
    rollout_put, restore_put = _writes(fake)[-2:]
    assert errors(rollout_put.body) == [] and errors(restore_put.body) == []
    body = json.loads(json.dumps(restore_put.body))
    # optimistic concurrency: the restore replaced the object version the rollout wrote
    assert body["metadata"].pop("resourceVersion") == str(int(before["metadata"]["resourceVersion"]) + 1)
    assert body == seldon.spec_for_rollback(before)
    assert _live(fake)["spec"] == before["spec"]
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


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_failing_first_deploy_is_deleted(seldon_conn, deferrable):
    fake = seldon_conn
    fake.scenario.seldon_outcome = "Failed"
    with pytest.raises(DeploymentError) as info:
        _run(DeployOperator(task_id="deploy", manifest=_v("3"), deferrable=deferrable))
    assert "(version 3) became Failed" in str(info.value)
    assert "no previous deployment, so the new SeldonDeployment was deleted" in str(info.value)
    assert [r.method for r in _writes(fake)] == ["POST", "DELETE"]
    assert ("SeldonDeployment", NAMESPACE, "flights") not in fake.objects


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


# --- canary, promotion, rollback -------------------------------------------------------


def test_canary_then_promote(seldon_conn):
    fake = seldon_conn
    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    result = _run(
        DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10)))
    )
    assert result["versions"] == {"main": "3", "canary": "4"}
    assert result["previous_version"] == "3"
    canary_spec = json.loads(json.dumps(_live(fake)))

    rollout = KubernetesRollout(SELDON_CONN_ID, poll_interval=0.05, ready_timeout=30)
    promoted = rollout.promote_canary("flights")

    put = _writes(fake)[-1]
    assert put.method == "PUT" and errors(put.body) == []
    (p,) = put.body["spec"]["predictors"]
    assert (p["name"], p["traffic"], p["labels"][seldon.VERSION_LABEL]) == ("canary", 100, "4")
    assert put.body["metadata"]["labels"][seldon.VERSION_LABEL] == "4"
    assert seldon.recorded_previous(put.body) == seldon.spec_for_rollback(canary_spec)
    assert promoted["versions"] == {"canary": "4"} and promoted["state"] == "Available"
    assert promoted["previous_version"] == "main=3 (90%), canary=4 (10%)"


def test_promote_without_a_canary_is_refused(seldon_conn):
    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    _run(DeployOperator(task_id="deploy", manifest=_v("3")))
    rollout = KubernetesRollout(SELDON_CONN_ID, poll_interval=0.05)
    with pytest.raises(DeploymentError, match="has no canary or shadow to promote"):
        rollout.promote_canary("flights")
    with pytest.raises(DeploymentError, match="no predictor 'blue'"):
        rollout.promote_canary("flights", canary="blue")
    with pytest.raises(DeploymentError, match="does not exist"):
        rollout.promote_canary("other")


def test_a_failing_promotion_restores_the_canary_spec(seldon_conn):
    fake = seldon_conn
    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    _run(DeployOperator(task_id="deploy", manifest=_manifest(("main", "3", 90), ("canary", "4", 10))))
    canary_spec = json.loads(json.dumps(_live(fake)))
    # version 4 alone does not come up (e.g. it needs more replicas than the canary had)
    fake.scenario.seldon_outcome = lambda obj: (
        "Failed" if seldon.predictor_versions(obj) == {"canary": "4"} else "Available"
    )
    with pytest.raises(
        DeploymentError,
        match=r"\(version 4\) became Failed.*Rolled back to the previous spec "
        r"\(version main=3 \(90%\), canary=4 \(10%\)\)",
    ):
        KubernetesRollout(SELDON_CONN_ID, poll_interval=0.05).promote_canary("flights")
    assert _live(fake)["spec"] == canary_spec["spec"]


def test_rollback_to_the_recorded_previous_spec_and_to_a_version(seldon_conn):
    fake = seldon_conn
    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    rollout = KubernetesRollout(SELDON_CONN_ID, poll_interval=0.05, ready_timeout=30)
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
    assert created["metadata"]["generation"] == 1 and created["status"]["state"] == "Creating"
    # someone else changed it since: a replace with the old resourceVersion is refused...
    stale = created["metadata"]["resourceVersion"]
    hook.apply(_v("4"))
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
        self.deployment_name = "flights"
        self.model_name = "flights_delay"
        self.version = version
        self.traffic = traffic
        self.shadow = shadow
        self.replicas = 2
        self.container_resources = {"cpu": "1", "memory": "2Gi"}
        self.image = None  # from the connection's extras
        self.ready_timeout = 30
        self.deferrable = deferrable

    def _rollout(self):
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

        rollout = KubernetesRollout(SeldonHook(SELDON_CONN_ID))  # a hook works as well as its id
        rollout.poll_interval = 0.05
        return rollout

    def execute(self, context):
        return self._rollout().deploy(self, context, self.version, f"models:/flights_delay/{self.version}")

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
    assert result["changed"] is True and result["predict_url"] == result["endpoint"]

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
    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    _run(ArgsDeployOperator(version="3"))
    _run(ArgsDeployOperator(version="4", traffic=10))
    KubernetesRollout(SELDON_CONN_ID, poll_interval=0.05).promote_canary("flights")
    assert seldon.predictor_versions(_live(fake)) == {"canary": "4"}
    _run(ArgsDeployOperator(version="5", traffic=10))
    assert seldon.predictor_versions(_live(fake)) == {"canary": "4", "main": "5"}
    assert KubernetesRollout(SELDON_CONN_ID).status("flights")[0] in ("Creating", "Available")


def test_deploy_canary_without_a_live_deployment_is_refused(seldon_image_conn):
    with pytest.raises(DeploymentError, match="A canary joins a serving deployment, but SeldonDeployment"):
        _run(ArgsDeployOperator(version="4", traffic=10))
    assert _writes(seldon_image_conn) == []


def test_deploy_with_the_prepackaged_server_refuses_registry_uris(seldon_conn):
    with pytest.raises(ValueError, match="cannot download 'models:/flights_delay/3'"):
        _run(ArgsDeployOperator(version="3"))


def test_the_real_deploy_and_rollback_operators_in_kubernetes_mode(seldon_image_conn):
    """SeldonDeployOperator / SeldonRollbackOperator themselves, routed to Kubernetes by the connection."""
    from airflow_mlops.operators.deploy import SeldonDeployOperator, SeldonRollbackOperator

    fake = seldon_image_conn
    common = {
        "deployment_name": "flights",
        "model_name": "flights_delay",
        "ready_timeout": 30,
        "seldon_conn_id": SELDON_CONN_ID,
        "poll_interval": 0.05,
    }
    for version in ("3", "4"):
        op = SeldonDeployOperator(
            task_id="deploy",
            version=version,
            model_uri=f"s3://models/flights/{version}",
            deferrable=True,
            **common,
        )
        result = _run(op)
        assert result["version"] == version and result["changed"] is True
        assert errors(_writes(fake)[-1].body) == []
    rolled = _run(
        SeldonRollbackOperator(
            task_id="rollback",
            seldon_conn_id=SELDON_CONN_ID,
            deployment_name="flights",
            ready_timeout=30,
            poll_interval=0.05,
        )
    )
    assert rolled["version"] == "3"
    container = _live(fake)["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]}["MODEL_URI"] == "s3://models/flights/3"


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
    assert listed["endpoint"].startswith("http://flights-default.training.svc")
    assert listed["health"] == "healthy", listed["health_message"]

    def reads() -> int:
        return len([r for r in fake.requests if r.method == "GET" and r.path == f"{SDEPS}/flights"])

    before = reads()
    fake.scenario.seldon_outcome = "Failed"  # the Seldon operator reports the pods unavailable
    (listed,) = sources.kubernetes_deployments(xcoms)
    assert listed["health"] == "unhealthy"
    assert "minimum availability" in listed["health_message"]
    assert reads() == before + 1  # one status read per listing

    del fake.objects[("SeldonDeployment", NAMESPACE, "flights")]  # deleted outside Airflow
    assert sources.kubernetes_deployments(xcoms)[0]["health"] == "stopped"
    assert sources.kubernetes_deployments(xcoms, health=False)[0]["health"] is None

    # a cluster that does not answer: listed, health unknown, with the reason
    moved = [{**x, "value": {**x["value"], "kubernetes_conn_id": "no_such_cluster"}} for x in xcoms[:2]]
    (listed,) = sources.kubernetes_deployments(moved)
    assert listed["health"] == "unknown" and "no_such_cluster" in listed["health_message"]
