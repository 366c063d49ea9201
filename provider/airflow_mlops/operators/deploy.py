"""Deploy, promote and roll back models served with Seldon Core (local processes or Kubernetes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf

from airflow_mlops.exceptions import DeploymentError
from airflow_mlops.links.seldon import SeldonEndpointLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.serving.state import DEFAULT_WORKERS

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.hooks.seldon import SeldonHook
    from airflow_mlops.serving.state import DeploymentState, HistoryEntry


def input_example(model_dir: Path) -> pd.DataFrame:
    """The input example MLflow saved with the model (used for the smoke prediction)."""
    import pandas as pd

    path = model_dir / "input_example.json"
    if not path.exists():
        raise DeploymentError(f"Model at {model_dir} has no input example; log the model with one.")
    data = json.loads(path.read_text())
    if "dataframe_split" in data:
        data = data["dataframe_split"]
    return pd.DataFrame(data["data"], columns=data["columns"])


_COUNTS = {
    "replicas": "the number of model servers of the version",
    "workers": "the number of gunicorn worker processes per model server",
}


def replicas_count(replicas: Any, what: str = "replicas") -> int:
    """``replicas`` (or ``workers``) as a whole number >= 1 (a rendered template may be a string of one).

    :raises ValueError: anything else.
    """
    value = replicas
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} is {_COUNTS[what]}, a whole number >= 1; got {replicas!r}.")
    return value


class _SeldonOperator(MlopsBaseOperator):
    """What the Seldon operators share: the connection, the deployment's name, the result."""

    operator_extra_links = (SeldonEndpointLink(),)
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        deployment_name: str,
        seldon_conn_id: str = "seldon_default",
        runtimes_dir: str | None = None,
        drain_seconds: float = 2.0,
        poll_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        # a local deployment is processes on one host: with several workers, its tasks go to the
        # queue only that host's worker takes, unless the task (or default_args) names a queue
        serving_queue = conf.get("mlops", "serving_queue", fallback="") or ""
        if serving_queue and "queue" not in kwargs and "queue" not in (kwargs.get("default_args") or {}):
            kwargs["queue"] = serving_queue
        super().__init__(**kwargs)
        self.deployment_name = deployment_name
        self.poll_interval = poll_interval
        self.seldon_conn_id = seldon_conn_id
        self.runtimes_dir = runtimes_dir
        self.drain_seconds = drain_seconds
        self._seldon: SeldonHook | None = None

    @property
    def seldon(self) -> SeldonHook:
        from airflow_mlops.hooks.seldon import SeldonHook

        if self._seldon is None:
            self._seldon = SeldonHook(self.seldon_conn_id, self.runtimes_dir)
        return self._seldon

    def _kubernetes(self, ready_timeout: float = 600.0) -> Any:
        from airflow_mlops.kubernetes.seldon_rollout import KubernetesRollout

        return KubernetesRollout(self.seldon, ready_timeout=ready_timeout, poll_interval=self.poll_interval)

    def _await_rollout(self, rollout: Any, started: Any, deferrable: bool = False) -> dict[str, Any]:
        """Kubernetes mode: wait for a written rollout, in the triggerer (this task defers) or here."""
        if started.result is None and deferrable:
            trigger = rollout.trigger(started)
            self.defer(trigger=trigger, method_name="execute_complete", timeout=rollout.defer_timeout)
        return rollout.finish(started)

    def _record_rollout(self, context: Context, **outcome: Any) -> None:
        """The deployment's ``last_rollout``, naming the task try that made it (the MLOps page pairs them)."""
        ti = context["ti"]
        made_by = {k: getattr(ti, k) for k in ("dag_id", "run_id", "task_id", "try_number")}
        self.seldon.record_rollout(self.deployment_name, {**outcome, "made_by": made_by})

    def _result(self, context: Context, changed: bool, **extra: Any) -> dict[str, Any]:
        from airflow_mlops.hooks.seldon import PREDICT_PATH
        from airflow_mlops.serving.state import replicas_of

        state = self.seldon.state(self.deployment_name)
        if state is None or not state.endpoint:
            raise DeploymentError(f"{self.deployment_name!r} has no routing: nothing serves it.")
        main = state.main or {}
        SeldonEndpointLink.persist(context, f"{state.endpoint}/api/v1.0/metadata")
        return {
            "deployment": self.deployment_name,
            "mode": "local",
            "model_name": main.get("model_name"),
            "version": state.version,
            "previous_version": state.previous_version,
            "endpoint": state.endpoint,
            "predict_url": f"{state.endpoint}{PREDICT_PATH}",
            "predictors": [
                {k: p.get(k) for k in ("role", "version", "traffic", "endpoint")} for p in state.predictors
            ],
            "shadow_version": (state.shadow or {}).get("version"),
            "pid": main.get("pid"),
            "replicas": len(replicas_of(main)) if main else 0,
            "workers": main.get("workers", 1) if main else 0,
            # where the model servers run: the serving runtime or (docker) the serving image
            "runtime": main.get("runtime", "local") if main else None,
            "supervisor_pid": (state.supervisor or {}).get("pid"),
            "changed": changed,
            **extra,
        }

    # -- OpenLineage ---------------------------------------------------------------------------

    def _deployment_dataset(self, result: dict[str, Any] | None) -> tuple[str, str]:
        """``seldon://<this host>`` + the name (local), ``seldon://<API server>`` + ``<namespace>/<name>``."""
        from airflow_mlops import lineage

        result = result or {}
        if (result.get("mode") or self.seldon.mode) != "kubernetes":
            return lineage.deployment_dataset(self.deployment_name)
        rollout = self._kubernetes()
        conn_id = result.get("kubernetes_conn_id") or rollout.hook.kubernetes_conn_id
        return lineage.deployment_dataset(
            self.deployment_name,
            mode="kubernetes",
            host=lineage.kubernetes_host(conn_id),
            k8s_namespace=result.get("namespace") or rollout.namespace,
        )

    def _model_inputs(self, result: dict[str, Any] | None) -> list[Any]:
        """What the deployment serves (a model version), and the data it was trained on."""
        return []

    def openlineage(self, stage: str) -> Any:
        """
        The served model version in (and its training data, drift monitoring's reference); the
        deployment out, with what serves it once done (``airflowMlops_deployment``).
        """
        from airflow_mlops import lineage

        result = self._lineage_result if stage == "complete" else None
        result = result if isinstance(result, dict) else None
        facets = {}
        if result:
            key, facet = lineage.custom_facet(
                "DeploymentDatasetFacet",
                deployment=self.deployment_name,
                mode=result.get("mode") or "local",
                modelName=result.get("model_name"),
                version=None if result.get("version") is None else str(result["version"]),
                previousVersion=None
                if result.get("previous_version") is None
                else str(result["previous_version"]),
                modelUri=result.get("model_uri"),
                endpoint=result.get("endpoint"),
                strategy=result.get("strategy"),
                predictors=[
                    {k: p.get(k) for k in ("role", "name", "version", "traffic", "shadow") if k in p}
                    for p in result.get("predictors") or []
                ],
                changed=result.get("changed"),
            )
            facets[key] = facet
        output = lineage.output_dataset(self._deployment_dataset(result), facets)
        return lineage.operator_lineage(self._model_inputs(result), [output])


