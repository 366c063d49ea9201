"""MLflow 3: tracking and model registry through an ``mlflow`` connection.

``import mlflow`` costs ~8 s: the client is built on first use only. Waiting for a model
version (sensor poke and trigger) talks to the registry's REST API directly instead: no
``mlflow`` import, no credentials in ``os.environ``, and an async variant for the triggerer.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops._imports import require

# the run tree (parent run per DAG run, one run per task) is shared with the training runtime;
# ``filter_value`` quotes a value for an MLflow search filter
from airflow_mlops.runtimes.run_tree import (
    PARENT_RUN_ID_TAG,
    TaskRef,
    filter_value,
    find_or_create_parent,
    supersede_earlier_tries,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

#: the experiment tag by which MLflow's UI tells a model-training experiment from a GenAI one
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


class MlflowHook(BaseHook):
    """
    Talk to an MLflow tracking server and model registry.

    Connection: ``host`` is the tracking URI (``http://127.0.0.1:5000``; a bare host gets
    ``schema``/``port``), ``login``/``password`` are basic-auth credentials or a token, extras
    ``experiment`` (default experiment) and ``registry_uri``.

    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def connection(self):
        return self.get_connection(self.mlflow_conn_id)

    @property
    def tracking_uri(self) -> str:
        return tracking_uri_of(self.connection, self.mlflow_conn_id)

    @property
    def default_experiment(self) -> str | None:
        return self.connection.extra_dejson.get("experiment")

    def subprocess_env(self) -> dict[str, str]:
        """Variables that point an MLflow client in another process at this server (credentials included)."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if registry := self.connection.extra_dejson.get("registry_uri"):
            env["MLFLOW_REGISTRY_URI"] = registry
        if self.connection.login:
            env["MLFLOW_TRACKING_USERNAME"] = self.connection.login
            env["MLFLOW_TRACKING_PASSWORD"] = self.connection.password or ""
        elif self.connection.password:
            env["MLFLOW_TRACKING_TOKEN"] = self.connection.password
        return env

    @cached_property
    def mlflow(self):
        """The ``mlflow`` module for this connection's server, its output routed (:func:`quiet_mlflow`)."""
        quiet_mlflow()
        mlflow = require("mlflow", "mlflow")
        quiet_mlflow()
        # mlflow reads credentials from the environment only; this is the task's own process.
        for key, value in self.subprocess_env().items():
            os.environ[key] = value
        mlflow.set_tracking_uri(self.tracking_uri)
        if registry := self.connection.extra_dejson.get("registry_uri"):
            mlflow.set_registry_uri(registry)
        return mlflow

    @cached_property
    def client(self):
        return self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def run_url(self, run_id: str, experiment_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.tracking_uri}/#/models/{name}/versions/{version}"

    @contextmanager
    def unreachable_as_error(self, task: str, naming_server: bool = False) -> Iterator[None]:
        """
        Around a task's MLflow calls: a server that stays unreachable after the client's retries
        (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, about 4 minutes by default) fails the task with an
        :class:`~airflow_mlops.exceptions.MlopsError` that names the server and what to do.

        :param naming_server: only an error whose text names this server's address counts (around
            a subprocess whose output may report other connections failing, e.g. Horovod's ranks).
        """
        from airflow_mlops.exceptions import MlopsError

        try:
            yield
        except Exception as err:
            if not _is_unreachable(err):
                raise
            detail = self._line_naming_server(err) if naming_server else _first_line(err)
            if not detail:
                raise
            raise MlopsError(
                f"{task}: the MLflow server at {self.tracking_uri} (connection '{self.mlflow_conn_id}') "
                f"did not answer after the client's retries: {detail}. Start it or fix the "
                "connection's host, then retry the task: it is idempotent (no second model version, "
                "no second alias move). Longer outages: give the task retries, or raise "
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT."
            ) from err

    def _line_naming_server(self, err: BaseException) -> str | None:
        """The first line of ``err`` that names this server's address (None: no line does)."""
        from urllib.parse import urlsplit

        try:
            address = urlsplit(self.tracking_uri).netloc
        except Exception:  # noqa: BLE001 - no connection: nothing to name
            return None
        lines = [line.strip() for line in str(err).splitlines() if address and address in line]
        return lines[0][:500] if lines else None

    def find_version_for_run(self, name: str, run_id: str):
        """The registered version of ``name`` created from ``run_id``, or None (makes retries idempotent)."""
        versions = self.client.search_model_versions(f"name={filter_value(name)} and run_id='{run_id}'")
        return min(versions, key=lambda v: int(v.version)) if versions else None

    def wait_until_ready(self, name: str, version: str, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            mv = self.client.get_model_version(name, version)
            if mv.status == "READY":
                return mv
            if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RuntimeError(f"Model {name} version {version} is {mv.status}: {mv.status_message}")
            time.sleep(1)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias).version
        except MlflowException as err:
            # only "no such alias/model" means None: an unreachable server must not read as "no
            # champion" (a gate would then promote, a register move the alias)
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and (
                "not found" in err.message or err.error_code == "RESOURCE_DOES_NOT_EXIST"
            ):
                return None
            raise

    def set_alias(self, name: str, alias: str, version: str | int) -> str | None:
        """
        Point ``alias`` at ``version`` unless it already does (idempotent).

        :return: the version the alias pointed at before (None when it did not exist).
        """
        previous = self.alias_version(name, alias)
        if previous != str(version):
            self.client.set_registered_model_alias(name, alias, str(version))
        return previous

    def set_version_tags(self, name: str, version: str | int, tags: Mapping[str, Any]) -> None:
        """Set tags on a model version; values become strings (setting a tag twice is harmless)."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def version_experiment_id(self, name: str, version: str | int) -> str:
        """
        The experiment of the run that produced ``version`` ("the model's experiment").

        Falls back to the connection's ``experiment`` extra, then to MLflow's default experiment,
        when the version has no run (registered from a path).
        """
        run_id = self.client.get_model_version(name, str(version)).run_id
        if run_id:
            return self.client.get_run(run_id).info.experiment_id
        if self.default_experiment:
            return self.experiment_id(self.default_experiment)
        return "0"

    def experiment_id(self, name: str) -> str:
        """
        The id of the experiment ``name``, created if missing (safe when tasks create it at once).

        An experiment created here is tagged ``mlflow.experimentKind=custom_model_development``, so
        MLflow's UI shows it as a model-training experiment (its runs table, where the run tree is).

        :raises MlopsError: the experiment is deleted (MLflow logs nothing into it).
        """
        from mlflow.exceptions import MlflowException

        from airflow_mlops.exceptions import MlopsError

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                # a model-training experiment: MLflow's UI opens it on its runs (not GenAI traces)
                return self.client.create_experiment(
                    name, tags={EXPERIMENT_KIND_TAG: "custom_model_development"}
                )
            except MlflowException as err:  # another task created it meanwhile
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(name)
        if found.lifecycle_stage != "active":
            raise MlopsError(
                f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted: restore it "
                f"(MlflowClient().restore_experiment({found.experiment_id!r})) or log to another experiment."
            )
        return found.experiment_id

    # -- the run tree: one parent run per DAG run, one nested run per task ------------------------

    def local_artifact_root(self, experiment: str) -> str | None:
        """
        The folder on this host the experiment's artifacts are written to, when its artifact
        location is a local path (a server started with a local ``--default-artifact-root``):
        a client writes there directly, so a container logging to the experiment mounts it.
        None for object stores and proxied (``mlflow-artifacts:``) locations.
        """
        found = self.client.get_experiment_by_name(experiment)
        location = found.artifact_location if found is not None else ""
        if location.startswith("file://"):
            location = location.removeprefix("file://")
        if not location.startswith("/"):
            return None
        Path(location).mkdir(parents=True, exist_ok=True)
        return location

    def dag_run_parent(self, experiment_id: str, task: TaskRef) -> str:
        """
        The parent run of ``task``'s DAG run in ``experiment_id``, created on first use.

        Exactly one per DAG run and experiment, whichever tasks ask at once on whichever workers
        (:func:`airflow_mlops.runtimes.run_tree.find_or_create_parent`).
        """
        return find_or_create_parent(self.client, experiment_id, task.dag_id, task.run_id)

    @contextmanager
    def parent_running(self, parent_run_id: str) -> Iterator[str]:
        """
        Around a long task (training): the parent is ``RUNNING`` meanwhile, then ``FINISHED``
        (``FAILED`` when the block raises) with this time as its end.

        The parent's status and end time are those of the latest task that started or ended.
        """
        self.set_parent_status(parent_run_id, "RUNNING")
        try:
            yield parent_run_id
        except BaseException:
            self.set_parent_status(parent_run_id, "FAILED")
            raise
        self.set_parent_status(parent_run_id, "FINISHED")

    def set_parent_status(self, parent_run_id: str, status: str) -> None:
        """Set the parent run's status (``RUNNING``, ``FINISHED``, ``FAILED``); a failure is only logged."""
        try:
            if status == "RUNNING":
                self.client.update_run(parent_run_id, status=status)
            else:
                self.client.set_terminated(parent_run_id, status=status)
        except Exception as err:  # noqa: BLE001 - the parent's status is a display; never fail the task
            self.log.warning("Could not set the parent run %s to %s: %s", parent_run_id, status, err)

    def log_record_run(
        self,
        experiment_id: str,
        run_name: str,
        *,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        record: Mapping[str, Any],
        artifact_file: str,
        task: TaskRef | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """
        Record a decision as a finished MLflow run: ``metrics``, ``tags`` and ``record`` as a JSON artifact.

        With ``task`` and ``parent_run_id`` (:meth:`dag_run_parent`) the run is the task's run in
        its DAG run's tree: nested in the parent, tagged with the task instance, and the runs of the
        task's earlier tries are nested under it
        (:func:`~airflow_mlops.runtimes.run_tree.supersede_earlier_tries`).

        :return: the run id.
        """
        from mlflow.entities import Metric

        tags = dict(tags)
        if task is not None:
            tags = {**task.tags(), **tags}
        if parent_run_id is not None:
            tags[PARENT_RUN_ID_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            if task is not None:
                supersede_earlier_tries(self.client, experiment_id, run_id, task)
            now = int(time.time() * 1000)
            batch = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
            for start in range(0, len(batch), 1000):  # the REST API takes at most 1000 metrics a call
                self.client.log_batch(run_id, metrics=batch[start : start + 1000])
            self.client.log_dict(run_id, dict(record), artifact_file)
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            if parent_run_id is not None:
                self.set_parent_status(parent_run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        if parent_run_id is not None:
            self.set_parent_status(parent_run_id, "FINISHED")
        return run_id

    # -- registry over REST (sensor poke; the trigger uses the async twin) ----------------------

    def find_new_version(
        self, name: str, alias: str | None = None, after_version: str | int | None = None
    ) -> dict[str, Any] | None:
        """
        The version a :class:`~airflow_mlops.sensors.mlflow.MlflowModelVersionSensor` waits for, or None.

        Without ``alias``: the newest ``READY`` version of ``name`` numbered above ``after_version``
        (any version when None). With ``alias``: the version ``alias`` points at, when it exists
        and differs from ``after_version``. The result is :func:`version_summary`'s dict.
        """
        import requests

        base_url, headers = registry_endpoint(self.connection, self.mlflow_conn_id)
        path, params = new_version_request(name, alias, after_version)
        response = requests.get(f"{base_url}{path}", params=params, headers=headers, timeout=30)
        return new_version_from_response(
            response.status_code, response_json(response.text), alias, after_version
        )

    def test_connection(self) -> tuple[bool, str]:
        """
        Reach the tracking server: ``GET /health``, then one authenticated REST call.

        The second call (search one experiment, with the connection's credentials) fails on
        rejected credentials or a proxy answering in place of MLflow, which ``/health`` alone
        would not show. Each request times out after 5 s.
        """
        import requests

        try:
            uri = self.tracking_uri
            _, headers = registry_endpoint(self.connection, self.mlflow_conn_id)
        except Exception as err:
            return False, f"Connection '{self.mlflow_conn_id}' is not usable: {err}"
        if not uri.startswith(("http://", "https://")):
            return False, f"Tracking URI {uri!r} is not an MLflow tracking server (http:// or https://)."
        try:
            health = requests.get(f"{uri}/health", timeout=5)
            health.raise_for_status()
            search = requests.get(
                f"{uri}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                headers=headers,
                timeout=5,
            )
        except Exception as err:
            return False, f"MLflow server at {uri} is not reachable: {err}"
        if search.status_code in (401, 403):
            return (
                False,
                f"MLflow server at {uri} refused the connection's credentials (HTTP {search.status_code}).",
            )
        try:
            search.raise_for_status()
            search.json()
        except Exception as err:
            return False, f"MLflow server at {uri} is healthy but its REST API failed: {err}"
        return True, f"MLflow server at {uri} is healthy and its REST API answers."


# -- helpers shared by the hook (sync) and MlflowModelVersionTrigger (async) -----------------------


#: MLflow warnings that are routine for this provider, logged at DEBUG
_ROUTINE_MLFLOW_WARNINGS = (
    # registering ``runs:/<id>/model`` of an MLflow 3 run: the logged model is not a run artifact
    r"has no artifacts at artifact path .*registering model based on models:/",
)


def quiet_mlflow() -> None:
    """
    Keep MLflow's routine output out of the task's errors (Airflow logs a task's stderr at ERROR).

    Before ``import mlflow``: no artifact progress bars, no "View run ... at" links printed to
    stdout (the task has its MLflow extra link). After it: MLflow's loggers go to the task log with
    routine records at DEBUG (:func:`airflow_mlops.library_logs.route_logger`), and what MLflow
    prints to stderr itself ("Successfully registered model", "Created version ...") is logged at
    DEBUG. Settings a user made in the environment are kept. Idempotent.
    """
    import sys

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if "mlflow" not in sys.modules:
        return
    from airflow_mlops.library_logs import LogStream, route_logger

    route_logger("mlflow", routine=_ROUTINE_MLFLOW_WARNINGS)
    try:
        from mlflow.utils import logging_utils
    except ImportError:  # pragma: no cover - an MLflow without it
        return
    if not isinstance(logging_utils.MLFLOW_LOGGING_STREAM, LogStream):
        # eprint() writes to this stream, which forwards to sys.stderr
        logging_utils.MLFLOW_LOGGING_STREAM = LogStream("mlflow")


#: what an MLflow client error says when the server could not be reached (urllib3 / requests)
_UNREACHABLE_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Read timed out",
    "RemoteDisconnected",
    "Connection reset",
    "Connection aborted",
)


def _is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (an MLflow or requests error) means the server did not answer."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError") or isinstance(
            current, ConnectionError
        ):
            return True
        if any(marker in str(current) for marker in _UNREACHABLE_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:500]


def tracking_uri_of(conn: Any, conn_id: str) -> str:
    """The tracking URI an ``mlflow`` connection describes (``host``, or ``schema://host:port``)."""
    host = conn.host or ""
    if "://" in host:
        return host.rstrip("/")
    if not host:
        raise ValueError(f"Connection '{conn_id}' has no host: set it to the tracking URI.")
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'http'}://{host}{port}"


