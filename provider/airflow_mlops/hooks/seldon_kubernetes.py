"""Create, replace, restore and delete ``SeldonDeployment`` objects (machinelearning.seldon.io/v1).

The API calls go through the cncf-kubernetes provider's ``KubernetesHook`` (its ``kubernetes``
connection: in-cluster, kube config path or kube config JSON in the extra) and its
``CustomObjectsApi``. ``import kubernetes`` costs ~1.6 s, so that hook is imported on first use,
never at module import. Objects are plain dicts, like the manifests of
:mod:`airflow_mlops.kubernetes.seldon`.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_mlops.hooks.kubernetes import KubernetesApiHook, _status
from airflow_mlops.kubernetes.seldon import (
    SELDON_GROUP,
    SELDON_KIND,
    SELDON_PLURAL,
    SELDON_VERSION,
    deployment_state,
    spec_for_rollback,
)

#: attempts of a replace that loses a race (409 Conflict: someone changed the object in between)
_CONFLICT_RETRIES = 3


class SeldonDeploymentHook(KubernetesApiHook):
    """
    SeldonDeployments on the cluster of a ``kubernetes`` connection (the cncf-kubernetes provider's type).

    :param kubernetes_conn_id: the ``kubernetes`` connection.
    :param namespace: namespace of the deployments; None takes the connection's ``namespace``
        extra, else ``default``.
    """

    hook_name = "Seldon deployments on Kubernetes"

    @property
    def _api(self):
        return self.kube.custom_object_client

    def _where(self, name: str) -> str:
        return f"{SELDON_KIND} {self.namespace}/{name}"

    # --- reads -------------------------------------------------------------------------

    def get(self, name: str, request_timeout: float | None = None) -> dict[str, Any] | None:
        """The live object ``name`` (with its status), or None when it does not exist.

        :param request_timeout: seconds the API server has to answer (None: the client's default,
            no limit); a reader that must not hang on an unreachable cluster sets one.
        """
        timeout = {} if request_timeout is None else {"_request_timeout": request_timeout}
        try:
            return self._api.get_namespaced_custom_object(
                SELDON_GROUP, SELDON_VERSION, self.namespace, SELDON_PLURAL, name, **timeout
            )
        except Exception as err:
            if _status(err) == 404:
                return None
            raise

    def state(
        self, name: str, request_timeout: float | None = None, written: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """``(state, message)`` of ``name`` (see :func:`~airflow_mlops.kubernetes.seldon.deployment_state`).

        A missing object reads as ``Failed``: whatever was rolled out is not serving.

        :param request_timeout: see :meth:`get`.
        :param written: the rollout's :func:`~airflow_mlops.kubernetes.seldon.write_marker`: a status
            not rewritten since that write is the previous spec's and reads as ``Creating``.
        """
        obj = self.get(name, request_timeout)
        if obj is None:
            return "Failed", f"{self._where(name)} does not exist (deleted outside Airflow?)"
        return deployment_state(obj, written)

    # --- writes ------------------------------------------------------------------------

    def _body(self, manifest: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(manifest)
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, self.namespace):
            raise ValueError(
                f"The manifest is for namespace {meta['namespace']!r} but the hook works in "
                f"{self.namespace!r}; pass namespace= to the hook or render the manifest for it."
            )
        meta["namespace"] = self.namespace
        meta.pop("resourceVersion", None)
        body.pop("status", None)  # status belongs to the operator (status subresource)
        return body

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._api.create_namespaced_custom_object(
            SELDON_GROUP, SELDON_VERSION, self.namespace, SELDON_PLURAL, body
        )

    def _replace(self, name: str, body: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        body = copy.deepcopy(body)
        if resource_version:
            # optimistic concurrency: the server answers 409 if the object changed since we read it
            body["metadata"]["resourceVersion"] = resource_version
        return self._api.replace_namespaced_custom_object(
            SELDON_GROUP, SELDON_VERSION, self.namespace, SELDON_PLURAL, name, body
        )

    def _put(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Create or replace ``body``; returns (the object it replaced or None, the object written)."""
        name = body["metadata"]["name"]
        last: Exception | None = None
        for _ in range(_CONFLICT_RETRIES):
            live = self.get(name)
            try:
                if live is None:
                    return None, self._create(body)
                return live, self._replace(name, body, live["metadata"].get("resourceVersion"))
            except Exception as err:
                if _status(err) != 409:  # 409: created or changed by someone else meanwhile: read again
                    raise
                last = err
        raise RuntimeError(f"{self._where(name)} kept changing while it was written: {last}")

    def write(self, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Create ``manifest``, or replace the live object with it (keeping its ``resourceVersion``).

        :return: ``(the object it replaced, as it was (status included), or None when it created
            one; the object as the API server wrote it)`` — the written ``resourceVersion`` is what
            :func:`~airflow_mlops.kubernetes.seldon.write_marker` records.
        """
        previous, written = self._put(self._body(manifest))
        self.log.info(
            "%s %s (resourceVersion %s)",
            "Replaced" if previous else "Created",
            self._where(written["metadata"]["name"]),
            written["metadata"].get("resourceVersion"),
        )
        return previous, written

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``manifest``, or replace the live object with it (see :meth:`write`).

        :return: the object it replaced, as it was (status included), or None when it created one.
        """
        return self.write(manifest)[0]

    def restore(self, name: str, previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """Put ``name`` back as ``previous``; with no previous object, delete it.

        :param previous: what :meth:`apply` returned, or its
            :func:`~airflow_mlops.kubernetes.seldon.spec_for_rollback` (server fields are stripped
            either way). The object is recreated if it has been deleted meanwhile.
        :return: the restored object, or None when it was deleted.
        """
        if previous is None:
            self.delete(name)
            return None
        manifest = spec_for_rollback(previous)
        if manifest["metadata"]["name"] != name:
            raise ValueError(f"the previous spec is of {manifest['metadata']['name']!r}, not {name!r}")
        _, written = self._put(self._body(manifest))
        self.log.info("Restored %s to its previous spec", self._where(name))
        return written

    def delete(self, name: str) -> bool:
        """Delete ``name`` (``Background`` propagation: its pods and services go with it); False if gone."""
        try:
            self._api.delete_namespaced_custom_object(
                SELDON_GROUP, SELDON_VERSION, self.namespace, SELDON_PLURAL, name,
                propagation_policy="Background",
            )  # fmt: skip
        except Exception as err:
            if _status(err) == 404:
                return False
            raise
        self.log.info("Deleted %s", self._where(name))
        return True