class SeldonDeployOperator(_SeldonOperator):
    """
    Serve a model version with Seldon Core; the new version takes traffic only once healthy.

    **Local mode** (the embedded default): each version runs in its own seldon-core
    microservice(s) (serving runtime, ``replicas`` of them) on 127.0.0.1, behind a router that
    owns the deployment's *stable* address (``port``, kept across deploys), under a supervisor
    that restarts the router or a model server that dies, on its port, with backoff
    (``serving/supervisor.py``). Blue/green: the new version starts on a
    new port, must answer its readiness probe and a smoke prediction on the model's input
    example, then the router sends it the traffic and the old server is stopped after
    ``drain_seconds``. With ``traffic`` < 100 the new version is a canary taking that share of
    requests (promote it with :class:`SeldonPromoteCanaryOperator`); with ``shadow=True`` it
    gets a copy of every request and its answers are dropped. A failed start leaves the old
    version serving and fails the task with the server's error. Every process is recorded
    under ``[mlops] data_dir``/deployments/<name>, so a retry or a restarted scheduler finds
    what serves instead of starting a duplicate, and stops servers a killed deploy left behind.

    **Kubernetes mode** (``mode: kubernetes`` on the ``seldon`` connection): renders and applies
    a ``SeldonDeployment`` (canary as a second predictor with ``traffic``, shadow as a shadow
    predictor), waits — in the triggerer when ``deferrable`` — for ``Available``, and on
    ``Failed`` or ``timeout`` restores the previous spec.

    :param deployment_name: name of the deployment (templated).
    :param model_name: registered model name (templated).
    :param alias: alias whose version is deployed (templated); ignored when ``version`` is set.
    :param version: explicit model version (templated).
    :param model_uri: serve this MLflow model URI instead of a registered version (templated);
        ``version`` then labels it (default: a hash of the URI).
    :param traffic: percent of requests for the new version; 100 replaces the current one.
    :param shadow: mirror all requests to the new version, answering from the current one.
    :param port: stable local port (default: the one already used, else a free one).
    :param reference_path: the training data of this version (templated), recorded with the
        deployment: drift monitoring compares served requests with it.
    :param feature_lookup: a :class:`~airflow_mlops.serving.feature_lookup.FeatureLookup` (or
        its dict): clients then send entity keys as ``{"jsonData": {"rows": [...]}}`` and the
        router fetches the features from the Feast online store.
    :param max_request_bytes: local mode: the largest request body the stable address accepts
        (larger ones get 413); None: the router's default, 10 MiB.
    :param replicas: model servers of the new version (an int >= 1, templated). Local mode: that
        many seldon-core microservices, each on its own port; the router spreads requests over
        the live ones and retries a prediction whose connection failed on another one, so one
        crash costs no request (the deployment's supervisor restarts the dead one on its port).
        Kubernetes mode: the predictor's ``replicas`` (pods) in the SeldonDeployment.
    :param workers: local mode: gunicorn worker processes per model server (an int >= 1,
        templated; default 2). Each loads the model and answers one request at a time, so two
        serve concurrent clients side by side on two cores (bench/README.md, Serving); use 1 for a
        model too big to hold twice, more on a machine with more cores. Kubernetes mode scales
        with ``replicas`` (pods) instead.
    :param container_resources: Kubernetes mode: requests/limits of the model server's container
        (``{"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": 1}}``).
    :param image: Kubernetes mode: serving image (default: the prepackaged ``MLFLOW_SERVER``).
    :param ready_timeout: seconds the new version has to become ready.
    :param poll_interval: Kubernetes mode: seconds between two reads of the deployment's status.
    :param deferrable: Kubernetes mode: wait for the rollout in the triggerer.
        Default: ``[operators] default_deferrable`` (False).
    :param mlflow_conn_id: the ``mlflow`` connection.
    :param seldon_conn_id: the ``seldon`` connection (mode, bind host, namespace).
    """

    template_fields: Sequence[str] = (
        "deployment_name",
        "model_name",
        "alias",
        "version",
        "model_uri",
        "reference_path",
        "replicas",
        "workers",
    )

    def __init__(
        self,
        *,
        model_name: str | None = None,
        alias: str = "champion",
        version: str | None = None,
        model_uri: str | None = None,
        traffic: int = 100,
        shadow: bool = False,
        port: int | None = None,
        reference_path: str | None = None,
        feature_lookup: Any = None,
        replicas: int = 1,
        workers: int = DEFAULT_WORKERS,
        container_resources: dict[str, Any] | None = None,
        image: str | None = None,
        ready_timeout: float = 180,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        mlflow_conn_id: str = "mlflow_default",
        max_request_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_request_bytes is not None and max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be a positive number, got {max_request_bytes}.")
        if not model_name and not model_uri:
            raise ValueError("Pass model_name (a registered model, with alias or version) or model_uri.")
        if not 0 < traffic <= 100:
            raise ValueError(f"traffic is a percentage of requests in (0, 100], got {traffic}.")
        if shadow and traffic != 100:
            raise ValueError("A shadow takes a copy of all requests: leave traffic at 100 with shadow=True.")
        if not isinstance(replicas, str):  # a template is checked once rendered
            replicas_count(replicas)
        if not isinstance(workers, str):
            replicas_count(workers, "workers")
        self.model_name = model_name
        self.alias = alias
        self.version = version
        self.model_uri = model_uri
        self.traffic = traffic
        self.shadow = shadow
        self.port = port
        self.reference_path = reference_path
        self.feature_lookup = (
            feature_lookup.to_dict() if hasattr(feature_lookup, "to_dict") else feature_lookup
        )
        self.replicas = replicas
        self.workers = workers
        self.container_resources = container_resources
        self.image = image
        self.ready_timeout = ready_timeout
        self.deferrable = deferrable
        self.mlflow_conn_id = mlflow_conn_id
        self.max_request_bytes = max_request_bytes
        self._pending: dict[str, Any] | None = None

    @property
    def strategy(self) -> str:
        return "shadow" if self.shadow else ("canary" if self.traffic < 100 else "replace")

    # -- which model ------------------------------------------------------------------------
    def _resolve_version(self) -> str:
        if self.version:
            return str(self.version)
        if self.model_uri:
            return hashlib.sha256(self.model_uri.encode()).hexdigest()[:12]
        version = self._mlflow.alias_version(self.model_name, self.alias)
        if version is None:
            raise DeploymentError(
                f"Model '{self.model_name}' has no '{self.alias}' alias; register a version first "
                "or pass version=."
            )
        return version

    @property
    def _mlflow(self):
        from airflow_mlops.hooks.mlflow import MlflowHook

        return MlflowHook(self.mlflow_conn_id)

    def _registry_calls(self) -> contextlib.AbstractContextManager[None]:
        """Around the registry's answers: an MLflow server that stays down fails the task clearly."""
        return self._mlflow.unreachable_as_error(f"{self.task_id} (deploy {self.deployment_name!r})")

    def _source_uri(self, version: str) -> str:
        return self.model_uri or f"models:/{self.model_name}/{version}"

    def _model_dir(self, version: str) -> Path:
        """The model's files on this machine (downloaded once per version)."""
        target = self.seldon.deployment_dir(self.deployment_name) / "models" / f"v{version}"
        if (target / "MLmodel").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)  # an interrupted download
        downloaded = Path(
            self._mlflow.mlflow.artifacts.download_artifacts(
                artifact_uri=self._source_uri(version), dst_path=str(tmp)
            )
        )
        # a registry URI lands in dst_path itself, a folder URI in a sub-folder of its name
        if not (downloaded / "MLmodel").exists():
            downloaded = next((p.parent for p in downloaded.glob("*/MLmodel")), downloaded)
        if not (downloaded / "MLmodel").exists():
            raise DeploymentError(f"{self._source_uri(version)} holds no MLflow model (no MLmodel file).")
        downloaded.rename(target)
        if tmp.exists():
            shutil.rmtree(tmp)
        return target

    # -- local mode ---------------------------------------------------------------------------
    def _already_serving(self, state: DeploymentState | None, version: str) -> bool:
        if state is None:
            return False
        from airflow_mlops.serving.state import replicas_of

        serving = {"replace": [state.main], "canary": [state.canary], "shadow": [state.shadow]}[self.strategy]
        workers = replicas_count(self.workers, "workers")
        if self.strategy == "replace" and state.canary:
            return False  # a canary is still taking traffic: replacing means removing it
        return any(
            p
            and str(p.get("version")) == version
            and len(replicas_of(p)) == replicas_count(self.replicas)
            and all(r.get("workers", 1) == workers for r in replicas_of(p))
            and all(r.get("runtime", "local") == self.seldon.execution_mode for r in replicas_of(p))
            and all(self.seldon.is_healthy(r) for r in replicas_of(p))
            for p in serving
        )

    def _smoke_test(self, new: dict[str, Any], model_dir: Path, version: str) -> None:
        try:
            example = input_example(model_dir)
            # not traffic: tagged so the model server answers without logging (the drift
            # watcher reads the inference log as served traffic)
            probabilities = self.seldon.predict(new["endpoint"], example, log=False)
            if len(probabilities) != len(example):
                raise DeploymentError(f"it returned {len(probabilities)} values for {len(example)} rows")
        except Exception as err:
            self.seldon.stop_state(new)
            raise DeploymentError(
                f"Version {version} of {self.deployment_name} started but failed its smoke prediction "
                f"({err}); the previous deployment keeps serving."
            ) from err
        self.log.info(
            "Smoke prediction on %d example rows: %s", len(example), probabilities.round(4).tolist()
        )

    def _configure_lookup(self) -> None:
        """Hand the Feast lookup to the router before traffic moves (its first import of feast is slow)."""
        import time

        import requests

        seldon, name = self.seldon, self.deployment_name
        state = seldon.state(name)
        if state is None or state.feature_lookup == (self.feature_lookup or None):
            return
        router = seldon.set_feature_lookup(name, self.feature_lookup)
        status_url = f"{router['endpoint']}/router/status"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            status = requests.get(status_url, timeout=30).json()
            if status.get("feature_lookup") == bool(self.feature_lookup):
                return
            if status.get("feature_lookup_error"):
                raise DeploymentError(
                    f"The router of {name} could not build the feature lookup: "
                    f"{status['feature_lookup_error']}. Fix the lookup (repo, features, connection) "
                    "and deploy again; the routing it came with was not applied."
                )
            time.sleep(0.5)
        raise DeploymentError(f"The router of {name} did not load the feature lookup; see its router.log.")

    def _deploy_local(self, context: Context) -> dict[str, Any]:
        seldon, name = self.seldon, self.deployment_name
        replicas = replicas_count(self.replicas)
        seldon.reap_orphans(name)
        # the stable address first: a restarted router keeps serving the current version (it is
        # given what the lookup this deploy brings needs, e.g. its feast connection)
        router = seldon.ensure_router(name, self.port, feature_lookup=self.feature_lookup)
        # then what restarts any of the deployment's processes that dies
        seldon.ensure_supervisor(name, feature_lookup=self.feature_lookup)
        # the registry's answers (the alias, the model's files): an MLflow server that stays down
        # fails the task with a clear error, before anything of the serving version is touched
        with self._registry_calls():
            version = self._resolve_version()
        if self._already_serving(seldon.state(name), version):
            seldon.set_request_limit(name, self.max_request_bytes)
            self.log.info("Version %s already serves %s (%s): nothing to do", version, name, self.strategy)
            return self._result(context, changed=False, strategy=self.strategy)
        try:
            with self._registry_calls():
                model_dir = self._model_dir(version)
            self._pending = new = seldon.start_local(
                name,
                str(model_dir),
                version,
                self.ready_timeout,
                replicas=replicas,
                workers=replicas_count(self.workers, "workers"),
            )
            self._smoke_test(new, model_dir, version)
            if self.feature_lookup is not None and seldon.state(name):
                self._configure_lookup()
        except Exception as err:
            if self._pending is not None:  # started, never routed to: nothing else would stop it
                seldon.stop_state(self._pending)
                self._pending = None
            self._record_rollout(context, outcome="failed", version=version, message=str(err)[:500])
            raise
        record = {
            "model_name": self.model_name,
            "model_uri": self._source_uri(version),
            "reference_path": self.reference_path,
        }
        if self.strategy == "replace":
            seldon.switch(name, new, self.drain_seconds, **record)
        else:
            seldon.add_canary(name, new, self.traffic, shadow=self.shadow, **record)
        self._pending = None
        seldon.set_request_limit(name, self.max_request_bytes)
        if self.feature_lookup is not None:
            self._configure_lookup()
        self._record_rollout(context, outcome="succeeded", version=version, strategy=self.strategy)
        self.log.info("%s serves version %s (%s) at %s", name, version, self.strategy, router["endpoint"])
        return self._result(context, changed=True, strategy=self.strategy)

    # -- entry points ----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        if self.seldon.mode == "kubernetes":
            rollout = self._kubernetes(self.ready_timeout)
            return self._await_rollout(rollout, rollout.deploy(self._deploy_spec()), self.deferrable)
        return self._deploy_local(context)

    def _deploy_spec(self) -> Any:
        """Kubernetes mode: what this deploy rolls out."""
        from airflow_mlops.kubernetes.seldon_rollout import SeldonDeploySpec

        with self._registry_calls():
            version = self._resolve_version()
            model_uri = self._cluster_uri(version)
        return SeldonDeploySpec(
            deployment_name=self.deployment_name,
            version=version,
            model_uri=model_uri,
            traffic=self.traffic,
            shadow=self.shadow,
            replicas=self.replicas,
            container_resources=self.container_resources,
            model_name=self.model_name,
            image=self.image,
        )

    def _cluster_uri(self, version: str) -> str:
        """Where the cluster's model server downloads the model: the artifact URI, not ``models:/``."""
        if self.model_uri:
            return self.model_uri
        return self._mlflow.client.get_model_version_download_uri(self.model_name, version)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._kubernetes().complete(event)

    def _model_inputs(self, result: dict[str, Any] | None) -> list[Any]:
        from airflow_mlops import lineage

        inputs = []
        version = (result or {}).get("version") or self.version
        model_name = (result or {}).get("model_name") or self.model_name
        if model_name and version and self.model_uri in (None, "previous"):
            try:
                tracking, registry = lineage.mlflow_uris(self.mlflow_conn_id)
            except Exception as err:  # no MLflow connection here (a rollback from files): no model input
                self.log.debug("The served model version is not named: %s", err)
            else:
                dataset = lineage.model_version_dataset(registry, model_name, version)
                inputs.append(lineage.input_dataset(dataset, {"datasetType": lineage.type_facet("MODEL")}))
        elif self.model_uri and self.model_uri.startswith(("runs:/", "models:/")):
            tracking, registry = lineage.mlflow_uris(self.mlflow_conn_id)
            dataset = lineage.model_uri_dataset(self.model_uri, tracking, registry)
            inputs.append(lineage.input_dataset(dataset))
        elif self.model_uri and self.model_uri != "previous":  # a folder or bucket holding the model
            inputs.append(lineage.input_dataset(lineage.path_dataset(self.model_uri, logical=False)))
        if self.reference_path:
            inputs.append(lineage.file_input(self.reference_path))
        return inputs

    def on_kill(self) -> None:
        # a server started by this try but never switched to must not be left running
        if self._seldon is not None and self._pending is not None:
            self._seldon.stop_state(self._pending)


