"""The operator side of a Seldon rollout on Kubernetes: apply, wait, and roll back on failure.

:class:`KubernetesRollout` is not an operator: the Seldon operators (``operators/deploy.py``) and
sensor call it when their ``seldon`` connection is in Kubernetes mode. How it is meant to be
called::

    from airflow_mlops.operators.seldon_kubernetes import KubernetesRollout

    class SeldonDeployOperator(BaseOperator):  # deployment_name, traffic, shadow, image, deferrable...
        def execute(self, context):
            rollout = KubernetesRollout(self.seldon_conn_id)  # or a SeldonHook
            # renders the SeldonDeployment from the operator's arguments (a canary or a shadow
            # joins the live spec) and rolls it out; deferrable: raises TaskDeferred
            return rollout.deploy(self, context, version="4", model_uri="models:/flights/4")

        def execute_complete(self, context, event=None):
            # restores the previous spec (recorded on the object) unless the event is a success
            return KubernetesRollout(self.seldon_conn_id).complete(event)

    # a manifest of your own: rollout.start(self, context, render_seldon_deployment(...))
    # after a canary:         rollout.promote_canary("flights")
    # back to what served:    rollout.rollback("flights") / rollout.rollback("flights", "3")
    # for a sensor:           rollout.status("flights") -> ("Available", "...")

The flow
    1. :meth:`KubernetesRollout.start` reads the live object and creates or replaces it with the
       new manifest, annotated with the spec it replaces (stripped by
       :func:`~airflow_mlops.kubernetes.seldon.spec_for_rollback`) and the version it brings in
       (:func:`~airflow_mlops.kubernetes.seldon.with_previous`). Nothing has to travel in the
       deferral: a plain ``execute_complete(self, context, event=None)`` resumes it.
    2. It waits until ``status.state`` is ``Available``/``Failed`` or ``ready_timeout`` passes: in
       the triggerer (:class:`~airflow_mlops.triggers.seldon.SeldonDeploymentTrigger`) when the
       operator's ``deferrable`` is true, else by polling in the task.
    3. :meth:`KubernetesRollout.complete` returns a result dict on success; on ``failed``,
       ``timeout`` or ``error`` it puts the previous spec back (or deletes a first deployment) and
       raises :class:`~airflow_mlops.exceptions.DeploymentError` naming both versions.

:meth:`KubernetesRollout.promote_canary` and :meth:`KubernetesRollout.rollback` change the live
object the same guarded way (apply, wait, restore on failure), synchronously.

Connection
    The ``seldon`` connection's extras give ``kubernetes_conn_id`` (default ``kubernetes_default``),
    ``namespace`` (default: the Kubernetes connection's namespace, else ``default``), and defaults
    for :meth:`KubernetesRollout.deploy`: ``image`` (our serving image; without one the
    prepackaged ``implementation``, default ``MLFLOW_SERVER``), ``env_from_secret`` and
    ``request_logger_url`` (see :func:`~airflow_mlops.kubernetes.seldon.render_seldon_deployment`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlops.exceptions import DeploymentError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.hooks.seldon_kubernetes import SeldonDeploymentHook

#: seconds added to ``ready_timeout`` for Airflow's own deferral timeout: only a triggerer that
#: never reports fails the task that way (and then without a rollback), the trigger's deadline
#: comes first
DEFER_BACKSTOP = 300


class _Recorded:
    def __repr__(self) -> str:
        return "RECORDED"


#: :meth:`KubernetesRollout.complete`'s default: take the previous spec recorded on the object
RECORDED: Any = _Recorded()


class KubernetesRollout:
    """
    Roll out a SeldonDeployment and restore the previous spec when the new one does not come up.

    :param seldon: the ``seldon`` connection id, or a :class:`~airflow_mlops.hooks.seldon.SeldonHook`
        (extras ``kubernetes_conn_id``, ``namespace``, ``image``, ``env_from_secret``,
        ``request_logger_url``, ``implementation``).
    :param kubernetes_conn_id: overrides the connection's ``kubernetes_conn_id`` extra.
    :param namespace: overrides the connection's ``namespace`` extra.
    :param ready_timeout: seconds the new spec has to become ``Available`` (:meth:`deploy` takes
        the operator's ``ready_timeout`` when it has one).
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
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval

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

    # --- rollout -------------------------------------------------------------------------

    def deploy(
        self, operator: BaseOperator, context: Context, version: str, model_uri: str
    ) -> dict[str, Any]:
        """Render the SeldonDeployment for a deploy operator and roll it out (see :meth:`start`).

        Reads from ``operator``: ``deployment_name``; optionally ``traffic`` (100), ``shadow``
        (False), ``replicas``, ``container_resources`` (the model container's ``{"cpu", "memory",
        "gpu"}``; not ``resources``, which BaseOperator owns), ``image``, ``model_name``,
        ``ready_timeout``, ``deferrable``, and ``implementation``/``env_from_secret``/
        ``request_logger_url`` (else the connection's extras).

        * ``traffic`` 100: the new version replaces what serves (one predictor, ``main``);
        * ``traffic`` < 100: a canary beside the live main predictor, which keeps the rest of the
          traffic (an earlier canary is replaced; shadows stay);
        * ``shadow``: a shadow predictor beside the live ones (an earlier shadow is replaced).

        A deployment already serving exactly this spec is left alone (``changed: False``), so a
        retried task does not roll out twice.

        :raises DeploymentError: a canary or shadow without a live deployment, or the rollout failed.
        """
        from airflow_mlops.kubernetes.seldon import deployment_state, recorded_previous, spec_for_rollback

        if getattr(operator, "ready_timeout", None):
            self.ready_timeout = float(operator.ready_timeout)
        name = operator.deployment_name
        live = self.hook.get(name)
        manifest = self.render_for(operator, version, model_uri, live)
        if (
            live is not None
            and spec_for_rollback(live)["spec"] == manifest["spec"]
            and deployment_state(live)[0] == "Available"
        ):
            self._log("%s already serves this spec (version %s): nothing to do", self._where(name), version)
            return self._result(live, version, recorded_previous(live), changed=False)
        return self.start(operator, context, manifest, version=version)

    @staticmethod
    def _container_resources(operator: BaseOperator) -> dict[str, Any] | None:
        # BaseOperator.resources is Airflow's own (an executor hint converted to a Resources
        # object), so the model container's requests are ``container_resources`` as for training
        resources = getattr(operator, "container_resources", None)
        if resources is None and isinstance(getattr(operator, "resources", None), dict):
            resources = operator.resources
        return resources

    def render_for(
        self, operator: BaseOperator, version: str, model_uri: str, live: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The manifest :meth:`deploy` rolls out (see there), composed with the ``live`` object."""
        from airflow_mlops.kubernetes.seldon import (
            DEFAULT_IMPLEMENTATION,
            render_seldon_deployment,
            spec_for_rollback,
        )

        name = operator.deployment_name

        def option(key: str, default: Any = None) -> Any:
            value = getattr(operator, key, None)
            return value if value is not None else self.extras.get(key, default)

        traffic = int(getattr(operator, "traffic", None) or 100)
        shadow = bool(getattr(operator, "shadow", False))
        model_name = getattr(operator, "model_name", None)
        new = {"version": str(version), "model_uri": model_uri, "model_name": model_name or name}
        common = dict(
            image=option("image"),
            implementation=option("implementation", DEFAULT_IMPLEMENTATION),
            replicas=int(getattr(operator, "replicas", None) or 1),
            resources=self._container_resources(operator),
            request_logger_url=option("request_logger_url"),
            env_from_secret=option("env_from_secret"),
        )
        ns = self.hook.namespace
        if not shadow and traffic >= 100:
            return render_seldon_deployment(
                name, ns, predictors=[{**new, "name": "main"}], registered_model=model_name, **common
            )
        role = "shadow" if shadow else "canary"
        if live is None:
            raise DeploymentError(
                f"A {role} joins a serving deployment, but {self._where(name)} does not exist: "
                "deploy a version with traffic=100 first."
            )
        current = spec_for_rollback(live)
        predictors = current["spec"]["predictors"]
        serving = [p for p in predictors if not p.get("shadow")]
        main = max(serving, key=lambda p: p.get("traffic", 0))
        if shadow:
            keep = serving
            new_name = "shadow" if main["name"] != "shadow" else "mirror"
        else:
            keep = [{**main, "traffic": 100 - traffic}, *(p for p in predictors if p.get("shadow"))]
            new_name = "canary" if main["name"] != "canary" else "main"  # blue/green names
        (added,) = render_seldon_deployment(name, ns, predictors=[{**new, "name": new_name}], **common)[
            "spec"
        ]["predictors"]
        if shadow:
            del added["traffic"]
            added["shadow"] = True
        else:
            added["traffic"] = traffic
        current["spec"]["predictors"] = [*keep, added]
        return current

    def start(
        self,
        operator: BaseOperator,
        context: Context,
        manifest: dict[str, Any],
        *,
        version: str | None = None,
        deferrable: bool | None = None,
    ) -> dict[str, Any]:
        """Apply ``manifest`` and wait until it serves; roll back if it does not.

        :param operator: the calling operator (its ``defer`` and, unless ``deferrable`` is given,
            its ``deferrable`` attribute are used).
        :param context: the task context (unused today; kept so the call does not change when
            the rollout pushes links or XComs).
        :param manifest: a rendered SeldonDeployment
            (:func:`~airflow_mlops.kubernetes.seldon.render_seldon_deployment`).
        :param version: the model version this rollout brings in, for messages (default: the
            manifest's version label).
        :param deferrable: wait in the triggerer; None: ``operator.deferrable`` (default False).
        :return: see :meth:`complete` (only when not deferred).
        :raises TaskDeferred: when deferring; the task resumes in ``execute_complete(context,
            event)``, which calls :meth:`complete` with the event.
        :raises DeploymentError: the new spec failed or timed out (and was rolled back).
        """
        from airflow_mlops.kubernetes.seldon import rollout_version, spec_for_rollback, with_previous

        name = manifest["metadata"]["name"]
        previous = spec_for_rollback(self.hook.get(name))
        body = with_previous(manifest, previous, version)
        version = rollout_version(body)
        self.hook.apply(body)
        if deferrable is None:
            deferrable = bool(getattr(operator, "deferrable", False))
        if deferrable:
            from airflow_mlops.triggers.seldon import SeldonDeploymentTrigger

            trigger = SeldonDeploymentTrigger(
                deployment_name=name,
                mode="kubernetes",
                namespace=self.hook.namespace,
                kubernetes_conn_id=self.hook.kubernetes_conn_id,
                poll_interval=self.poll_interval,
                timeout_at=time.time() + self.ready_timeout,
            )
            operator.defer(
                trigger=trigger,
                method_name="execute_complete",
                timeout=timedelta(seconds=self.ready_timeout + DEFER_BACKSTOP),
            )
        return self.complete(self.wait(name), previous=previous, version=version)

    def wait(self, name: str) -> dict[str, Any]:
        """Poll ``name`` until it is Available or Failed or ``ready_timeout`` passes (blocking).

        :return: an event payload shaped like the trigger's (``status``, ``state``, ``message``...).
        """
        deadline = time.monotonic() + self.ready_timeout
        while True:
            # sleep first: right after a replace, the status may still describe the old spec (the
            # Seldon operator has not reconciled yet, and it may not report observedGeneration)
            time.sleep(self.poll_interval)
            state, message = self.hook.state(name)
            if state in ("Available", "Failed"):
                status = "success" if state == "Available" else "failed"
                return self._payload(name, status, state, message)
            if time.monotonic() >= deadline:
                why = f"not Available within {self.ready_timeout:.0f} s; last: {message}"
                return self._payload(name, "timeout", state, why)

    def _payload(self, name: str, status: str, state: str, message: str) -> dict[str, Any]:
        return {
            "status": status,
            "deployment_name": name,
            "mode": "kubernetes",
            "namespace": self.hook.namespace,
            "state": state,
            "message": message,
        }

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
        message = event.get("message") or "no message"
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

    # --- changes to the live object ------------------------------------------------------

    def _log(self, msg: str, *args: Any) -> None:
        self.hook.log.info(msg, *args)

    def _live(self, name: str) -> dict[str, Any]:
        live = self.hook.get(name)
        if live is None:
            raise DeploymentError(f"{self._where(name)} does not exist.")
        return live

    def _apply_and_wait(self, manifest: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
        from airflow_mlops.kubernetes.seldon import rollout_version, spec_for_rollback, with_previous

        previous = spec_for_rollback(live)
        body = with_previous(manifest, previous)
        self.hook.apply(body)
        return self.complete(
            self.wait(manifest["metadata"]["name"]), previous=previous, version=rollout_version(body)
        )

    def promote_canary(self, name: str, canary: str | None = None) -> dict[str, Any]:
        """Make the canary the only predictor, with 100% of the traffic; wait until it serves.

        :param canary: the predictor to promote; None: the non-shadow predictor with the least
            traffic when there are two or more, else the shadow.
        :return: see :meth:`complete`.
        :raises DeploymentError: nothing to promote, or the promoted spec did not serve (then
            the spec before the promotion is restored).
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
        return self._apply_and_wait(manifest, live)

    def rollback(self, name: str, to_version: str | None = None) -> dict[str, Any]:
        """Go back to an earlier spec of the live deployment; wait until it serves.

        :param to_version: None: the spec the last rollout replaced (recorded in an annotation).
            A version: serve only that version, from the predictor of the live spec (e.g. the
            main one during a canary) or else of the recorded previous spec that serves it.
        :return: see :meth:`complete`.
        :raises DeploymentError: nothing to roll back to, or the rolled-back spec did not serve
            (then the spec before the rollback is restored).
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
            return self._apply_and_wait(recorded, live)
        to_version = str(to_version)
        for candidate in (spec_for_rollback(live), recorded):
            for predictor, served in predictor_versions(candidate).items():
                if served == to_version:
                    return self._apply_and_wait(promoted(candidate, predictor), live)
        raise DeploymentError(
            f"Version {to_version} is neither in the live spec of {self._where(name)} "
            f"({describe_versions(live)}) nor in its recorded previous spec ({describe_versions(recorded)}); "
            "deploy it with the deploy operator instead."
        )