def registry_endpoint(conn: Any, conn_id: str) -> tuple[str, dict[str, str]]:
    """
    Base URL of the registry's REST API and the headers that authenticate to it.

    The registry is ``registry_uri`` when that is an HTTP URL, else the tracking server. Login
    and password are basic auth; a password alone is a bearer token (as ``MLFLOW_TRACKING_TOKEN``).
    """
    registry = (conn.extra_dejson or {}).get("registry_uri") or ""
    base = (
        registry.rstrip("/")
        if registry.startswith(("http://", "https://"))
        else tracking_uri_of(conn, conn_id)
    )
    headers = {"Accept": "application/json"}
    if conn.login:
        token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    return base, headers


#: how many of the newest versions a search reads: enough to skip a few still being registered
_SEARCH_PAGE = 20


def new_version_request(
    name: str, alias: str | None, after_version: str | int | None
) -> tuple[str, dict[str, str]]:
    """The REST path and query parameters that answer :meth:`MlflowHook.find_new_version`."""
    if alias:
        return "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias}
    after = int(after_version) if after_version not in (None, "") else 0
    return "/api/2.0/mlflow/model-versions/search", {
        "filter": f"name={filter_value(name)} and version_number > {after}",
        "order_by": "version_number DESC",
        "max_results": str(_SEARCH_PAGE),
    }


