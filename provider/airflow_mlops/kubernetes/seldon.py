"""Manifests of a model deployment on Kubernetes: a Seldon Core ``SeldonDeployment`` (seldon.io v1).

Pure functions on plain dicts (the objects' JSON): no API calls and no ``kubernetes`` import, so
they are cheap and easy to validate against the CRD's schema. The API calls live in
:mod:`airflow_mlops.hooks.seldon_kubernetes`, the rollout flow in
:mod:`airflow_mlops.kubernetes.seldon_rollout`.

Two ways to serve a model
    * a Seldon **prepackaged server** (``implementation="MLFLOW_SERVER"``, the default): the graph
      node names the implementation and the ``modelUri``; Seldon's storage initializer downloads
      the model (``s3://``, ``gs://``, ``https://``, ``pvc://``...; give it credentials with
      ``env_from_secret``, which becomes the node's ``envSecretRefName``). It cannot resolve the
      MLflow registry's ``models:/`` or ``runs:/`` URIs: those need our image.
    * **our serving image** (``image=``, built from ``docker/serving/Dockerfile``): a ``MODEL``
      node whose container runs ``seldon_serve.py`` → ``seldon_model.MlflowModel``, which loads
      ``MODEL_URI`` with MLflow itself, so any MLflow URI works (``models:/flights/3``); the MLflow
      tracking URI and credentials come from ``env_from_secret`` (``envFrom`` a Secret).

Predictors, traffic and versions
    Each predictor serves one model version; Seldon splits requests between the non-shadow
    predictors by their ``traffic`` (which must sum to 100), and mirrors every request to a
    ``shadow`` predictor without returning its answers. Each predictor (and its pods) carries the
    label :data:`VERSION_LABEL`, so ``kubectl get pods -L airflow-mlops.io/model-version`` shows what
    serves where; the object's own label is the version of its main (highest-traffic) predictor.

Rollback bookkeeping
    The rollout records the spec it replaces in the annotation :data:`PREVIOUS_SPEC_ANNOTATION`
    (:func:`with_previous`), so a later task can roll back without XCom (:func:`recorded_previous`).
    Only one level is kept: a recorded spec never carries its own predecessor.

What the Seldon operator (1.17.1) reports, and when
    Read from seldon-core v1.17.1, ``operator/controllers/seldondeployment_controller.go``
    (``Reconcile``, ``createDeployments``, ``createServices``, ``completeServiceCreation``) and
    ``operator/apis/machinelearning.seldon.io/v1/seldon_deployment_status.go``:

    * ``status.state`` is ``Available`` once every Deployment of the spec is unchanged by the
      reconcile and has ready replicas and no unavailable one, and its Services exist; ``Failed``
      when the reconcile itself errs (``updateStatusForError``: the error is the description) or
      when a Deployment is **neither progressing nor available** (its ``ProgressDeadlineExceeded``
      and ``MinimumReplicasUnavailable`` conditions: "Deployment is no longer progressing and not
      available."); ``Creating`` otherwise — so a new version whose pods crash-loop behind the
      still-ready pods of the old one stays ``Creating`` (the Deployment is *available*) until the
      rollout's ``ready_timeout``, which then rolls back.
    * ``status.observedGeneration`` exists in the schema (knative ``duckv1.Status``) but the
      controller **never sets it**, and it writes the status only when it changed. Right after a
      replace the status therefore still describes the previous spec, with nothing in it saying
      so: :func:`write_marker` records the ``resourceVersion`` of the rollout's own write, and
      :func:`deployment_state` reads a status the operator has not rewritten since as
      ``Creating``. (Status writes carry the ``resourceVersion`` the operator read, so a write
      after ours comes from a reconcile of our spec or a later one.)
    * ``status.address.url`` is the Service of the *first* predictor, ``<name>-<predictor>``
      (``createAddressableResource``, ``GetPredictorKey``), on the executor's port 8000 — it moves
      when a promotion removes that predictor. Each predictor also gets
      ``<name>-<predictor>-<container>`` (``createContainerService``); Deployments are
      ``<name>-<predictor>-<index>-<containers>`` (``GetDeploymentName``). All carry the label
      ``seldon-deployment-id=<name>``. There is no Service named after the deployment alone.
    * ``status.deploymentStatus`` has ``replicas``/``availableReplicas`` per Deployment (never a
      ``status`` or ``description`` there), and the ``DeploymentsReady`` condition copies the
      Kubernetes Deployment's ``Available`` condition.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from airflow_mlops.kubernetes.jobs import LABEL_DOMAIN, resource_requirements

SELDON_GROUP = "machinelearning.seldon.io"
SELDON_VERSION = "v1"
SELDON_PLURAL = "seldondeployments"
SELDON_KIND = "SeldonDeployment"
API_VERSION = f"{SELDON_GROUP}/{SELDON_VERSION}"

#: label of the object, of each predictor and of its pods: the model version served
VERSION_LABEL = f"{LABEL_DOMAIN}/model-version"
#: label of the object and of its pods: the deployment's name
DEPLOYMENT_LABEL = f"{LABEL_DOMAIN}/deployment"
#: annotation holding the spec this one replaced (JSON of :func:`spec_for_rollback`)
PREVIOUS_SPEC_ANNOTATION = f"{LABEL_DOMAIN}/previous-spec"
#: annotation naming the model version a rollout brought in (the canary's, during a canary)
ROLLOUT_VERSION_ANNOTATION = f"{LABEL_DOMAIN}/rollout-version"
#: annotation naming the registered model served (model names need not be valid label values)
MODEL_NAME_ANNOTATION = f"{LABEL_DOMAIN}/registered-model"
#: per-rollout bookkeeping: never carried into a restored or recorded spec
_ROLLOUT_ANNOTATIONS = (PREVIOUS_SPEC_ANNOTATION, ROLLOUT_VERSION_ANNOTATION)
MANAGED_BY = {"app.kubernetes.io/managed-by": "airflow-mlops", "app.kubernetes.io/component": "serving"}

DEFAULT_IMPLEMENTATION = "MLFLOW_SERVER"
#: the graph node (and, with our image, its container: Seldon pairs them by name)
GRAPH_NODE = "model"
#: ``COPY provider/airflow_mlops/runtimes/ /opt/mlops/runtimes/`` in docker/serving/Dockerfile. The
#: ports come from the PREDICTIVE_UNIT_*_PORT variables the Seldon operator sets in the container.
SERVE_COMMAND = [
    "python", "/opt/mlops/runtimes/seldon_serve.py", "--host", "0.0.0.0", "seldon_model.MlflowModel",
]  # fmt: skip
#: ``status.state`` values of the Seldon operator (``StatusState`` in seldon_deployment_status.go)
STATES = ("Available", "Creating", "Failed")

_PREDICTOR_KEYS = {"name", "version", "model_uri", "model_name", "traffic", "shadow", "replicas"}
#: Seldon's storage initializer cannot resolve these MLflow-only schemes
_MLFLOW_ONLY_SCHEMES = ("models:", "runs:")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# --- rendering --------------------------------------------------------------------------


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{what} must be a DNS label (lower-case letters, digits and '-', starting with a letter, "
            f"at most 63 characters), got {value!r}"
        )
    return value


def _check_label_value(what: str, value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"{what} {value!r} is not a valid Kubernetes label value")
    return value


def _normalise_predictors(predictors: list[dict[str, Any]], model_uri: str | None) -> list[dict[str, Any]]:
    """Checked copies of the predictor dicts: names, URIs, versions, and the traffic split."""
    if not predictors:
        raise ValueError("predictors is empty: a SeldonDeployment needs at least one predictor")
    out = []
    for i, raw in enumerate(predictors):
        unknown = set(raw) - _PREDICTOR_KEYS
        if unknown:
            raise ValueError(
                f"predictors[{i}] has unknown keys {sorted(unknown)}; allowed: {sorted(_PREDICTOR_KEYS)}"
            )
        p = dict(raw)
        _check_name(f"predictors[{i}]['name']", p.get("name"))
        p["model_uri"] = p.get("model_uri") or model_uri
        if not p["model_uri"]:
            raise ValueError(f"predictor {p['name']!r} has no model_uri (and no default model_uri was given)")
        if p.get("version") is not None:
            p["version"] = _check_label_value(f"predictor {p['name']!r}: version", str(p["version"]))
        p["shadow"] = bool(p.get("shadow", False))
        reps = p.get("replicas")
        if reps is not None and (isinstance(reps, bool) or not isinstance(reps, int) or reps < 0):
            raise ValueError(f"predictor {p['name']!r}: replicas must be a whole number >= 0, got {reps!r}")
        traffic = p.get("traffic")
        if traffic is not None and (isinstance(traffic, bool) or not isinstance(traffic, int)):
            raise ValueError(f"predictor {p['name']!r}: traffic must be a whole percentage, got {traffic!r}")
        if p["shadow"] and traffic:
            raise ValueError(
                f"shadow predictor {p['name']!r} has traffic {traffic}: a shadow receives a copy of every "
                "request and its answers are discarded, so its traffic must be 0"
            )
        out.append(p)
    names = [p["name"] for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must be unique, got {names}")
    live = [p for p in out if not p["shadow"]]
    if not live:
        raise ValueError("every predictor is a shadow: at least one must receive traffic")
    if len(live) == 1 and live[0].get("traffic") is None:
        live[0]["traffic"] = 100
    missing = [p["name"] for p in live if p.get("traffic") is None]
    if missing:
        raise ValueError(f"predictors {missing} have no traffic weight; give every non-shadow predictor one")
    bad = [p["name"] for p in live if not 0 <= p["traffic"] <= 100]
    if bad:
        raise ValueError(f"traffic of predictors {bad} is outside 0..100")
    total = sum(p["traffic"] for p in live)
    if total != 100:
        split = ", ".join(f"{p['name']}={p['traffic']}" for p in live)
        raise ValueError(
            f"traffic weights of the non-shadow predictors must sum to 100, got {total} ({split})"
        )
    return out


def _graph(
    p: dict[str, Any],
    image: str | None,
    implementation: str,
    request_logger_url: str | None,
    env_from_secret: str | None,
) -> dict[str, Any]:
    if image:
        graph: dict[str, Any] = {"name": GRAPH_NODE, "type": "MODEL"}
    else:
        uri = p["model_uri"]
        if uri.startswith(_MLFLOW_ONLY_SCHEMES):
            raise ValueError(
                f"predictor {p['name']!r}: the prepackaged {implementation} cannot download {uri!r} "
                "(Seldon's storage initializer does not know MLflow's registry). Pass the version's "
                "artifact location (MlflowClient().get_model_version_download_uri(name, version)) or "
                "serve with image= (our serving image loads any MLflow URI)."
            )
        graph = {"name": GRAPH_NODE, "implementation": implementation, "modelUri": uri}
        if env_from_secret:
            graph["envSecretRefName"] = env_from_secret  # storage initializer credentials
    if request_logger_url:
        graph["logger"] = {"mode": "all", "url": request_logger_url}
    return graph


def _container(
    p: dict[str, Any], name: str, image: str, resources: dict[str, Any], env_from_secret: str | None
) -> dict[str, Any]:
    env = [
        {"name": "MODEL_URI", "value": p["model_uri"]},
        {"name": "MODEL_VERSION", "value": p.get("version") or "unknown"},
        {"name": "MODEL_NAME", "value": p.get("model_name") or name},
    ]
    container: dict[str, Any] = {
        "name": GRAPH_NODE, "image": image, "command": list(SERVE_COMMAND), "env": env,
    }  # fmt: skip
    if env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": env_from_secret}}]
    if resources:
        container["resources"] = resources
    return container


def render_seldon_deployment(
    name: str,
    namespace: str,
    *,
    predictors: list[dict[str, Any]],
    image: str | None = None,
    model_uri: str | None = None,
    implementation: str = DEFAULT_IMPLEMENTATION,
    replicas: int = 1,
    resources: dict[str, Any] | None = None,
    request_logger_url: str | None = None,
    labels: dict[str, str] | None = None,
    env_from_secret: str | None = None,
    registered_model: str | None = None,
) -> dict[str, Any]:
    """A ``SeldonDeployment`` serving one or more model versions.

    :param name: the deployment's name (a DNS label; Seldon derives Service names from it).
    :param namespace: its namespace.
    :param predictors: one dict per predictor: ``name`` (required), ``version`` (the model version,
        a label value), ``model_uri`` (default: ``model_uri``), ``traffic`` (percent; optional for a
        single predictor), ``shadow`` (True: receives a copy of the traffic, traffic 0),
        ``replicas`` (default: ``replicas``), ``model_name`` (``MODEL_NAME`` in our image; default:
        the deployment's name). E.g. ``[{"name": "main", "version": "3", "traffic": 90,
        "model_uri": ...}, {"name": "canary", "version": "4", "traffic": 10, "model_uri": ...}]``.
    :param image: our serving image; None serves with the prepackaged ``implementation``.
    :param model_uri: the URI of predictors that name none.
    :param implementation: the Seldon prepackaged server used when ``image`` is None.
    :param replicas: pods per predictor.
    :param resources: the model container's ``{"cpu", "memory", "gpu", ...}``, as
        :func:`airflow_mlops.kubernetes.jobs.resource_requirements` reads them.
    :param request_logger_url: where Seldon sends every request/response as CloudEvents
        (``logger: {mode: all, url}`` on the graph node).
    :param labels: extra labels of the object.
    :param env_from_secret: a Secret in ``namespace``: our image gets it as ``envFrom`` (e.g.
        ``MLFLOW_TRACKING_URI``, credentials); a prepackaged server gets it as ``envSecretRefName``
        (the storage initializer's credentials). Never write credentials into the manifest.
    :param registered_model: the MLflow registered model served, recorded in the
        :data:`MODEL_NAME_ANNOTATION` annotation (the MLOps view groups deployments by model).
    :raises ValueError: bad names, traffic weights that do not sum to 100, a shadow with traffic, a
        missing model URI, or an MLflow-only URI for a prepackaged server.
    """
    _check_name("the deployment name", name)
    if not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be a whole number >= 0, got {replicas!r}")
    checked = _normalise_predictors(predictors, model_uri)
    container_resources = resource_requirements(resources)
    out_predictors = []
    for p in checked:
        pred_labels = {DEPLOYMENT_LABEL: name}
        if p.get("version"):
            pred_labels[VERSION_LABEL] = p["version"]
        predictor: dict[str, Any] = {
            "name": p["name"],
            "replicas": int(p.get("replicas", replicas)),
            "labels": pred_labels,
            "graph": _graph(p, image, implementation, request_logger_url, env_from_secret),
        }
        if p["shadow"]:
            predictor["shadow"] = True
        else:
            predictor["traffic"] = p["traffic"]
        if image:
            container = _container(p, name, image, container_resources, env_from_secret)
            predictor["componentSpecs"] = [
                {"metadata": {"labels": dict(pred_labels)}, "spec": {"containers": [container]}}
            ]
        elif container_resources:
            # a container named like the graph node overrides the prepackaged server's resources
            predictor["componentSpecs"] = [
                {"spec": {"containers": [{"name": GRAPH_NODE, "resources": container_resources}]}}
            ]
        out_predictors.append(predictor)
    obj_labels = {**MANAGED_BY, **(labels or {}), DEPLOYMENT_LABEL: name}
    main = max((p for p in checked if not p["shadow"]), key=lambda p: p["traffic"])
    if main.get("version"):
        obj_labels[VERSION_LABEL] = main["version"]
    manifest = {
        "apiVersion": API_VERSION,
        "kind": SELDON_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": obj_labels},
        "spec": {"protocol": "seldon", "predictors": out_predictors},
    }
    if registered_model:
        manifest["metadata"]["annotations"] = {MODEL_NAME_ANNOTATION: registered_model}
    return copy.deepcopy(manifest)  # predictors share label/resource dicts: no aliasing


# --- reading live objects ---------------------------------------------------------------


def write_marker(written: dict[str, Any], replaced: dict[str, Any] | None) -> dict[str, Any]:
    """What :func:`deployment_state` needs to tell a status about ``written`` from one about the spec before.

    :param written: the object as the API server answered the rollout's create or replace.
    :param replaced: the object (or its :func:`spec_for_rollback`) that write replaced; None for a
        create.
    :return: ``{"resource_version", "changes_pods"}``, JSON-serialisable (it travels to the
        triggerer): the ``resourceVersion`` of the write, and whether it changes what the Seldon
        operator deploys. A change of the traffic split alone does not: the operator zeroes
        ``traffic`` in the predictor it hands each Deployment (``createEngineContainer`` in
        seldon-core 1.17.1's ``seldondeployment_engine.go``), finds nothing to update and
        rewrites no status, so the status before the write still holds.
    """
    return {
        "resource_version": (written.get("metadata") or {}).get("resourceVersion"),
        "changes_pods": replaced is None or _deployed(replaced) != _deployed(written),
    }


def _deployed(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec the Seldon operator turns into Deployments: all of it but the traffic split."""
    spec = copy.deepcopy(obj.get("spec") or {})
    for predictor in spec.get("predictors") or []:
        predictor.pop("traffic", None)
    return spec


def deployment_state(obj: dict[str, Any], written: dict[str, Any] | None = None) -> tuple[str, str]:
    """``("Available" | "Creating" | "Failed", message)`` from a live object's status.

    :param written: the rollout's :func:`write_marker`. A status the Seldon operator has not
        rewritten since that write (the object's ``resourceVersion`` is still the written one)
        describes the *previous* spec and reads as ``Creating`` — unless the write changed only
        the traffic split (then it still holds). Without it (a sensor, the MLOps page) the status
        is taken as it is.

    A status carrying ``observedGeneration`` below ``metadata.generation`` also reads as
    ``Creating`` (seldon-core 1.17.1 never sets it; a controller that does is believed). So do a
    missing status and any state this module does not know. Messages name the Deployments that
    are not (all) available, from ``status.deploymentStatus``, and the ``DeploymentsReady``
    condition's reason.
    """
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if (
        written is not None
        and written.get("changes_pods", True)
        and meta.get("resourceVersion") is not None
        and meta.get("resourceVersion") == written.get("resource_version")
    ):
        return "Creating", (
            "the Seldon operator has not reported on the new spec yet (its status still describes the "
            "previous one)"
        )
    state = status.get("state") or ""
    description = (status.get("description") or "").strip()
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return "Creating", (
            f"the Seldon operator has not processed generation {generation} yet (it saw {observed})"
        )
    if state == "Available":
        return "Available", description or "all predictors are available"
    details = _details(status)
    if state == "Failed":
        message = description or "the Seldon operator gave no description"
        return "Failed", message + (f"; {details}" if details else "")
    message = description or (f"state {state!r}" if state else "no status yet")
    return "Creating", message + (f"; {details}" if details else "")


def _details(status: dict[str, Any]) -> str:
    """``flights-main-0-model: 1/2 available; MinimumReplicasUnavailable: ...`` from a status."""
    parts = []
    for name, d in sorted((status.get("deploymentStatus") or {}).items()):
        if d.get("status") and d.get("status") != "Available":  # older operators wrote these
            why = f" ({d['description']})" if d.get("description") else ""
            parts.append(f"{name}: {d['status']}{why}")
        elif d.get("replicas") and (d.get("availableReplicas") or 0) < d["replicas"]:
            parts.append(f"{name}: {d.get('availableReplicas') or 0}/{d['replicas']} replicas available")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "DeploymentsReady"), None)
    if ready and ready.get("status") == "False" and (ready.get("reason") or ready.get("message")):
        parts.append(": ".join(x for x in (ready.get("reason"), ready.get("message")) if x))
    return "; ".join(parts)


def endpoint(obj: dict[str, Any] | None) -> str | None:
    """The address Seldon reports for the deployment (``status.address.url``), if any."""
    return (((obj or {}).get("status") or {}).get("address") or {}).get("url")


def spec_for_rollback(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest that recreates ``obj``: what the server added (status, resourceVersion, uid...) removed.

    Labels and annotations are kept, except the rollout's own bookkeeping (the recorded previous
    spec: one level of history). None for None (nothing to restore: the rollback deletes).
    """
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    out_meta: dict[str, Any] = {"name": meta["name"]}
    if meta.get("namespace"):
        out_meta["namespace"] = meta["namespace"]
    if meta.get("labels"):
        out_meta["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _ROLLOUT_ANNOTATIONS}
    if annotations:
        out_meta["annotations"] = annotations
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj.get("kind", SELDON_KIND),
        "metadata": out_meta,
        "spec": copy.deepcopy(obj.get("spec") or {}),
    }


def with_previous(
    manifest: dict[str, Any], previous: dict[str, Any] | None, version: str | None = None
) -> dict[str, Any]:
    """A copy of ``manifest`` recording ``previous`` and the version rolled out in annotations.

    :param previous: the object (or :func:`spec_for_rollback` result) ``manifest`` replaces;
        None when it creates the deployment (then nothing is recorded, and a rollback deletes).
    :param version: the model version this rollout brings in (default: the object's
        :data:`VERSION_LABEL`); read back by :func:`rollout_version`.
    """
    out = copy.deepcopy(manifest)
    annotations = out["metadata"].setdefault("annotations", {})
    for key in _ROLLOUT_ANNOTATIONS:
        annotations.pop(key, None)
    if previous is not None:
        annotations[PREVIOUS_SPEC_ANNOTATION] = json.dumps(spec_for_rollback(previous), sort_keys=True)
    version = version or (out["metadata"].get("labels") or {}).get(VERSION_LABEL)
    if version:
        annotations[ROLLOUT_VERSION_ANNOTATION] = str(version)
    if not annotations:
        del out["metadata"]["annotations"]
    return out


def rollout_version(obj: dict[str, Any] | None) -> str | None:
    """The model version the last rollout of ``obj`` brought in (see :func:`with_previous`)."""
    meta = (obj or {}).get("metadata") or {}
    return (meta.get("annotations") or {}).get(ROLLOUT_VERSION_ANNOTATION) or (meta.get("labels") or {}).get(
        VERSION_LABEL
    )


def registered_model(obj: dict[str, Any] | None) -> str | None:
    """The registered model ``obj`` serves (its :data:`MODEL_NAME_ANNOTATION`), if recorded."""
    return ((((obj or {}).get("metadata") or {}).get("annotations")) or {}).get(MODEL_NAME_ANNOTATION)


def recorded_previous(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec ``obj`` replaced, as recorded by :func:`with_previous` (None when none was recorded)."""
    raw = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(PREVIOUS_SPEC_ANNOTATION)
    return json.loads(raw) if raw else None


