"""Wait for a Seldon deployment to serve (local microservice or SeldonDeployment) without a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlops.kubernetes.seldon import (
    SELDON_GROUP,
    SELDON_KIND,
    SELDON_PLURAL,
    SELDON_VERSION,
    deployment_state,
    endpoint,
)

if TYPE_CHECKING:
    from airflow_mlops.serving.state import DeploymentState, DeploymentStore

MODES = ("kubernetes", "local")


class SeldonDeploymentTrigger(BaseTrigger):
    """
    Poll a deployment until it serves, fails or runs out of time; yield exactly one event.

    The event is ``{"status": "success" | "failed" | "timeout" | "error", "deployment_name",
    "mode", "namespace", "state", "message", "endpoint"}`` where ``state`` is ``Available``,
    ``Creating`` or ``Failed`` (``Unknown`` when it could not be read). The trigger only reads (it
    may run twice); restoring the previous spec is the operator's job when it resumes.

    * ``mode="kubernetes"``: reads the SeldonDeployment's ``status.state`` (see
      :func:`~airflow_mlops.kubernetes.seldon.deployment_state`) every ``poll_interval``, the
      first time after one interval (right after a replace the status may still describe the old
      spec): ``Available`` → success, ``Failed`` or a deleted object → failed; ``max_errors``
      consecutive failed reads → error.
    * ``mode="local"``: reads the deployment's routing through
      :mod:`airflow_mlops.serving.state` (``<data_dir>/deployments/<deployment_name>/current.json``),
      as the synchronous check (:meth:`SeldonHook.local_status`) does: the router's or a
      predictor's process gone (pid and start time) → failed, the file missing for
      ``missing_grace`` seconds → failed ("no deployment"), ``GET {endpoint}/health/ping``
      answering 200 → success (when ``expected_version`` is set, only once the routing names
      that version). With ``data_dir`` an object store and no record on this host (the
      deployment is served by another one, the triggerer runs elsewhere), the routing its host
      published (:mod:`airflow_mlops.serving.publish`) is read instead; its processes run
      there, so its endpoint alone tells whether it serves.

    :param deployment_name: the deployment's name.
    :param mode: ``kubernetes`` or ``local``.
    :param namespace: the SeldonDeployment's namespace (``kubernetes`` mode); None: the
        ``kubernetes`` connection's ``namespace`` extra, else ``default``.
    :param kubernetes_conn_id: the ``kubernetes`` connection (``kubernetes`` mode); None:
        ``kubernetes_default``.
    :param poll_interval: seconds between two reads.
    :param timeout_at: Unix time after which a ``timeout`` event is sent (absolute, so a trigger
        restarted on another triggerer keeps the task's deadline); None waits forever.
    :param max_errors: consecutive failed reads (API server unreachable...) before an ``error`` event.
    :param data_dir: root of the local deployments (``local`` mode); None: ``[mlops] data_dir``.
    :param expected_version: ``local`` mode: the version ``current.json`` must name to succeed.
    :param missing_grace: ``local`` mode: seconds ``current.json`` may be missing before failing.
    :param written: ``kubernetes`` mode, a rollout's
        :func:`~airflow_mlops.kubernetes.seldon.write_marker`: a status the Seldon operator has not
        rewritten since that write is the previous spec's and reads as ``Creating``.
    """

    def __init__(
        self,
        deployment_name: str,
        mode: str = "kubernetes",
        namespace: str | None = None,
        kubernetes_conn_id: str | None = "kubernetes_default",
        poll_interval: float = 10.0,
        timeout_at: float | None = None,
        max_errors: int = 3,
        data_dir: str | None = None,
        expected_version: str | None = None,
        missing_grace: float = 30.0,
        written: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.deployment_name = deployment_name
        self.mode = mode
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval = poll_interval
        self.timeout_at = timeout_at
        self.max_errors = max_errors
        self.data_dir = data_dir
        self.expected_version = None if expected_version is None else str(expected_version)
        self.missing_grace = missing_grace
        self.written = written

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "deployment_name": self.deployment_name,
                "mode": self.mode,
                "namespace": self.namespace,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "max_errors": self.max_errors,
                "data_dir": self.data_dir,
                "expected_version": self.expected_version,
                "missing_grace": self.missing_grace,
                "written": self.written,
            },
        )

    def _event(
        self,
        status: str,
        state: str,
        message: str,
        url: str | None = None,
        namespace: str | None = None,
    ) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "deployment_name": self.deployment_name,
                "mode": self.mode,
                "namespace": namespace or self.namespace,
                "state": state,
                "message": message,
                "endpoint": url,
            }
        )

    def _timed_out(self) -> bool:
        return self.timeout_at is not None and time.time() >= self.timeout_at

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # each mode's loop yields exactly one event and then returns
        events = self._run_local() if self.mode == "local" else self._run_kubernetes()
        async for event in events:
            yield event

    # --- kubernetes ----------------------------------------------------------------------

    async def _read(self, hook, namespace: str) -> dict[str, Any]:
        from kubernetes_asyncio import client

        async with hook.get_conn() as api:
            return await client.CustomObjectsApi(api).get_namespaced_custom_object(
                SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, self.deployment_name
            )

    async def _namespace(self, hook) -> str:
        if self.namespace:
            return self.namespace
        # what KubernetesHook.get_namespace() reads: the connection's extra
        extras = await hook.get_conn_extras()
        return extras.get("namespace") or extras.get("extra__kubernetes__namespace") or "default"

    async def _run_kubernetes(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id or "kubernetes_default")
        namespace = await self._namespace(hook)
        where = f"{SELDON_KIND} {namespace}/{self.deployment_name}"
        state, message, errors = "Unknown", "not read yet", 0
        while True:
            # sleep first: right after a replace, the status still describes the old spec until the
            # Seldon operator reconciles (it never reports observedGeneration: ``written`` tells)
            await asyncio.sleep(self.poll_interval)
            try:
                obj = await self._read(hook, namespace)
            except Exception as err:
                if getattr(err, "status", None) == 404:
                    why = f"{where} does not exist (deleted outside Airflow?)"
                    yield self._event("failed", "Failed", why, namespace=namespace)
                    return
                errors += 1
                self.log.warning("Reading %s failed (%d/%d): %s", where, errors, self.max_errors, err)
                if errors >= self.max_errors:
                    why = f"{where} could not be read: {err}"
                    yield self._event("error", "Unknown", why, namespace=namespace)
                    return
            else:
                errors = 0
                state, message = deployment_state(obj, self.written)
                if state in ("Available", "Failed"):
                    status = "success" if state == "Available" else "failed"
                    yield self._event(status, state, message, endpoint(obj), namespace)
                    return
                self.log.info("%s is %s: %s", where, state, message)
            if self._timed_out():
                why = f"{where} was not Available in time; last: {message}"
                yield self._event("timeout", state, why, namespace=namespace)
                return

    # --- local ---------------------------------------------------------------------------

    def _store(self) -> DeploymentStore:
        from airflow_mlops import settings
        from airflow_mlops.serving.state import DeploymentStore

        return DeploymentStore.of(
            Path(self.data_dir) if self.data_dir else settings.data_dir(), self.deployment_name
        )

    def _published(self) -> tuple[str, DeploymentState | None] | None:
        """``(where, routing or None)`` published for this deployment by the host serving it, when
        ``[mlops] data_dir`` is an object store (and no ``data_dir`` was given); else None.
        Builds an ``ObjectStoragePath``: call it in a thread (a store's file system may run an
        event loop of its own)."""
        from airflow_mlops import storage
        from airflow_mlops.serving.publish import published_dir, read_published

        if self.data_dir or not storage.data_root_is_remote():
            return None
        path = published_dir(self.deployment_name) / "current.json"
        return storage.location(path), read_published(path)

    async def _read_local(self, store: DeploymentStore) -> tuple[DeploymentState | None, str, bool]:
        """``(routing or None, where it was looked for, published by another host)``.

        :raises CorruptState: a record that is not a routing (a bad file stays bad).
        """
        from airflow_mlops.serving.state import CorruptState

        where = str(store.current_path)
        try:
            current = store.read()
        except OSError as err:  # unreadable now: count it as not there yet
            self.log.warning("Reading %s failed: %s", where, err)
            return None, where, False
        if current is not None:
            return current, where, False
        try:
            published = await asyncio.to_thread(self._published)
        except ValueError as err:
            raise CorruptState(str(err)) from err
        except Exception as err:  # the store unreachable now: not there yet
            self.log.warning("Reading the published routing of %s failed: %s", self.deployment_name, err)
            return None, where, False
        if published is None:
            return None, where, False
        location, current = published
        return current, f"{where} (nor {location})", current is not None

    async def _check_local(self, client, store: DeploymentStore, missing_since: float | None):
        """One look: ``(final status or None, state, message, endpoint, missing since)``."""
        import httpx

        from airflow_mlops.serving.state import CorruptState

        try:
            current, path, published = await self._read_local(store)
        except CorruptState as err:  # written atomically: a bad file stays bad
            return (
                "failed",
                "Failed",
                f"the state of deployment {self.deployment_name!r} is unreadable: {err}",
                None,
                None,
            )
        if current is None:
            now = time.monotonic()
            missing_since = now if missing_since is None else missing_since
            if now - missing_since >= self.missing_grace:
                why = f"no deployment {self.deployment_name!r}: {path} is missing"
                return "failed", "Failed", why, None, missing_since
            return None, "Creating", f"{path} does not exist yet", None, missing_since
        url, name = current.endpoint, self.deployment_name
        if published:  # its processes run on the host that published it: not checked from here
            failure = None if current.main and url else f"deployment {name!r} names no endpoint"
            recovering = None
        else:
            failure = current.failure(name)
            recovering = current.recovering()  # a process died and its supervisor restarts it
        if failure:
            return "failed", "Failed", failure, url, None
        version = current.version
        if self.expected_version is not None and version != self.expected_version:
            why = f"serving version {version}, waiting for {self.expected_version}"
            return None, "Creating", why, url, None
        try:
            response = await client.get(f"{url}/health/ping")
        except httpx.HTTPError as err:
            why = f"{url}/health/ping: {type(err).__name__}: {err}" + (
                f"; {recovering}" if recovering else ""
            )
            return None, "Creating", why, url, None
        if response.status_code == 200:
            from airflow_mlops.serving.state import health_summary

            served = f"served on {current.raw.get('served_on')}" if published else health_summary(current)
            why = f"{url} answers /health/ping (version {version}; {served})"
            return "success", "Available", why, url, None
        return None, "Creating", f"{url}/health/ping answered {response.status_code}", url, None

    async def _run_local(self) -> AsyncIterator[TriggerEvent]:
        import httpx

        store = self._store()
        missing_since: float | None = None
        # trust_env=False: a proxy from the environment must not intercept 127.0.0.1
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while True:
                status, state, message, url, missing_since = await self._check_local(
                    client, store, missing_since
                )
                if status is not None:
                    yield self._event(status, state, message, url)
                    return
                self.log.info("Deployment %s is %s: %s", self.deployment_name, state, message)
                if self._timed_out():
                    why = f"deployment {self.deployment_name!r} was not Available in time; last: {message}"
                    yield self._event("timeout", state, why, url)
                    return
                await asyncio.sleep(self.poll_interval)
