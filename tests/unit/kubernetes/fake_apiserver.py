"""A **fake** Kubernetes API server for tests: real HTTP on 127.0.0.1, a tiny in-memory store.

It is not Kubernetes: it implements only the endpoints the training-job and Seldon hooks and
triggers use (create/get/delete of MPIJobs and Jobs, ConfigMaps and Services, merge-patch of
those two, listing pods by label, and create/get/replace/delete of SeldonDeployments), runs no
controller, and scripts status instead:

* a created job reads as running for ``running_polls`` GETs, then as ``outcome`` (``Succeeded``
  or ``Failed``) — unless the scenario has a ``job_runner``: then a created ``batch/v1`` Job's pod
  is "run" by that function (in a thread, e.g. its container's command as a local process), the
  Job reads as running until it returns, then ``Complete`` or ``Failed`` by its exit code, and the
  pod list shows the pod with its termination message (as ``FallbackToLogsOnError`` would);
* a SeldonDeployment reads as ``Creating`` for ``seldon_creating_polls`` GETs after each create
  or replace, then as ``seldon_outcome`` (``Available``/``Failed``, or a function of the stored
  object returning one, so a test can fail one model version and not another). Like the API
  server, a replace (PUT) whose ``metadata.resourceVersion`` is not the stored one is refused
  with 409 Conflict; every write bumps ``resourceVersion``, a changed ``spec`` bumps
  ``metadata.generation``, and the scripted status carries ``observedGeneration``.

Every request is recorded (method, path, query, content type, JSON body) for the tests to assert on.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# (api prefix, plural) → kind, for the resources this fake knows
_RESOURCES = {
    ("/apis/kubeflow.org/v2beta1", "mpijobs"): "MPIJob",
    ("/apis/batch/v1", "jobs"): "Job",
    ("/api/v1", "configmaps"): "ConfigMap",
    ("/api/v1", "services"): "Service",
    ("/api/v1", "pods"): "Pod",
    ("/apis/machinelearning.seldon.io/v1", "seldondeployments"): "SeldonDeployment",
}
_JOB_KINDS = ("MPIJob", "Job")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any
    authorization: str


@dataclass
class Scenario:
    """How created jobs behave: running for ``running_polls`` reads, then ``outcome``."""

    running_polls: int = 1
    outcome: str = "Succeeded"
    reason: str = ""
    message: str = ""
    #: pods returned by the pod list (e.g. with a terminated container's reason)
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: SeldonDeployments: ``Creating`` for this many reads after each create/replace...
    seldon_creating_polls: int = 1
    #: ...then this state, or ``f(stored object) -> state``
    seldon_outcome: str | Callable[[dict[str, Any]], str] = "Available"
    #: ``status.description`` of a ``Failed`` SeldonDeployment
    seldon_description: str = "Deployment does not have minimum availability."
    #: runs a created Job's pod: ``f(job, config_maps) -> (exit code, termination message)``, where
    #: ``config_maps`` maps the namespace's ConfigMap names to their ``data``
    job_runner: Callable[[dict[str, Any], dict[str, dict[str, str]]], tuple[int, str]] | None = None


@dataclass
class _PodRun:
    """A Job's pod run by ``Scenario.job_runner``: running until ``done`` is set."""

    name: str
    container: str
    done: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    message: str = ""

    def pod(self) -> dict[str, Any]:
        state = (
            {"running": {}}
            if not self.done.is_set()
            else {"terminated": {"exitCode": self.exit_code, "reason": "Completed" if self.exit_code == 0
                                 else "Error", "message": self.message}}
        )  # fmt: skip
        phase = "Running" if not self.done.is_set() else ("Succeeded" if self.exit_code == 0 else "Failed")
        return {
            "metadata": {"name": f"{self.name}-pod"},
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": self.container,
                        "ready": False,
                        "restartCount": 0,
                        "image": "",
                        "imageID": "",
                        "state": state,
                    }
                ],
            },
        }