def predictor_versions(obj: dict[str, Any] | None) -> dict[str, str | None]:
    """Predictor name → the model version it serves (its :data:`VERSION_LABEL`)."""
    predictors = ((obj or {}).get("spec") or {}).get("predictors") or []
    return {p["name"]: (p.get("labels") or {}).get(VERSION_LABEL) for p in predictors}


def describe_versions(obj: dict[str, Any] | None) -> str:
    """What ``obj`` serves, for messages: ``3``, or ``main=3 (90%), canary=4 (10%), mirror=5 (shadow)``."""
    if obj is None:
        return "none"
    predictors = (obj.get("spec") or {}).get("predictors") or []
    if len(predictors) == 1:
        return (predictors[0].get("labels") or {}).get(VERSION_LABEL) or "unlabelled"
    parts = []
    for p in predictors:
        version = (p.get("labels") or {}).get(VERSION_LABEL) or "?"
        share = "shadow" if p.get("shadow") else f"{p.get('traffic', 0)}%"
        parts.append(f"{p['name']}={version} ({share})")
    return ", ".join(parts)


def promoted(manifest: dict[str, Any], predictor: str) -> dict[str, Any]:
    """A copy of ``manifest`` where ``predictor`` is the only predictor, with all the traffic.

    The predictor keeps its name, so Seldon keeps its pods (renaming it would start new ones).
    The object's :data:`VERSION_LABEL` follows the promoted predictor's.

    :raises ValueError: ``manifest`` has no predictor of that name.
    """
    out = copy.deepcopy(manifest)
    predictors = out["spec"]["predictors"]
    chosen = next((p for p in predictors if p["name"] == predictor), None)
    if chosen is None:
        names = [p["name"] for p in predictors]
        raise ValueError(f"{out['metadata']['name']} has no predictor {predictor!r} (it has {names})")
    chosen.pop("shadow", None)
    chosen["traffic"] = 100
    out["spec"]["predictors"] = [chosen]
    labels = out["metadata"].setdefault("labels", {})
    version = (chosen.get("labels") or {}).get(VERSION_LABEL)
    if version:
        labels[VERSION_LABEL] = version
    else:
        labels.pop(VERSION_LABEL, None)
    return out
