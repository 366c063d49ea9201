"""The rollout of a ``SeldonDeployment``: apply, wait until it serves, roll back when it does not.

:class:`KubernetesRollout` is what the Seldon operators (``operators/deploy.py``) and sensor use
when their ``seldon`` connection is in Kubernetes mode. It never touches an operator: the operator
describes what to roll out (:class:`SeldonDeploySpec`), starts the rollout, and defers *itself*::

    from airflow_mlops.kubernetes.seldon_rollout import KubernetesRollout, SeldonDeploySpec

    class SeldonDeployOperator(BaseOperator):  # deployment_name, traffic, deferrable...
        def execute(self, context):
            rollout = KubernetesRollout(self.seldon_conn_id, ready_timeout=self.ready_timeout)
            spec = SeldonDeploySpec(self.deployment_name, version="4", model_uri="s3://models/4")
            started = rollout.deploy(spec)  # written (or found serving already)
            if started.result is not None:  # it already served exactly this spec
                return started.result
            if self.deferrable:
                self.defer(trigger=rollout.trigger(started), method_name="execute_complete",
                           timeout=rollout.defer_timeout)
            return rollout.finish(started)  # wait here; roll back and raise if it does not serve

        def execute_complete(self, context, event=None):
            # restores the previous spec (recorded on the object) unless the event is a success
            return KubernetesRollout(self.seldon_conn_id).complete(event)

    # a manifest of your own: rollout.start(render_seldon_deployment(...))
    # after a canary:         rollout.start_promotion("flights")   (or promote_canary: start + finish)
    # back to what served:    rollout.start_rollback("flights", "3")   (or rollback)
    # for a sensor:           rollout.status("flights") -> ("Available", "...")

The flow
    1. :meth:`KubernetesRollout.start` reads the live object and creates or replaces it with the
       new manifest, annotated with the spec it replaces (stripped by
       :func:`~airflow_mlops.kubernetes.seldon.spec_for_rollback`) and the version it brings in
       (:func:`~airflow_mlops.kubernetes.seldon.with_previous`). It returns a
       :class:`RolloutStarted` that carries the write's marker
       (:func:`~airflow_mlops.kubernetes.seldon.write_marker`): the Seldon operator never reports
       ``observedGeneration``, so only the ``resourceVersion`` of our write tells its status about
       the new spec from the stale one of the previous spec.
    2. The operator waits until ``status.state`` is ``Available``/``Failed`` or ``ready_timeout``
       passes: in the triggerer (:meth:`KubernetesRollout.trigger`, a
       :class:`~airflow_mlops.triggers.seldon.SeldonDeploymentTrigger`) when it defers, else by
       polling in the task (:meth:`KubernetesRollout.finish`). Nothing else has to travel in the
       deferral: a plain ``execute_complete(self, context, event=None)`` resumes it.
    3. :meth:`KubernetesRollout.complete` returns a result dict on success; on ``failed``,
       ``timeout`` or ``error`` it puts the previous spec back (or deletes a first deployment) and
       raises :class:`~airflow_mlops.exceptions.DeploymentError` naming both versions.

Connection
    The ``seldon`` connection's extras give ``kubernetes_conn_id`` (default ``kubernetes_default``),
    ``namespace`` (default: the Kubernetes connection's namespace, else ``default``), and defaults
    for :class:`SeldonDeploySpec`'s ``None`` fields: ``image`` (our serving image; without one the
    prepackaged ``implementation``, default ``MLFLOW_SERVER``), ``env_from_secret`` and
    ``request_logger_url`` (see :func:`~airflow_mlops.kubernetes.seldon.render_seldon_deployment`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlops.exceptions import DeploymentError

if TYPE_CHECKING:
    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook
    from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

#: seconds added to ``ready_timeout`` for Airflow's own deferral timeout: only a triggerer that
#: never reports fails the task that way (and then without a rollback), the trigger's deadline
#: comes first
DEFER_BACKSTOP = 300


class _Recorded:
    def __repr__(self) -> str:
        return "RECORDED"


#: :meth:`KubernetesRollout.complete`'s default: take the previous spec recorded on the object
RECORDED: Any = _Recorded()


@dataclass(frozen=True)
class SeldonDeploySpec:
    """What a deploy rolls out, and how it joins the live deployment.

    :param deployment_name: the SeldonDeployment (a DNS label).
    :param version: the model version (a label value).
    :param model_uri: where the model server downloads it: the artifact location for the
        prepackaged server, any MLflow URI with our ``image``.
    :param traffic: percent of requests: 100 replaces what serves (one predictor, ``main``); less
        makes it a canary beside the live main predictor, which keeps the rest (an earlier canary
        is replaced; shadows stay).
    :param shadow: a shadow predictor beside the live ones (an earlier shadow is replaced).
    :param replicas: pods of its predictor.
    :param container_resources: the model container's ``{"cpu", "memory", "gpu"}``.
    :param model_name: the registered model (``MODEL_NAME`` in our image, and the annotation the
        MLOps page groups by); default the deployment's name in the container.
    :param image: our serving image; None: the connection's ``image`` extra, else the prepackaged
        ``implementation``.
    :param implementation: the prepackaged server; None: the connection's extra, else ``MLFLOW_SERVER``.
    :param env_from_secret: None: the connection's extra.
    :param request_logger_url: None: the connection's extra.
    """

    deployment_name: str
    version: str
    model_uri: str
    traffic: int = 100
    shadow: bool = False
    replicas: int = 1
    container_resources: dict[str, Any] | None = None
    model_name: str | None = None
    image: str | None = None
    implementation: str | None = None
    env_from_secret: str | None = None
    request_logger_url: str | None = None

    @property
    def role(self) -> str:
        return "shadow" if self.shadow else ("canary" if self.traffic < 100 else "main")


@dataclass(frozen=True)
class RolloutStarted:
    """A rollout whose spec has been written (or that found nothing to write).

    :param name: the SeldonDeployment.
    :param version: the model version it brings in (for messages).
    :param previous: the spec it replaced (:func:`~airflow_mlops.kubernetes.seldon.spec_for_rollback`),
        None when it created the deployment.
    :param written: the write's :func:`~airflow_mlops.kubernetes.seldon.write_marker`.
    :param result: set when nothing was written because the deployment already served exactly
        this spec: the task's result (``changed: False``).
    """

    name: str
    version: str | None
    previous: dict[str, Any] | None
    written: dict[str, Any] | None
    result: dict[str, Any] | None = None


class KubernetesRollout:
    """
    Roll out a SeldonDeployment and restore the previous spec when the new one does not come up.

    :param seldon: the ``seldon`` connection id, or a :class:`~airflow_mlops.hooks.seldon.SeldonHook`
        (extras ``kubernetes_conn_id``, ``namespace``, ``image``, ``env_from_secret``,
        ``request_logger_url``, ``implementation``).
    :param kubernetes_conn_id: overrides the connection's ``kubernetes_conn_id`` extra.
    :param namespace: overrides the connection's ``namespace`` extra.
    :param ready_timeout: seconds a new spec has to become ``Available``.
    :param poll_interval: seconds between two status reads.
    """

    def __init__(
        self,
        seldon: str | SeldonHook = "seldon_default",
        *,
        kubernetes_conn_id: str | None = None,
        namespace: str | None = None,
        ready_timeout: float = 600.0,
        poll_interval: float = 10.0,
    ) -> None:
        self.seldon = seldon
        self._kubernetes_conn_id = kubernetes_conn_id
        self._namespace = namespace
        self.ready_timeout = float(ready_timeout)
        self.poll_interval = float(poll_interval)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """The ``seldon`` connection's extras ({} when the default connection does not exist)."""
        seldon = self.seldon
        if isinstance(seldon, str):
            from airflow_mlops.hooks.seldon import SeldonHook

            seldon = SeldonHook(seldon)
        connection = seldon.connection
        return dict(connection.extra_dejson) if connection else {}

    @cached_property
    def hook(self) -> SeldonDeploymentHook:
        from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook

        return SeldonDeploymentHook(
            self._kubernetes_conn_id or self.extras.get("kubernetes_conn_id") or "kubernetes_default",
            self._namespace or self.extras.get("namespace") or None,
        )

    @property
    def namespace(self) -> str:
        """The namespace the SeldonDeployments live in (render manifests for it)."""
        return self.hook.namespace

    def _where(self, name: str) -> str:
        return f"SeldonDeployment {self.hook.namespace}/{name}"

    def status(self, name: str) -> tuple[str, str]:
        """``("Available" | "Creating" | "Failed", message)`` of the live deployment ``name``."""
        return self.hook.state(name)

    # --- starting a rollout ----------------------------------------------------------------

    def deploy(self, spec: SeldonDeploySpec) -> RolloutStarted:
        """Render the SeldonDeployment for ``spec``, composed with the live object, and write it.

        A deployment already serving exactly this spec is left alone: the returned rollout has its
        ``result`` (``changed: False``), so a retried task does not roll out twice.

        :raises DeploymentError: a canary or shadow without a live deployment.
        :raises ValueError: the spec does not render (see
            :func:`~airflow_mlops.kubernetes.seldon.render_seldon_deployment`).
        """
        from airflow_mlops.kubernetes.seldon import deployment_state, recorded_previous, spec_for_rollback

        name = spec.deployment_name
        live = self.hook.get(name)
        manifest = self.render(spec, live)
        if (
            live is not None
            and spec_for_rollback(live)["spec"] == manifest["spec"]
            and deployment_state(live)[0] == "Available"
        ):
            where = self._where(name)
            self._log("%s already serves this spec (version %s): nothing to do", where, spec.version)
            previous = recorded_previous(live)
            result = self._result(live, spec.version, previous, changed=False)
            return RolloutStarted(name, spec.version, previous, None, result)
        return self.start(manifest, version=spec.version)

    def render(self, spec: SeldonDeploySpec, live: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest :meth:`deploy` writes for ``spec`` given the ``live`` object (None: none yet)."""
        from airflow_mlops.kubernetes.seldon import (
            DEFAULT_IMPLEMENTATION,
            render_seldon_deployment,
            spec_for_rollback,
        )

        name = spec.deployment_name

        def option(value: Any, key: str, default: Any = None) -> Any:
            return value if value is not None else self.extras.get(key, default)

        new = {
            "version": str(spec.version),
            "model_uri": spec.model_uri,
            "model_name": spec.model_name or name,
        }
        common = dict(
            image=option(spec.image, "image"),
            implementation=option(spec.implementation, "implementation", DEFAULT_IMPLEMENTATION),
            replicas=int(spec.replicas or 1),
            resources=spec.container_resources,
            request_logger_url=option(spec.request_logger_url, "request_logger_url"),
            env_from_secret=option(spec.env_from_secret, "env_from_secret"),
        )
        ns = self.hook.namespace
        if spec.role == "main":
            return render_seldon_deployment(
                name, ns, predictors=[{**new, "name": "main"}], registered_model=spec.model_name, **common
            )
        if live is None:
            raise DeploymentError(
                f"A {spec.role} joins a serving deployment, but {self._where(name)} does not exist: "
                "deploy a version with traffic=100 first."
            )
        current = spec_for_rollback(live)
        predictors = current["spec"]["predictors"]
        serving = [p for p in predictors if not p.get("shadow")]
        main = max(serving, key=lambda p: p.get("traffic", 0))
        if spec.shadow:
            keep = serving
            new_name = "shadow" if main["name"] != "shadow" else "mirror"
        else:
            keep = [{**main, "traffic": 100 - spec.traffic}, *(p for p in predictors if p.get("shadow"))]
            new_name = "canary" if main["name"] != "canary" else "main"  # blue/green names
        rendered = render_seldon_deployment(name, ns, predictors=[{**new, "name": new_name}], **common)
        (added,) = rendered["spec"]["predictors"]
        if spec.shadow:
            del added["traffic"]
            added["shadow"] = True
        else:
            added["traffic"] = spec.traffic
        current["spec"]["predictors"] = [*keep, added]
        return current

    def start(self, manifest: dict[str, Any], *, version: str | None = None) -> RolloutStarted:
        """Write ``manifest`` (create, or replace the live object), recording the spec it replaces.

        :param manifest: a rendered SeldonDeployment
            (:func:`~airflow_mlops.kubernetes.seldon.render_seldon_deployment`).
        :param version: the model version this rollout brings in, for messages (default: the
            manifest's version label).
        :return: what :meth:`trigger` and :meth:`finish` wait on.
        """
        from airflow_mlops.kubernetes.seldon import spec_for_rollback, with_previous

        name = manifest["metadata"]["name"]
        previous = spec_for_rollback(self.hook.get(name))
        return self._write(with_previous(manifest, previous, version), previous)

    def _write(self, body: dict[str, Any], previous: dict[str, Any] | None) -> RolloutStarted:
        from airflow_mlops.kubernetes.seldon import rollout_version, write_marker

        _, written = self.hook.write(body)
        return RolloutStarted(
            body["metadata"]["name"], rollout_version(body), previous, write_marker(written, previous)
        )

    def _live(self, name: str) -> dict[str, Any]:
        live = self.hook.get(name)
        if live is None:
            raise DeploymentError(f"{self._where(name)} does not exist.")
        return live

    def _change(self, manifest: dict[str, Any], live: dict[str, Any]) -> RolloutStarted:
        from airflow_mlops.kubernetes.seldon import spec_for_rollback, with_previous

        previous = spec_for_rollback(live)
        return self._write(with_previous(manifest, previous), previous)

    def start_promotion(self, name: str, canary: str | None = None) -> RolloutStarted:
        """Make the canary the only predictor, with 100% of the traffic (written; wait with :meth:`finish`).

        :param canary: the predictor to promote; None: the non-shadow predictor with the least
            traffic when there are two or more, else the shadow.
        :raises DeploymentError: nothing to promote.
        """
        from airflow_mlops.kubernetes.seldon import describe_versions, promoted, spec_for_rollback

        live = self._live(name)
        predictors = (live.get("spec") or {}).get("predictors") or []
        if canary is None:
            serving = [p for p in predictors if not p.get("shadow")]
            shadows = [p for p in predictors if p.get("shadow")]
            if len(serving) >= 2:
                canary = min(serving, key=lambda p: p.get("traffic", 0))["name"]
            elif shadows:
                canary = shadows[0]["name"]
            else:
                raise DeploymentError(
                    f"{self._where(name)} has no canary or shadow to promote "
                    f"(it serves {describe_versions(live)})."
                )
        try:
            manifest = promoted(spec_for_rollback(live), canary)
        except ValueError as err:
            raise DeploymentError(f"Cannot promote: {err}") from err
        return self._change(manifest, live)

    def start_rollback(self, name: str, to_version: str | None = None) -> RolloutStarted:
        """Go back to an earlier spec of the live deployment (written; wait with :meth:`finish`).

        :param to_version: None: the spec the last rollout replaced (recorded in an annotation).
            A version: serve only that version, from the predictor of the live spec (e.g. the
            main one during a canary) or else of the recorded previous spec that serves it.
        :raises DeploymentError: nothing to roll back to.
        """
        from airflow_mlops.kubernetes.seldon import (
            describe_versions,
            predictor_versions,
            promoted,
            recorded_previous,
            spec_for_rollback,
        )

        live = self._live(name)
        recorded = recorded_previous(live)
        if to_version is None:
            if recorded is None:
                raise DeploymentError(f"{self._where(name)} has no recorded previous spec to roll back to.")
            return self._change(recorded, live)
        to_version = str(to_version)
        for candidate in (spec_for_rollback(live), recorded):
            for predictor, served in predictor_versions(candidate).items():
                if served == to_version:
                    return self._change(promoted(candidate, predictor), live)
        raise DeploymentError(
            f"Version {to_version} is neither in the live spec of {self._where(name)} "
            f"({describe_versions(live)}) nor in its recorded previous spec ({describe_versions(recorded)}); "
            "deploy it with the deploy operator instead."
        )

    # --- waiting -----------------------------------------------------------------------------

    def trigger(self, started: RolloutStarted) -> SeldonDeploymentTrigger:
        """The trigger an operator defers to (with :attr:`defer_timeout`) to wait for ``started``."""
        from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

        return SeldonDeploymentTrigger(
            deployment_name=started.name,
            mode="kubernetes",
            namespace=self.hook.namespace,
            kubernetes_conn_id=self.hook.kubernetes_conn_id,
            poll_interval=self.poll_interval,
            timeout_at=time.time() + self.ready_timeout,
            written=started.written,
        )

    @property
    def defer_timeout(self) -> timedelta:
        """Airflow's deferral timeout: after the trigger's own deadline (:data:`DEFER_BACKSTOP`)."""
        return timedelta(seconds=self.ready_timeout + DEFER_BACKSTOP)

    def wait(self, started: RolloutStarted) -> dict[str, Any]:
        """Poll until the rollout is Available or Failed or ``ready_timeout`` passes (blocking).

        :return: an event payload shaped like the trigger's (``status``, ``state``, ``message``...).
        """
        name = started.name
        deadline = time.monotonic() + self.ready_timeout
        while True:
            time.sleep(self.poll_interval)
            state, message = self.hook.state(name, written=started.written)
            if state in ("Available", "Failed"):
                status = "success" if state == "Available" else "failed"
                return self._payload(name, status, state, message)
            if time.monotonic() >= deadline:
                why = f"not Available within {self.ready_timeout:.0f} s; last: {message}"
                return self._payload(name, "timeout", state, why)

    def finish(self, started: RolloutStarted) -> dict[str, Any]:
        """Wait for ``started`` in this process (:meth:`wait`) and :meth:`complete` it."""
        if started.result is not None:
            return started.result
        return self.complete(self.wait(started), previous=started.previous, version=started.version)

    def promote_canary(self, name: str, canary: str | None = None) -> dict[str, Any]:
        """:meth:`start_promotion` and :meth:`finish`: the spec before is restored if it does not serve."""
        return self.finish(self.start_promotion(name, canary))

    def rollback(self, name: str, to_version: str | None = None) -> dict[str, Any]:
        """:meth:`start_rollback` and :meth:`finish`: the spec before is restored if it does not serve."""
        return self.finish(self.start_rollback(name, to_version))

    def _payload(self, name: str, status: str, state: str, message: str) -> dict[str, Any]:
        return {
            "status": status,
            "deployment_name": name,
            "mode": "kubernetes",
            "namespace": self.hook.namespace,
            "state": state,
            "message": message,
        }

    # --- the end of a rollout -----------------------------------------------------------------

    def _result(
        self, live: dict[str, Any] | None, version: str | None, previous: dict[str, Any] | None, changed: bool
    ) -> dict[str, Any]:
        from airflow_mlops.kubernetes.seldon import (
            VERSION_LABEL,
            describe_versions,
            endpoint,
            registered_model,
        )

        predictors = ((live or {}).get("spec") or {}).get("predictors") or []
        url = endpoint(live)
        return {
            "deployment": (live or {}).get("metadata", {}).get("name"),
            "namespace": self.hook.namespace,
            "kubernetes_conn_id": self.hook.kubernetes_conn_id,
            "model_name": registered_model(live),
            "mode": "kubernetes",
            "state": "Available",
            "version": version,
            "versions": {p["name"]: (p.get("labels") or {}).get(VERSION_LABEL) for p in predictors},
            "predictors": [
                {
                    "name": p["name"],
                    "version": (p.get("labels") or {}).get(VERSION_LABEL),
                    "traffic": 0 if p.get("shadow") else p.get("traffic", 0),
                    "shadow": bool(p.get("shadow")),
                }
                for p in predictors
            ],
            "endpoint": url,
            "predict_url": url,  # Seldon's address is the predictions URL
            "previous_version": describe_versions(previous) if previous else None,
            "changed": changed,
        }

    def complete(
        self,
        event: dict[str, Any] | None,
        previous: dict[str, Any] | None = RECORDED,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Finish a rollout from the trigger's (or :meth:`wait`'s) event.

        :param event: the event payload.
        :param previous: the spec the rollout replaced (None: it created the deployment); by
            default the one recorded on the live object by :meth:`start`.
        :param version: the model version rolled out (for messages); by default the one recorded
            on the live object.
        :return: ``{"deployment", "namespace", "kubernetes_conn_id", "model_name", "mode", "state",
            "version", "versions", "predictors", "endpoint", "predict_url", "previous_version",
            "changed"}``.
        :raises DeploymentError: the event is not a success; the previous spec has been restored
            (or the new deployment deleted when there was none).
        """
        from airflow_mlops.kubernetes.seldon import describe_versions, recorded_previous, rollout_version

        name = (event or {}).get("deployment_name") or (event or {}).get("name")
        if not event or "status" not in event or not name:
            raise DeploymentError(f"The Seldon deployment trigger sent no usable event: {event!r}")
        live = self.hook.get(name)
        if previous is RECORDED:
            previous = recorded_previous(live)
        version = version or rollout_version(live)
        if event["status"] == "success":
            return self._result(live, version, previous, changed=True)
        why = {
            "failed": "became Failed",
            "timeout": "did not become Available in time",
        }.get(event["status"], "could not be watched")
        message = (event.get("message") or "no message").rstrip(". ")  # sentences follow
        what = f"{self._where(name)} (version {version or 'unlabelled'}) {why}: {message}"
        if live is None:
            raise DeploymentError(f"{what}. It no longer exists, so there is nothing to roll back.")
        try:
            self.hook.restore(name, previous)
        except Exception as err:
            raise DeploymentError(
                f"{what}. Restoring the previous spec ({describe_versions(previous)}) failed too: {err}. "
                "Check the object with `kubectl get sdep -o yaml` and restore it by hand."
            ) from err
        if previous is None:
            raise DeploymentError(
                f"{what}. There was no previous deployment, so the new SeldonDeployment was deleted."
            )
        raise DeploymentError(
            f"{what}. Rolled back to the previous spec (version {describe_versions(previous)})."
        )

    def _log(self, msg: str, *args: Any) -> None:
        self.hook.log.info(msg, *args)
