"""Rendered SeldonDeployment manifests: valid against the CRD schema; traffic, status, rollback helpers.

The schema is ``schemas/seldondeployment-v1.json`` (the CRD's openAPIV3Schema, see its ``$comment``)
made strict like the MPIJob's (unknown fields rejected); each predictor's pod spec is checked
against the core ``PodSpec`` schema and the object's metadata against ``ObjectMeta``, which is what
the CRD embeds. :func:`errors` is also used by the flow tests on what reaches the fake API server.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import k8s_schema
import pytest
from airflow_mlops.kubernetes import seldon

REPO = Path(__file__).resolve().parents[3]
SCHEMA_FILE = k8s_schema.SCHEMAS / "seldondeployment-v1.json"
IMAGE = "registry.example/airflow-mlops-serving:1.0"


@cache
def seldon_schema() -> dict:
    return k8s_schema._strict(json.loads(SCHEMA_FILE.read_text())["openAPIV3Schema"])


def errors(manifest: dict) -> list[str]:
    """Every schema violation of a SeldonDeployment manifest as ``path: message`` (empty when valid)."""
    checks = [("", seldon_schema(), manifest)]
    if isinstance(manifest.get("metadata"), dict):
        checks.append(("metadata", k8s_schema.core_schema("V1ObjectMeta"), manifest["metadata"]))
    for i, predictor in enumerate((manifest.get("spec") or {}).get("predictors") or []):
        for j, component in enumerate(predictor.get("componentSpecs") or []):
            if "spec" in component:
                prefix = f"spec.predictors.{i}.componentSpecs.{j}.spec"
                checks.append((prefix, k8s_schema.core_schema("V1PodSpec"), component["spec"]))
    return k8s_schema.check_errors(checks)


def _canary(**kwargs) -> dict:
    defaults = dict(
        image=IMAGE,
        predictors=[
            {"name": "main", "version": "3", "model_uri": "models:/flights/3", "traffic": 90},
            {"name": "canary", "version": "4", "model_uri": "models:/flights/4", "traffic": 10},
        ],
        env_from_secret="mlflow-env",
    )
    return seldon.render_seldon_deployment("flights", "serving", **{**defaults, **kwargs})


# --- valid manifests ------------------------------------------------------------------


def test_single_predictor_with_the_prepackaged_mlflow_server():
    m = seldon.render_seldon_deployment(
        "flights",
        "serving",
        predictors=[{"name": "main", "version": "3"}],
        model_uri="s3://models/flights/3",
        env_from_secret="s3-credentials",
    )
    assert errors(m) == []
    assert m["apiVersion"] == "machinelearning.seldon.io/v1" and m["kind"] == "SeldonDeployment"
    assert m["metadata"]["namespace"] == "serving"
    assert m["metadata"]["labels"][seldon.VERSION_LABEL] == "3"
    assert m["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "airflow-mlops"
    (p,) = m["spec"]["predictors"]
    assert p["traffic"] == 100 and p["replicas"] == 1 and "shadow" not in p
    assert p["labels"][seldon.VERSION_LABEL] == "3"
    assert p["graph"] == {
        "name": "model",
        "implementation": "MLFLOW_SERVER",
        "modelUri": "s3://models/flights/3",
        "envSecretRefName": "s3-credentials",
    }
    assert "componentSpecs" not in p  # Seldon supplies the server's container


def test_canary_90_10_with_our_serving_image():
    m = _canary(resources={"cpu": "1", "memory": "2Gi"}, replicas=2)
    assert errors(m) == []
    main, canary = m["spec"]["predictors"]
    assert [(p["name"], p["traffic"], p["replicas"]) for p in (main, canary)] == [
        ("main", 90, 2),
        ("canary", 10, 2),
    ]
    assert m["metadata"]["labels"][seldon.VERSION_LABEL] == "3"  # the main predictor's
    for p, version in ((main, "3"), (canary, "4")):
        assert p["graph"] == {"name": "model", "type": "MODEL"}
        assert p["labels"][seldon.VERSION_LABEL] == version
        (component,) = p["componentSpecs"]
        assert component["metadata"]["labels"][seldon.VERSION_LABEL] == version  # on the pods
        (container,) = component["spec"]["containers"]
        assert container["name"] == p["graph"]["name"]  # Seldon pairs node and container by name
        assert container["image"] == IMAGE
        assert container["command"][:5] == [
            "python",
            "/opt/mlops/runtimes/seldon_serve.py",
            "--host",
            "0.0.0.0",
            "seldon_model.MlflowModel",
        ]
        assert {e["name"]: e["value"] for e in container["env"]} == {
            "MODEL_URI": f"models:/flights/{version}",
            "MODEL_VERSION": version,
            "MODEL_NAME": "flights",
        }
        assert container["envFrom"] == [{"secretRef": {"name": "mlflow-env"}}]
        assert container["resources"] == {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": "2Gi"},
        }
    # the two predictors share nothing (a later edit of one must not change the other)
    main["labels"]["x"] = "y"
    assert "x" not in canary["labels"]


def test_the_serving_command_matches_the_serving_image():
    dockerfile = (REPO / "docker/serving/Dockerfile").read_text()
    assert "COPY --chown=seldon:seldon provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/" in dockerfile
    script = seldon.SERVE_COMMAND[1]
    assert (REPO / "provider/airflow_mlops/runtimes" / Path(script).name).is_file()
    assert "class MlflowModel" in (REPO / "provider/airflow_mlops/runtimes/seldon_model.py").read_text()
    assert "--host" in (REPO / "provider/airflow_mlops/runtimes/seldon_serve.py").read_text()


def test_shadow_predictor_gets_no_traffic_and_is_not_counted():
    m = seldon.render_seldon_deployment(
        "flights",
        "serving",
        model_uri="gs://models/flights/3",
        predictors=[
            {"name": "main", "version": "3"},
            {"name": "mirror", "version": "4", "model_uri": "gs://models/flights/4", "shadow": True},
        ],
    )
    assert errors(m) == []
    main, mirror = m["spec"]["predictors"]
    assert main["traffic"] == 100
    assert mirror["shadow"] is True and "traffic" not in mirror
    assert mirror["graph"]["modelUri"] == "gs://models/flights/4"
    assert seldon.describe_versions(m) == "main=3 (100%), mirror=4 (shadow)"


def test_request_logger_on_every_graph_node():
    m = _canary(request_logger_url="http://broker.knative-eventing/default")
    assert errors(m) == []
    for p in m["spec"]["predictors"]:
        assert p["graph"]["logger"] == {"mode": "all", "url": "http://broker.knative-eventing/default"}
    assert "logger" not in _canary()["spec"]["predictors"][0]["graph"]


def test_prepackaged_server_resources_override_its_container_and_gpus_are_limits():
    m = seldon.render_seldon_deployment(
        "flights",
        "serving",
        model_uri="s3://models/flights/3",
        predictors=[{"name": "main", "version": "3"}],
        resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        labels={"team": "delays"},
    )
    assert errors(m) == []
    (component,) = m["spec"]["predictors"][0]["componentSpecs"]
    assert component["spec"]["containers"] == [
        {
            "name": "model",
            "resources": {
                "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "4Gi", "nvidia.com/gpu": "1"},
            },
        }
    ]
    assert m["metadata"]["labels"]["team"] == "delays"


# --- rejected inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "predictors,expected",
    [
        (
            [{"name": "main", "traffic": 80}, {"name": "canary", "traffic": 10}],
            "traffic weights of the non-shadow predictors must sum to 100, got 90 (main=80, canary=10)",
        ),
        ([{"name": "main", "traffic": 90}], "must sum to 100, got 90"),
        ([{"name": "main"}, {"name": "canary", "traffic": 10}], "['main'] have no traffic weight"),
        (
            [{"name": "main", "traffic": 100}, {"name": "mirror", "shadow": True, "traffic": 10}],
            "its traffic must be 0",
        ),
        ([{"name": "mirror", "shadow": True}], "every predictor is a shadow"),
        ([{"name": "main", "traffic": "90"}, {"name": "b", "traffic": 10}], "whole percentage"),
        ([{"name": "main", "traffic": 150}, {"name": "b", "traffic": -50}], "outside 0..100"),
        ([{"name": "main", "traffic": 50}, {"name": "main", "traffic": 50}], "must be unique"),
        ([{"name": "Main"}], "must be a DNS label"),
        ([{"name": "main", "trafic": 100}], "unknown keys ['trafic']"),
        ([{"name": "main", "version": "3 beta"}], "not a valid Kubernetes label value"),
        ([], "at least one predictor"),
    ],
)
def test_bad_predictors_are_rejected_with_a_clear_error(predictors, expected):
    with pytest.raises(ValueError) as info:
        seldon.render_seldon_deployment(
            "flights", "serving", image=IMAGE, model_uri="s3://m", predictors=predictors
        )
    assert expected in str(info.value)


def test_prepackaged_server_refuses_mlflow_registry_uris_and_missing_uris():
    with pytest.raises(ValueError, match="cannot download 'models:/flights/3'"):
        seldon.render_seldon_deployment(
            "flights", "serving", predictors=[{"name": "main", "model_uri": "models:/flights/3"}]
        )
    with pytest.raises(ValueError, match="has no model_uri"):
        seldon.render_seldon_deployment("flights", "serving", image=IMAGE, predictors=[{"name": "main"}])
    with pytest.raises(ValueError, match="deployment name"):
        seldon.render_seldon_deployment(
            "Flights_1", "serving", image=IMAGE, model_uri="s3://m", predictors=[{"name": "a"}]
        )


# --- the schema is strict -------------------------------------------------------------


def test_schema_records_its_source_and_is_the_v1_crd():
    data = json.loads(SCHEMA_FILE.read_text())
    assert "SeldonIO/seldon-core" in data["$comment"] and "graph_children.yaml" in data["$comment"]
    assert (data["group"], data["version"], data["kind"], data["plural"]) == (
        seldon.SELDON_GROUP,
        seldon.SELDON_VERSION,
        seldon.SELDON_KIND,
        seldon.SELDON_PLURAL,
    )
    predictor = data["openAPIV3Schema"]["properties"]["spec"]["properties"]["predictors"]["items"]
    assert predictor["required"] == ["graph", "name"]


@pytest.mark.parametrize(
    "breakage,expected",
    [
        (lambda m: m["spec"]["predictors"][0].update(trafic=90), "trafic"),
        (lambda m: m["spec"]["predictors"][0].update(traffic="90"), "traffic"),
        (lambda m: m["spec"]["predictors"][0]["graph"].update(modelURI="s3://x"), "modelURI"),
        (lambda m: m["spec"]["predictors"][0]["graph"].pop("name"), "'name' is a required property"),
        (lambda m: m["spec"]["predictors"][0].pop("graph"), "'graph' is a required property"),
        (lambda m: m["spec"]["predictors"][0].update(shadow="yes"), "shadow"),
        (lambda m: m["spec"]["predictors"][0]["graph"].update(logger={"mode": "all", "uri": "x"}), "uri"),
        (
            lambda m: m["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0].update(
                comand=["x"]
            ),
            "comand",
        ),
        (lambda m: m["spec"]["predictors"][0]["componentSpecs"][0].update(hpaSpec={}), "maxReplicas"),
        (lambda m: m["metadata"].update(lables={}), "lables"),
        (lambda m: m["spec"].pop("predictors"), "'predictors' is a required property"),
    ],
)
def test_schema_rejects_broken_manifests(breakage, expected):
    m = _canary()
    breakage(m)
    found = errors(m)
    assert any(expected in e for e in found), found


def test_graph_nests_as_deep_as_the_crd_allows():
    m = _canary()
    node = m["spec"]["predictors"][0]["graph"]
    for depth in range(10):
        child = {"name": f"step{depth}", "type": "TRANSFORMER"}
        node["children"] = [child]
        node = child
    assert errors(m) == []
    node["children"] = [{"name": "too-deep"}]  # level 11: the CRD's graph has no 'children' there
    assert any("children" in e for e in errors(m))


# --- status and rollback helpers ------------------------------------------------------


@pytest.mark.parametrize(
    "obj,expected",
    [
        ({"status": {"state": "Available"}}, ("Available", "all predictors are available")),
        ({"status": {"state": "Creating", "description": ""}}, ("Creating", "state 'Creating'")),
        ({}, ("Creating", "no status yet")),
        ({"status": {"state": "Failed", "description": "boom"}}, ("Failed", "boom")),
        (
            {
                "status": {
                    "state": "Failed",
                    "deploymentStatus": {
                        "flights-main-0-model": {"status": "Available"},
                        "flights-canary-0-model": {"status": "Failed", "description": "ImagePullBackOff"},
                    },
                }
            },
            (
                "Failed",
                "the Seldon operator gave no description; flights-canary-0-model: Failed (ImagePullBackOff)",
            ),
        ),
        (
            {"metadata": {"generation": 3}, "status": {"state": "Available", "observedGeneration": 2}},
            ("Creating", "the Seldon operator has not processed generation 3 yet (it saw 2)"),
        ),
        (
            {"metadata": {"generation": 3}, "status": {"state": "Available", "observedGeneration": 3}},
            ("Available", "all predictors are available"),
        ),
        # what seldon-core 1.17.1 writes: replicas per Deployment, the Deployment's Available condition
        (
            {
                "status": {
                    "state": "Failed",
                    "description": "Deployment is no longer progressing and not available.",
                    "deploymentStatus": {"flights-canary-0-model": {"replicas": 1}},
                    "conditions": [
                        {
                            "type": "DeploymentsReady",
                            "status": "False",
                            "reason": "MinimumReplicasUnavailable",
                            "message": "Deployment does not have minimum availability.",
                        }
                    ],
                }
            },
            (
                "Failed",
                "Deployment is no longer progressing and not available.; "
                "flights-canary-0-model: 0/1 replicas available; "
                "MinimumReplicasUnavailable: Deployment does not have minimum availability.",
            ),
        ),
        (
            {
                "status": {
                    "state": "Creating",
                    "deploymentStatus": {
                        "flights-main-0-model": {"replicas": 2, "availableReplicas": 1},
                        "flights-canary-0-model": {"replicas": 1, "availableReplicas": 1},
                    },
                    "conditions": [{"type": "DeploymentsReady", "status": "True", "reason": "x"}],
                }
            },
            ("Creating", "state 'Creating'; flights-main-0-model: 1/2 replicas available"),
        ),
    ],
)
def test_deployment_state(obj, expected):
    assert seldon.deployment_state(obj) == expected


def test_a_status_the_operator_has_not_rewritten_since_the_rollouts_write_is_the_previous_specs():
    """seldon-core 1.17.1 never sets observedGeneration: only the resourceVersion of our write tells a
    status about the new spec from the previous spec's, which the object keeps until the operator
    writes a new one (its status writes carry the resourceVersion it read: they follow our write)."""
    before = {"spec": _canary()["spec"]}
    after = seldon.promoted(_canary(), "canary")
    written = {**after, "metadata": {**after["metadata"], "resourceVersion": "41"}}
    marker = seldon.write_marker(written, before)
    assert marker == {"resource_version": "41", "changes_pods": True}
    json.dumps(marker)  # it travels to the triggerer

    stale = {**written, "status": {"state": "Available"}}  # the previous spec's status, carried over
    state, message = seldon.deployment_state(stale, marker)
    assert state == "Creating" and "has not reported on the new spec" in message
    assert seldon.deployment_state(stale) == ("Available", "all predictors are available")  # no marker

    rewritten = {**stale, "metadata": {**stale["metadata"], "resourceVersion": "44"}}
    assert seldon.deployment_state(rewritten, marker)[0] == "Available"
    failed = {**rewritten, "status": {"state": "Failed", "description": "boom"}}
    assert seldon.deployment_state(failed, marker) == ("Failed", "boom")
    # a stale Failed (the previous spec failed) is not this rollout's failure either
    assert seldon.deployment_state({**failed, "metadata": written["metadata"]}, marker)[0] == "Creating"

    # creating the object: no status at all until the operator writes one
    created = seldon.write_marker(written, None)
    assert created["changes_pods"] is True
    state, message = seldon.deployment_state(written, created)
    assert state == "Creating" and "has not reported on the new spec yet" in message


def test_a_new_traffic_split_alone_keeps_the_status_it_had():
    """The operator zeroes each predictor's traffic in what it deploys (createEngineContainer): a new
    split changes no Deployment, so it writes no status, and the one before still holds."""
    before = _canary()
    after = _canary(
        predictors=[
            {"name": "main", "version": "3", "model_uri": "models:/flights/3", "traffic": 50},
            {"name": "canary", "version": "4", "model_uri": "models:/flights/4", "traffic": 50},
        ]
    )
    written = {**after, "metadata": {**after["metadata"], "resourceVersion": "7"}}
    marker = seldon.write_marker(written, before)
    assert marker["changes_pods"] is False
    assert seldon.deployment_state({**written, "status": {"state": "Available"}}, marker)[0] == "Available"
    # a new version, replicas or shadow flag is a change of the pods
    for changed in (
        _canary(predictors=[{"name": "main", "version": "5", "model_uri": "models:/flights/5"}]),
        _canary(replicas=2),
    ):
        assert seldon.write_marker({**changed, "metadata": written["metadata"]}, before)["changes_pods"]


def test_spec_for_rollback_strips_what_the_server_added():
    manifest = seldon.with_previous(_canary(), {"metadata": {"name": "flights"}, "spec": {"predictors": []}})
    live = json.loads(json.dumps(manifest))
    live["metadata"].update(
        resourceVersion="42",
        uid="u",
        generation=7,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}],
    )
    live["metadata"]["annotations"]["team"] = "delays"
    live["status"] = {"state": "Available"}
    restored = seldon.spec_for_rollback(live)
    assert restored == {
        "apiVersion": "machinelearning.seldon.io/v1",
        "kind": "SeldonDeployment",
        "metadata": {
            "name": "flights",
            "namespace": "serving",
            "labels": manifest["metadata"]["labels"],
            "annotations": {"team": "delays"},  # the recorded previous spec is not carried along
        },
        "spec": manifest["spec"],
    }
    assert errors(restored) == []
    assert seldon.spec_for_rollback(None) is None


def test_with_previous_and_recorded_previous_round_trip():
    old = seldon.render_seldon_deployment(
        "flights",
        "serving",
        image=IMAGE,
        model_uri="models:/flights/3",
        predictors=[{"name": "main", "version": "3"}],
    )
    new = seldon.with_previous(_canary(), old)
    assert errors(new) == []
    assert seldon.recorded_previous(new) == seldon.spec_for_rollback(old)
    assert seldon.recorded_previous(old) is None
    first = seldon.with_previous(_canary(), None)
    assert first["metadata"]["annotations"] == {seldon.ROLLOUT_VERSION_ANNOTATION: "3"}  # nothing before
    assert seldon.rollout_version(first) == "3"
    assert seldon.rollout_version(seldon.with_previous(_canary(), old, version="4")) == "4"
    # the bookkeeping of one rollout is not carried into a restored spec
    assert "annotations" not in seldon.spec_for_rollback(new)["metadata"]


def test_promoted_keeps_only_that_predictor_with_all_traffic():
    m = _canary()
    out = seldon.promoted(m, "canary")
    assert errors(out) == []
    (p,) = out["spec"]["predictors"]
    assert (p["name"], p["traffic"], p["labels"][seldon.VERSION_LABEL]) == ("canary", 100, "4")
    assert out["metadata"]["labels"][seldon.VERSION_LABEL] == "4"
    assert len(m["spec"]["predictors"]) == 2  # the input is not changed
    assert seldon.predictor_versions(out) == {"canary": "4"}
    with pytest.raises(ValueError, match="no predictor 'blue'"):
        seldon.promoted(m, "blue")