def new_version_from_response(
    status: int, body: Mapping[str, Any], alias: str | None, after_version: str | int | None
) -> dict[str, Any] | None:
    """
    Interpret the registry's answer to :func:`new_version_request`: the version found, or None.

    A model or alias that does not exist yet means "not yet" (404, or 400 "... not found");
    any other error is raised, with the server's message.
    """
    if status in (400, 404) and _is_not_found(body):
        return None
    if status != 200:
        raise RuntimeError(
            f"MLflow registry answered HTTP {status}: {body.get('message') or body}. "
            "Check the mlflow connection's host and credentials."
        )
    if alias:
        version = version_summary(body.get("model_version") or {})
        unchanged = after_version not in (None, "") and version["version"] == str(after_version)
        return None if unchanged or not version["version"] else version
    ready = [v for v in body.get("model_versions") or [] if v.get("status") == "READY"]
    return version_summary(max(ready, key=lambda v: int(v["version"]))) if ready else None


def version_summary(mv: Any) -> dict[str, Any]:
    """A model version (REST dict or ``ModelVersion`` entity) as a JSON-serialisable dict."""
    get = mv.get if isinstance(mv, Mapping) else lambda key, default=None: getattr(mv, key, default)
    tags = get("tags") or {}
    if isinstance(tags, list):  # the REST API sends [{"key": ..., "value": ...}]
        tags = {t["key"]: t.get("value") for t in tags}
    return {
        "name": get("name"),
        "version": str(get("version") or ""),
        "run_id": get("run_id") or None,
        "source": get("source"),
        "status": get("status"),
        "aliases": sorted(get("aliases") or []),
        "tags": dict(tags),
        "creation_timestamp": get("creation_timestamp"),
    }


def _is_not_found(body: Mapping[str, Any]) -> bool:
    return body.get("error_code") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(body.get("message", ""))


def response_json(text: str) -> dict[str, Any]:
    """A JSON object from a response body; a non-JSON body becomes ``{"message": <its start>}``."""
    import json

    try:
        body = json.loads(text) if text else {}
    except ValueError:
        return {"message": text[:500]}
    return body if isinstance(body, dict) else {"message": str(body)[:500]}