class SeldonPromoteCanaryOperator(_SeldonOperator):
    """
    Give the canary (or shadow) version all the traffic and retire the version it replaces.

    Refuses, leaving routing untouched, when the canary does not answer. Running it again
    once promoted changes nothing.

    :param deployment_name: the deployment (templated).
    :param seldon_conn_id: the ``seldon`` connection.
    """

    template_fields: Sequence[str] = ("deployment_name",)

    def execute(self, context: Context) -> dict[str, Any]:
        if self.seldon.mode == "kubernetes":
            rollout = self._kubernetes()
            return self._await_rollout(rollout, rollout.start_promotion(self.deployment_name))
        state = self.seldon.state(self.deployment_name)
        if state is not None and not state.canary and not state.shadow:
            self.log.info("%s has no canary: version %s serves all", self.deployment_name, state.version)
            return self._result(context, changed=False)
        promoted = self.seldon.promote_canary(self.deployment_name, self.drain_seconds)
        self._record_rollout(context, outcome="succeeded", version=promoted["version"], strategy="promote")
        return self._result(context, changed=True)


class SeldonRollbackOperator(SeldonDeployOperator):
    """
    Serve a version this deployment served again: the one before the current version, or
    ``to_version`` — any version it served, the current one included (redeployed fresh: new
    model servers from its kept files, e.g. to recover one that crashed).

    The same blue/green rollout as a deploy (readiness, smoke prediction, switch), from the
    model files kept for every version this deployment served; a canary or shadow is removed.

    :param deployment_name: the deployment (templated).
    :param to_version: the version to go back to (templated); default the previous one.
    """

    template_fields: Sequence[str] = (*SeldonDeployOperator.template_fields, "to_version")

    def __init__(self, *, to_version: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_uri", "previous")  # resolved from the deployment's history
        super().__init__(**kwargs)
        self.to_version = to_version

    def _target(self) -> HistoryEntry:
        from airflow_mlops.serving.state import EMPTY

        state = self.seldon.state(self.deployment_name) or EMPTY
        current: list[HistoryEntry] = []
        if state.main and state.main.get("model_dir"):
            main = state.main
            current = [
                {  # type: ignore[list-item]
                    k: main.get(k)
                    for k in (
                        "version",
                        "model_name",
                        "model_uri",
                        "model_dir",
                        "reference_path",
                        "started_at",
                    )
                }
            ]
        if self.to_version:
            # any version it served, the current one included (newest record first)
            known = [*current, *reversed(state.history)]
            history = [h for h in known if str(h.get("version")) == str(self.to_version)]
        else:
            history = [h for h in reversed(state.history) if str(h.get("version")) != state.version]
        if not history and self.to_version:
            registered = self._registered(state.model_name or self.model_name)
            if registered is not None:
                return registered
        if not history:
            served = sorted({str(h.get("version")) for h in [*current, *state.history]})
            raise DeploymentError(
                f"{self.deployment_name!r} has no "
                + (
                    f"version {self.to_version} it served or registered"
                    if self.to_version
                    else "earlier version"
                )
                + f" to roll back to (it serves {state.version!r}; versions it served: {served})."
            )
        return history[0]

    def _registered(self, model_name: str | None) -> HistoryEntry | None:
        """``to_version`` of the registered model, when the deployment never served it (None: no model)."""
        if not model_name:
            return None
        try:
            self._mlflow.client.get_model_version(model_name, str(self.to_version))
        except Exception as err:
            raise DeploymentError(
                f"{self.deployment_name!r} never served version {self.to_version} and the registry has no "
                f"version {self.to_version} of {model_name!r} ({type(err).__name__}: {str(err)[:200]})."
            ) from err
        return {
            "version": str(self.to_version),
            "model_name": model_name,
            "model_uri": None,
            "model_dir": None,
        }

    def _already_serving(self, state: DeploymentState | None, version: str) -> bool:
        return False  # a rollback always serves fresh model servers (the current version's too)

    def _resolve_version(self) -> str:
        return str(self._target()["version"])

    def _source_uri(self, version: str) -> str:
        target = self._target()
        if target.get("model_uri") or target.get("model_dir"):
            return target.get("model_uri") or str(target["model_dir"])
        return f"models:/{target['model_name']}/{version}"  # a registered version never served here

    def _model_dir(self, version: str) -> Path:
        target = self._target()
        if target.get("model_dir") and (Path(target["model_dir"]) / "MLmodel").exists():
            return Path(target["model_dir"])
        return super()._model_dir(version)  # downloaded from the registry (kept from now on)

    def execute(self, context: Context) -> dict[str, Any]:
        if self.seldon.mode == "kubernetes":
            rollout = self._kubernetes(self.ready_timeout)
            started = rollout.start_rollback(self.deployment_name, self.to_version)
            return self._await_rollout(rollout, started, self.deferrable)
        target = self._target()
        self.reference_path = self.reference_path or target.get("reference_path")
        # the registered model the restored version belongs to, as a deploy records it
        self.model_name = self.model_name or target.get("model_name")
        return self._deploy_local(context)