class FakeKubeApiServer:
    """Start with ``with FakeKubeApiServer() as fake:``; ``fake.url`` is the API server address."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        self.requests: list[Request] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name)
        self.reads: dict[tuple[str, str, str], int] = {}
        self.pod_runs: dict[tuple[str, str, str], _PodRun] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKubeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def kubeconfig(self, namespace: str = "training") -> dict[str, Any]:
        """A kube config (as the ``kube_config`` extra of a ``kubernetes`` connection) pointing here."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }

    # --- helpers for tests ---------------------------------------------------------------

    def calls(self, method: str | None = None, kind_plural: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (kind_plural is None or f"/{kind_plural}" in r.path)
        ]

    def put(self, obj: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        """Pre-create an object (e.g. the job of an earlier try) with a fixed status."""
        obj = json.loads(json.dumps(obj))
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        if status is not None:
            obj["status"] = status
            obj["metadata"].setdefault("annotations", {})["fake/fixed-status"] = "true"
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    # --- status scripting --------------------------------------------------------------

    def _start_pod_run(self, key: tuple[str, str, str], job: dict[str, Any]) -> None:
        container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        run = self.pod_runs[key] = _PodRun(key[2], container)
        config_maps = {
            name: o.get("data", {})
            for (k, ns, name), o in self.objects.items()
            if k == "ConfigMap" and ns == key[1]
        }

        def target() -> None:
            try:
                run.exit_code, run.message = self.scenario.job_runner(job, config_maps)
            except Exception as err:  # a broken runner reads as a failed pod, not a hung job
                run.exit_code, run.message = 1, f"job_runner raised {err!r}"
            run.done.set()

        threading.Thread(target=target, daemon=True).start()

    def _pod_run_status(self, run: _PodRun) -> dict[str, Any]:
        if not run.done.is_set():
            return {
                "conditions": [{"type": "Running", "status": "True", "reason": "JobRunning"}],
                "active": 1,
            }
        if run.exit_code == 0:
            return {
                "conditions": [{"type": "Complete", "status": "True", "reason": "Completed"}],
                "succeeded": 1,
            }
        reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        return {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]}

    def _status(self, kind: str, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        if obj["metadata"].get("annotations", {}).get("fake/fixed-status"):
            return obj.get("status", {})
        if key in self.pod_runs:
            return self._pod_run_status(self.pod_runs[key])
        self.reads[key] = n = self.reads.get(key, 0) + 1
        s = self.scenario
        if n <= s.running_polls:
            cond = {"type": "Running", "status": "True", "reason": "JobRunning"}
            return {"conditions": [cond], "active": 1} if kind == "Job" else {"conditions": [cond]}
        if s.outcome == "Succeeded":
            ctype = "Complete" if kind == "Job" else "Succeeded"
            cond = {
                "type": ctype,
                "status": "True",
                "reason": s.reason or "JobSucceeded",
                "message": s.message,
            }
        else:
            cond = {
                "type": "Failed",
                "status": "True",
                "reason": s.reason or "JobFailed",
                "message": s.message,
            }
        return {"conditions": [cond]}

    def _seldon_status(self, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        self.reads[key] = n = self.reads.get(key, 0) + 1
        s = self.scenario
        generation = obj["metadata"].get("generation", 1)
        if n <= s.seldon_creating_polls:
            return {"state": "Creating", "description": "", "observedGeneration": generation}
        state = s.seldon_outcome(obj) if callable(s.seldon_outcome) else s.seldon_outcome
        status: dict[str, Any] = {"state": state, "observedGeneration": generation}
        if state == "Failed":
            status["description"] = s.seldon_description
        elif state == "Available":
            name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
            status["address"] = {
                "url": f"http://{name}-default.{namespace}.svc.cluster.local:8000/api/v1.0/predictions"
            }
        return status

    # --- HTTP ----------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status_error(self, code: int, reason: str, message: str) -> None:
                self._reply(
                    code,
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                     "message": message, "code": code},
                )  # fmt: skip

            def _route(self):
                url = urlparse(self.path)
                parts = url.path.rstrip("/").split("/")
                # <prefix>/namespaces/<ns>/<plural>[/<name>[/status]]
                if "namespaces" not in parts:
                    return None
                i = parts.index("namespaces")
                prefix, rest = "/".join(parts[:i]), parts[i + 1 :]
                if len(rest) < 2 or (prefix, rest[1]) not in _RESOURCES:
                    return None
                name = rest[2] if len(rest) > 2 else None
                return _RESOURCES[(prefix, rest[1])], rest[0], name, parse_qs(url.query)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                route = self._route()
                with fake._lock:
                    fake.requests.append(
                        Request(
                            method, urlparse(self.path).path, parse_qs(urlparse(self.path).query),
                            self.headers.get("Content-Type", ""), body, self.headers.get("Authorization", ""),
                        )
                    )  # fmt: skip
                    if route is None:
                        return self._status_error(404, "NotFound", f"the fake has no endpoint {self.path}")
                    kind, namespace, name, query = route
                    return self._dispatch(method, kind, namespace, name, query, body)

            def _dispatch(self, method, kind, namespace, name, query, body) -> None:
                key = (kind, namespace, name)
                if kind == "Pod" and method == "GET" and name is None:
                    runs = [r.pod() for (_, ns, _), r in fake.pod_runs.items() if ns == namespace]
                    return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                             "items": [*fake.scenario.pods, *runs]})  # fmt: skip
                if method == "POST" and name is None:
                    key = (kind, namespace, body["metadata"]["name"])
                    if key in fake.objects:
                        return self._status_error(409, "AlreadyExists", f"{kind} {key[2]} already exists")
                    obj = json.loads(json.dumps(body))
                    obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion="1")
                    if kind == "SeldonDeployment":
                        obj["metadata"]["generation"] = 1
                        obj.pop("status", None)
                        fake.reads.pop(key, None)
                    fake.objects[key] = obj
                    if kind == "Job" and fake.scenario.job_runner is not None:
                        fake._start_pod_run(key, obj)
                    return self._reply(201, obj)
                if name is None and method == "GET":  # a list: the objects of that kind and namespace
                    items = [o for (k, ns, _), o in fake.objects.items() if k == kind and ns == namespace]
                    return self._reply(200, {"kind": f"{kind}List", "metadata": {}, "items": items})
                if name is None:
                    return self._status_error(405, "MethodNotAllowed", f"{method} on a collection")
                obj = fake.objects.get(key)
                if obj is None:
                    return self._status_error(404, "NotFound", f'{kind} "{name}" not found')
                if method == "GET":
                    out = dict(obj)
                    if kind in _JOB_KINDS:
                        out["status"] = fake._status(kind, key, obj)
                    elif kind == "SeldonDeployment" and not obj["metadata"].get("annotations", {}).get(
                        "fake/fixed-status"
                    ):
                        out["status"] = fake._seldon_status(key, obj)
                    return self._reply(200, out)
                if method == "DELETE":
                    del fake.objects[key]
                    fake.pod_runs.pop(key, None)
                    return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                if method == "PUT":
                    stored_rv = obj["metadata"].get("resourceVersion")
                    sent_rv = body["metadata"].get("resourceVersion")
                    if sent_rv is not None and sent_rv != stored_rv:
                        return self._status_error(
                            409, "Conflict",
                            f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                            "modified; please apply your changes to the latest version and try again",
                        )  # fmt: skip
                    meta = {**body["metadata"], "uid": obj["metadata"]["uid"]}
                    if stored_rv is not None:
                        meta["resourceVersion"] = str(int(stored_rv) + 1)
                    new = {**body, "metadata": meta}
                    if kind == "SeldonDeployment":
                        generation = obj["metadata"].get("generation", 1)
                        meta["generation"] = generation + (body.get("spec") != obj.get("spec"))
                        new.pop("status", None)  # status is a subresource: a PUT cannot set it
                        if "status" in obj:
                            new["status"] = obj["status"]
                        fake.reads.pop(key, None)
                    fake.objects[key] = new
                    return self._reply(200, new)
                if method == "PATCH":
                    if self.headers.get("Content-Type") != "application/merge-patch+json" or not isinstance(
                        body, dict
                    ):
                        # what a real API server answers to a dict sent as a JSON patch
                        return self._status_error(400, "BadRequest", "expected a merge patch (a JSON object)")
                    obj["metadata"].update(body.get("metadata", {}))
                    return self._reply(200, obj)
                return self._status_error(405, "MethodNotAllowed", method)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler
