"""A **fake** Kubernetes API server for tests: real HTTP on 127.0.0.1, an in-memory store, and
small stand-ins for the controllers that write the status our code reads.

It is not Kubernetes. It implements only the endpoints the job and Seldon hooks and triggers use
(create/get/replace/delete of MPIJobs, Jobs, ConfigMaps, Services, Deployments and
SeldonDeployments, merge-patch of ConfigMaps and Services, lists with label selectors), has no
admission or defaulting, and its controllers run only when an object is read (each read is one
"tick" of time). What they write follows the real controllers' source, cited where it is used:

* **Jobs** (``batch/v1``, the Job controller of Kubernetes ≥ 1.31, kubernetes/kubernetes
  ``pkg/controller/job/job_controller.go`` at 6ae037f1: ``syncJob``, ``newSuccessCondition``,
  ``newFailureCondition``, ``delayTerminalCondition``, ``trackJobStatusAndRemoveFinalizers``;
  the reason/message of success as in later releases, ``CompletionsReached``): a running Job has **no**
  condition, only ``startTime``, ``active`` and ``ready``; its end is first the interim
  ``SuccessCriteriaMet`` / ``FailureTarget`` condition and, one read later, the terminal
  ``Complete`` / ``Failed`` one (``BackoffLimitExceeded``: "Job has reached the specified backoff
  limit"), with ``succeeded``/``failed`` counts and, for an indexed Job, ``completedIndexes``.
* **MPIJobs** (kubeflow/mpi-operator v0.8.0, ``pkg/controller/mpi_job_controller.go``
  ``updateMPIJobStatus``/``updateMPIJobFailedStatus`` and ``mpi_job_controller_status.go``):
  ``Created`` (``MPIJobCreated``) from the start, ``Running`` (``MPIJobRunning``) while the
  launcher and all workers run, then ``Succeeded`` (``MPIJobSucceeded``) or ``Failed`` (the
  launcher Job's reason, ``BackoffLimitExceeded/<pod reason>``), which set ``Running`` to
  ``False`` (``filterOutCondition``); ``replicaStatuses`` per replica type.
* **SeldonDeployments** (seldon-core v1.17.1, ``operator/controllers/seldondeployment_controller.go``:
  ``Reconcile``, ``createComponents``, ``createServices``, ``createDeployments``,
  ``completeServiceCreation``, ``updateStatus``, ``updateStatusForError``; names from
  ``operator/apis/machinelearning.seldon.io/v1/seldondeployment_types.go``): see
  :meth:`FakeKubeApiServer._seldon_reconcile`. In short: the operator reconciles a spec only
  ``seldon_reconcile_lag`` reads after it was written (until then the status is the previous
  spec's), writes the status only when it changed and **never** writes ``observedGeneration``;
  it creates a Deployment ``<sdep>-<predictor>-0-<containers>`` and Services ``<sdep>-<predictor>``
  (executor, ports 8000/5001) and ``<sdep>-<predictor>-<container>`` (9000/9500) per predictor,
  all labelled ``seldon-deployment-id=<sdep>``; ``status.address.url`` names the first predictor's
  Service. ``Available`` needs every Deployment unchanged by the reconcile with ready replicas
  and none unavailable; ``Failed`` comes only from a reconcile error or a Deployment that is
  neither progressing nor available — a crash-looping new version behind the ready pods of the old
  one stays ``Creating``.
* **Deployments** (``apps/v1``, the Deployment controller, kubernetes/kubernetes
  ``pkg/controller/deployment``: ``calculateStatus`` in ``sync.go``, ``syncRolloutStatus`` in
  ``progress.go``, ``DeploymentProgressing``/``DeploymentTimedOut`` in ``util/deployment_util.go``):
  a rolling update keeps the old ReplicaSet's ready pods until the new one's are ready (Seldon sets
  ``maxUnavailable: 10%``); ``Available`` while enough pods are available
  (``MinimumReplicasAvailable``), ``Progressing`` until the rollout completes
  (``NewReplicaSetAvailable``) or its progress deadline passes (``ProgressDeadlineExceeded``).

The API server part follows the real one: every write gets a new ``resourceVersion`` from one
counter (etcd's revision), a replace (PUT) naming a ``resourceVersion`` that is not the stored
one is refused with 409 Conflict, ``metadata.generation`` counts ``spec`` changes, ``status`` is a
subresource (a PUT of the object keeps the stored status), lists honour ``labelSelector``
(``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``), and deleting a SeldonDeployment
deletes what it owns (garbage collection). Every request is recorded (method, path, query,
content type, JSON body) for the tests to assert on.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    ("/apis/apps/v1", "deployments"): "Deployment",
    ("/apis/machinelearning.seldon.io/v1", "seldondeployments"): "SeldonDeployment",
}
_JOB_KINDS = ("MPIJob", "Job")
#: kinds whose status is a subresource: a PUT of the object does not change it
_STATUS_SUBRESOURCE = ("MPIJob", "Job", "Deployment", "SeldonDeployment")

# --- seldon-core 1.17.1 constants (seldondeployment_types.go, seldondeployment_controller.go) ---
SELDON_ID_LABEL = "seldon-deployment-id"  # Label_seldon_id
SELDON_APP_LABEL = "seldon-app"  # Label_seldon_app
EXECUTOR_HTTP_PORT, EXECUTOR_GRPC_PORT = 8000, 5001  # DEFAULT_ENGINE_CONTAINER_PORT / _GRPC_PORT
UNIT_HTTP_PORT, UNIT_GRPC_PORT = 9000, 9500  # constants.FirstHttpPortNumber / FirstGrpcPortNumber
#: Reconcile's description of a Deployment that is neither progressing nor available
NOT_PROGRESSING = "Deployment is no longer progressing and not available."
#: an error createComponents returns (``Reconcile`` → ``updateStatusForError``)
RECONCILE_ERROR = "engine not separate and no pu with localhost service - not clear where to inject engine"


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
    """How the fake's controllers behave.

    Jobs: running for ``running_polls`` reads, then ``outcome`` (``Succeeded``/``Failed``, with
    ``reason``/``message``) — or, with ``job_runner``, as long as that function runs the Job's pod.

    SeldonDeployments: the operator reconciles a written spec ``seldon_reconcile_lag`` reads after
    the write; the pods of a new or changed predictor are ``seldon_pods`` (``"ready"``, or
    ``"crashloop"``: never ready; or ``f(predictor, sdep) -> one of them``) and become ready
    ``seldon_creating_polls`` reads after the write (a first deploy reads ``Available`` after
    ``max(seldon_creating_polls, 2) + 1`` reads with the default lag); a Deployment whose rollout
    has not completed ``seldon_progress_deadline_polls`` reads after it started reports
    ``ProgressDeadlineExceeded`` (``progressDeadlineSeconds``, 600 s by default on a cluster).
    ``seldon_outcome`` ``"Failed"`` (or ``f(sdep) -> "Failed"``) makes every reconcile of that
    spec fail with ``seldon_description`` as its error, as ``updateStatusForError`` reports it.
    """

    running_polls: int = 1
    outcome: str = "Succeeded"
    reason: str = ""
    message: str = ""
    #: pods the pod list returns (filtered by the request's label selector, like any list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: runs a created Job's pod: ``f(job, config_maps) -> (exit code, termination message)``, where
    #: ``config_maps`` maps the namespace's ConfigMap names to their ``data``
    job_runner: Callable[[dict[str, Any], dict[str, dict[str, str]]], tuple[int, str]] | None = None
    seldon_reconcile_lag: int = 1
    seldon_creating_polls: int = 1
    seldon_pods: str | Callable[[dict[str, Any], dict[str, Any]], str] = "ready"
    seldon_progress_deadline_polls: int = 8
    seldon_outcome: str | Callable[[dict[str, Any]], str] = "Available"
    seldon_description: str = RECONCILE_ERROR


@dataclass
class _PodRun:
    """A Job's pod run by ``Scenario.job_runner``: running until ``done`` is set."""

    name: str
    container: str
    labels: dict[str, str]
    done: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    message: str = ""

    def pod(self) -> dict[str, Any]:
        if not self.done.is_set():
            state: dict[str, Any] = {"running": {}}
        else:
            reason = "Completed" if self.exit_code == 0 else "Error"
            state = {"terminated": {"exitCode": self.exit_code, "reason": reason, "message": self.message}}
        phase = "Running" if not self.done.is_set() else ("Succeeded" if self.exit_code == 0 else "Failed")
        return {
            "metadata": {"name": self.name, "labels": dict(self.labels)},
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": self.container,
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "image": "",
                        "imageID": "",
                        "state": state,
                    }
                ],
            },
        }


@dataclass
class _SeldonClock:
    """One SeldonDeployment's time: reads so far, and when its latest spec was written."""

    tick: int = 0
    written_at: int = 0
    reconcile_from: int = 0


@dataclass
class _Rollout:
    """A Deployment's ReplicaSets, as far as its status needs them."""

    owner: tuple[str, str, str]
    template: dict[str, Any]
    desired: int
    started: int
    ready_at: int | None  # owner tick from which the new pods are ready; None: never (crash loop)
    old_template: dict[str, Any] | None = None
    old_available: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _dns_name(name: str, prefix: str = "seldon") -> str:
    """seldon-core's rule for a derived name over 63 characters (``GetPredictorKey``...)."""
    return name if len(name) <= 63 else f"{prefix}-{_md5(name)}"


# --- label selectors (apimachinery labels.Parse, the subset kubectl and clients send) ---------


def parse_selector(text: str) -> list[tuple[str, str, frozenset[str]]]:
    """``[(key, op, values)]`` from a label selector; raises ValueError on what it cannot read."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    requirements = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
            requirements.append((m[1], m[2], values))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", part):
            requirements.append((m[1], "!=" if m[2] == "!=" else "=", frozenset([m[3]])))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            requirements.append((m[2], "!" if m[1] else "exists", frozenset()))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return requirements


def matches(labels: dict[str, str] | None, requirements: list[tuple[str, str, frozenset[str]]]) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        has = key in labels
        if op in ("=", "in") and not (has and labels[key] in values):
            return False
        if op in ("!=", "notin") and has and labels[key] in values:
            return False
        if (op == "exists" and not has) or (op == "!" and has):
            return False
    return True


class FakeKubeApiServer:
    """Start with ``with FakeKubeApiServer() as fake:``; ``fake.url`` is the API server address."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        self.requests: list[Request] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name)
        self.reads: dict[tuple[str, str, str], int] = {}
        self.terminal_reads: dict[tuple[str, str, str], int] = {}
        self.pod_runs: dict[tuple[str, str, str], _PodRun] = {}
        self.seldon_clocks: dict[tuple[str, str, str], _SeldonClock] = {}
        self.rollouts: dict[tuple[str, str], _Rollout] = {}  # (namespace, Deployment name)
        #: every status the simulated Seldon operator wrote: (key, resourceVersion, status)
        self.status_log: list[tuple[tuple[str, str, str], str, dict[str, Any]]] = []
        self._revision = itertools.count(1)
        self._lock = threading.RLock()
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
        """Pre-create an object (e.g. the job of an earlier try), with a fixed status if given.

        A SeldonDeployment without a fixed status is reconciled like one just created.
        """
        with self._lock:
            obj = json.loads(json.dumps(obj))
            meta = obj["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            self._bump(obj)
            key = (obj["kind"], meta["namespace"], meta["name"])
            if status is not None:
                obj["status"] = status
                meta.setdefault("annotations", {})["fake/fixed-status"] = "true"
            elif obj["kind"] == "SeldonDeployment":
                self._seldon_written(key)
            self.objects[key] = obj

    def states_written(self, name: str, after: str | None = None) -> list[str]:
        """Each ``state`` the Seldon operator wrote for ``name`` (after resourceVersion ``after``)."""
        return [
            status.get("state", "")
            for key, rv, status in self.status_log
            if key[2] == name and (after is None or int(rv) > int(after))
        ]

    def of_kind(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """The stored objects of ``kind`` in ``namespace`` matching a label selector."""
        requirements = parse_selector(selector)
        return [
            o
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and ns == namespace and matches(o["metadata"].get("labels"), requirements)
        ]

    # --- API server bookkeeping ----------------------------------------------------------

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._revision))

    @staticmethod
    def _fixed(obj: dict[str, Any]) -> bool:
        return bool((obj["metadata"].get("annotations") or {}).get("fake/fixed-status"))

    def _delete(self, key: tuple[str, str, str]) -> None:
        obj = self.objects.pop(key)
        self.pod_runs.pop(key, None)
        self.reads.pop(key, None)
        self.terminal_reads.pop(key, None)
        if key[0] == "Deployment":
            self.rollouts.pop((key[1], key[2]), None)
        if key[0] == "SeldonDeployment":  # the garbage collector deletes what it owns
            self.seldon_clocks.pop(key, None)
            uid = obj["metadata"].get("uid")
            for owned_key, owned in list(self.objects.items()):
                refs = owned["metadata"].get("ownerReferences") or []
                if owned_key[1] == key[1] and any(r.get("uid") == uid for r in refs):
                    self._delete(owned_key)

    # --- jobs (batch/v1 Job controller, mpi-operator) ------------------------------------

    def _start_pod_run(self, key: tuple[str, str, str], job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]["name"]
        uid = job["metadata"]["uid"]
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            # what the Job controller adds to its pods' labels (batch/v1, Kubernetes >= 1.27)
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": key[2],
            "controller-uid": uid,
            "job-name": key[2],
        }
        run = self.pod_runs[key] = _PodRun(f"{key[2]}-{_md5(uid)[:5]}", container, labels)
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

    def _status(self, kind: str, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        """A job's status at this read (the job controller's or the mpi-operator's)."""
        if self._fixed(obj):
            return obj.get("status", {})
        s = self.scenario
        if key in self.pod_runs:
            run = self.pod_runs[key]
            if not run.done.is_set():
                return self._running_job_status(kind, obj)
            return self._finished_job_status(kind, key, obj, run.exit_code == 0, "", "")
        self.reads[key] = n = self.reads.get(key, 0) + 1
        if n <= s.running_polls:
            return self._running_job_status(kind, obj)
        return self._finished_job_status(kind, key, obj, s.outcome == "Succeeded", s.reason, s.message)

    @staticmethod
    def _job_size(kind: str, obj: dict[str, Any]) -> int:
        if kind == "MPIJob":
            return int(((obj["spec"].get("mpiReplicaSpecs") or {}).get("Worker") or {}).get("replicas") or 1)
        return int(obj["spec"].get("parallelism") or obj["spec"].get("completions") or 1)

    def _running_job_status(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        ns, name, size = obj["metadata"]["namespace"], obj["metadata"]["name"], self._job_size(kind, obj)
        if kind == "MPIJob":  # updateMPIJobStatus: Created at creation, Running once all pods run
            return {
                "conditions": [
                    {"type": "Created", "status": "True", "reason": "MPIJobCreated",
                     "message": f"MPIJob {ns}/{name} is created."},
                    {"type": "Running", "status": "True", "reason": "MPIJobRunning",
                     "message": f"MPIJob {ns}/{name} is running."},
                ],
                "replicaStatuses": {"Launcher": {"active": 1}, "Worker": {"active": size}},
                "startTime": _now(),
            }  # fmt: skip
        # syncJob: no condition while the pods run; active/ready count them
        return {"startTime": _now(), "active": size, "ready": size, "terminating": 0,
                "uncountedTerminatedPods": {}}  # fmt: skip

    def _finished_job_status(
        self,
        kind: str,
        key: tuple[str, str, str],
        obj: dict[str, Any],
        succeeded: bool,
        reason: str,
        message: str,
    ) -> dict[str, Any]:
        ns, name, size = key[1], key[2], self._job_size(kind, obj)
        if kind == "MPIJob":
            if succeeded:  # updateMPIJobStatus
                final = {"type": "Succeeded", "status": "True", "reason": "MPIJobSucceeded",
                         "message": f"MPIJob {ns}/{name} successfully completed."}  # fmt: skip
                replicas = {"Launcher": {"succeeded": 1}, "Worker": {}}
            else:  # updateMPIJobFailedStatus: the launcher Job's reason + the last failed pod's
                final = {"type": "Failed", "status": "True", "reason": reason or "BackoffLimitExceeded/Error",
                         "message": message or "Job has reached the specified backoff limit"}  # fmt: skip
                replicas = {"Launcher": {"failed": 1}, "Worker": {}}
            return {
                "conditions": [
                    {"type": "Created", "status": "True", "reason": "MPIJobCreated",
                     "message": f"MPIJob {ns}/{name} is created."},
                    # filterOutCondition: Succeeded/Failed set Running to False
                    {"type": "Running", "status": "False", "reason": "MPIJobRunning",
                     "message": f"MPIJob {ns}/{name} is running."},
                    final,
                ],
                "replicaStatuses": replicas,
                "startTime": _now(),
                "completionTime": _now(),
            }  # fmt: skip
        # the Job controller: the interim condition first, the terminal one once the pods are gone
        self.terminal_reads[key] = n = self.terminal_reads.get(key, 0) + 1
        if succeeded:
            reason, message = "CompletionsReached", "Reached expected number of succeeded pods"
            types = ("SuccessCriteriaMet", "Complete")
            counts: dict[str, Any] = {"succeeded": size, "failed": 0}
            if obj["spec"].get("completionMode") == "Indexed":
                counts["completedIndexes"] = "0" if size == 1 else f"0-{size - 1}"
        else:
            reason = reason or "BackoffLimitExceeded"
            message = message or "Job has reached the specified backoff limit"
            types = ("FailureTarget", "Failed")
            counts = {"succeeded": 0, "failed": 1}
        conditions = [{"type": t, "status": "True", "reason": reason, "message": message} for t in types]
        status = {"startTime": _now(), "active": 0, "ready": 0, "terminating": 0,
                  "uncountedTerminatedPods": {}, **counts,
                  "conditions": conditions[: 1 if n == 1 else 2]}  # fmt: skip
        if n > 1 and succeeded:
            status["completionTime"] = _now()
        return status

    # --- SeldonDeployments: seldon-core 1.17.1's operator ----------------------------------

    def _seldon_written(self, key: tuple[str, str, str]) -> None:
        """The object's spec was written: the operator reconciles it ``seldon_reconcile_lag`` reads on."""
        clock = self.seldon_clocks.setdefault(key, _SeldonClock())
        clock.written_at = clock.tick
        clock.reconcile_from = clock.tick + 1 + max(self.scenario.seldon_reconcile_lag, 0)

    def _seldon_read(self, key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        """One tick of time for ``obj``: its Deployments roll, and the operator reconciles if it is due."""
        clock = self.seldon_clocks.setdefault(key, _SeldonClock())
        clock.tick += 1
        for (ns, name), rollout in self.rollouts.items():
            if rollout.owner == key:
                dep = self.objects.get(("Deployment", ns, name))
                if dep is not None:
                    dep["status"] = self._deployment_status(dep, rollout, clock.tick)
        if clock.tick >= clock.reconcile_from:
            self._seldon_reconcile(key, obj, clock)

    def _seldon_components(self, sdep: dict[str, Any]) -> dict[str, Any]:
        """What ``createComponents`` builds for ``sdep``: Deployments, Services, service details, address."""
        name, ns = sdep["metadata"]["name"], sdep["metadata"]["namespace"]
        seldon_id = _dns_name(name)  # GetSeldonDeploymentName
        deployments, services, details = [], [], {}
        owner = {"apiVersion": sdep["apiVersion"], "kind": sdep["kind"], "name": name,
                 "uid": sdep["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        predictors = sdep["spec"].get("predictors") or []
        for p in predictors:
            psvc = _dns_name(f"{name}-{p['name']}")  # GetPredictorKey
            specs = p.get("componentSpecs") or [{}]
            cspec = specs[0] or {}
            containers = [c["name"] for c in (cspec.get("spec") or {}).get("containers") or []]
            containers = containers or [p["graph"]["name"]]  # the defaulting adds the server's container
            dep_name = f"{name}-{p['name']}-0-{'-'.join(containers)}"  # GetDeploymentName
            dep_name = dep_name if len(dep_name) <= 63 else f"seldon-{_md5(dep_name)}"
            unit = p["graph"]["name"]
            csvc = _dns_name(f"{name}-{p['name']}-{unit}")  # GetContainerServiceName
            pod_labels = {
                SELDON_ID_LABEL: seldon_id, "app": dep_name, "fluentd": "true", SELDON_APP_LABEL: psvc,
                f"seldon-app-svc-{unit}": csvc, "seldon.io/model": "true",
                "app.kubernetes.io/managed-by": "seldon-core",
                **(p.get("labels") or {}), **((cspec.get("metadata") or {}).get("labels") or {}),
            }  # fmt: skip
            if p.get("shadow"):
                pod_labels["seldon.io/shadow"] = "true"
            # the executor gets the predictor with traffic and replicas zeroed "to ensure this doesn't
            # cause a diff in the resulting deployment" (createEngineContainer)
            engine = {k: v for k, v in p.items() if k != "traffic"}
            engine["replicas"] = 0
            engine_b64 = base64.b64encode(json.dumps(engine, sort_keys=True).encode()).decode()
            pod_spec = copy.deepcopy(cspec.get("spec") or {}) or {"containers": [{"name": unit}]}
            pod_spec["containers"] = [
                *pod_spec.get("containers", []),
                {
                    "name": "seldon-container-engine",
                    "env": [{"name": "ENGINE_PREDICTOR", "value": engine_b64}],
                },
            ]
            replicas = cspec.get("replicas") or p.get("replicas") or sdep["spec"].get("replicas") or 1
            deployments.append({
                "name": dep_name, "replicas": int(replicas), "predictor": p,
                "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
                "labels": {k: v for k, v in pod_labels.items()},
                "owner": owner,
            })  # fmt: skip
            svc_labels = {f"seldon-app-svc-{unit}": csvc, SELDON_ID_LABEL: seldon_id,
                          SELDON_APP_LABEL: psvc, "seldon.io/model": "true",
                          "app.kubernetes.io/managed-by": "seldon-core"}  # fmt: skip
            if p.get("shadow"):
                svc_labels["seldon.io/shadow"] = "true"
            services.append(self._service(csvc, ns, svc_labels, {f"seldon-app-svc-{unit}": csvc},
                                          UNIT_HTTP_PORT, UNIT_GRPC_PORT, owner))  # fmt: skip
            details[csvc] = {"svcName": csvc, "httpEndpoint": f"{csvc}.{ns}:{UNIT_HTTP_PORT}",
                             "grpcEndpoint": f"{csvc}.{ns}:{UNIT_GRPC_PORT}"}  # fmt: skip
            psvc_labels = {SELDON_APP_LABEL: psvc, SELDON_ID_LABEL: seldon_id,
                           "app.kubernetes.io/managed-by": "seldon-core"}  # fmt: skip
            services.append(self._service(psvc, ns, psvc_labels, {SELDON_APP_LABEL: psvc},
                                          EXECUTOR_HTTP_PORT, EXECUTOR_GRPC_PORT, owner))  # fmt: skip
            details[psvc] = {"svcName": psvc, "httpEndpoint": f"{psvc}.{ns}:{EXECUTOR_HTTP_PORT}",
                             "grpcEndpoint": f"{psvc}.{ns}:{EXECUTOR_GRPC_PORT}"}  # fmt: skip
        # createAddressableResource: "Currently there will only be a URL for the first predictor"
        first = _dns_name(f"{name}-{predictors[0]['name']}") if predictors else name
        address = f"http://{first}.{ns}.svc.cluster.local:{EXECUTOR_HTTP_PORT}/api/v1.0/predictions"
        return {"deployments": deployments, "services": services, "details": details, "address": address}

    @staticmethod
    def _service(name, namespace, labels, selector, http, grpc, owner) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
            "spec": {
                "selector": selector,
                "type": "ClusterIP",
                "sessionAffinity": "None",
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": http, "targetPort": http},
                    {"name": "grpc", "protocol": "TCP", "port": grpc, "targetPort": grpc},
                ],
            },
        }

    def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"].update(uid=str(uuid.uuid4()), generation=1)
        self._bump(obj)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return obj

    @staticmethod
    def _condition(
        status: dict[str, Any], ctype: str, value: bool | None, reason: str = "", message: str = ""
    ):
        """knative's SetCondition: one condition per type (no timestamps here: they would churn)."""
        cond = {"type": ctype, "status": {True: "True", False: "False", None: "Unknown"}[value]}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        conditions = [c for c in status.get("conditions") or [] if c["type"] not in (ctype, "Ready")]
        conditions.append(cond)
        ready = all(c["status"] == "True" for c in conditions)
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
        status["conditions"] = sorted(conditions, key=lambda c: c["type"])

    def _seldon_services(self, ns, comps, status, all_: bool) -> bool:
        """``createServices``: create missing Services; once they exist, the address and serviceStatus."""
        ready = True
        for svc in comps["services"]:
            key = ("Service", ns, svc["metadata"]["name"])
            found = self.objects.get(key)
            if found is None:
                ready = False
                self._create(svc)
                continue
            status["address"] = {"url": comps["address"]}
            if found["metadata"].get("labels") != svc["metadata"]["labels"] or found["spec"] != svc["spec"]:
                found["metadata"]["labels"], found["spec"] = svc["metadata"]["labels"], svc["spec"]
                self._bump(found)
                ready = False
            else:
                name = svc["metadata"]["name"]
                status.setdefault("serviceStatus", {}).setdefault(name, comps["details"][name])
        self._condition(status, "ServicesReady", all_ and ready,
                        "All services created" if all_ and ready else "Not all services created")  # fmt: skip
        return ready

    def _pods_behaviour(self, predictor: dict[str, Any], sdep: dict[str, Any]) -> str:
        pods = self.scenario.seldon_pods
        return pods(predictor, sdep) if callable(pods) else pods

    def _new_rollout(self, key, dep, sdep, clock: _SeldonClock, previous: _Rollout | None) -> _Rollout:
        s = self.scenario
        ready_at: int | None = clock.written_at + s.seldon_creating_polls + 1
        if self._pods_behaviour(dep["predictor"], sdep) == "crashloop":
            ready_at = None
        rollout = _Rollout(key, dep["template"], dep["replicas"], clock.tick, ready_at)
        if previous is not None:
            # the ReplicaSet whose pods are available now stays until the new one's are ready
            current = self._deployment_numbers(previous, clock.tick)
            if current["new_ready"] >= previous.desired:
                rollout.old_template, rollout.old_available = previous.template, current["new_ready"]
            else:
                rollout.old_template, rollout.old_available = previous.old_template, previous.old_available
            if rollout.old_template == dep["template"] and rollout.old_available:
                # back to the template of the running pods: that ReplicaSet is scaled up again, ready
                rollout.ready_at, rollout.old_template, rollout.old_available = clock.tick, None, 0
        return rollout

    @staticmethod
    def _deployment_numbers(rollout: _Rollout, tick: int) -> dict[str, int]:
        new_ready = rollout.desired if rollout.ready_at is not None and tick >= rollout.ready_at else 0
        old = 0 if new_ready >= rollout.desired else rollout.old_available
        return {"new_ready": new_ready, "old": old}

    def _deployment_status(self, dep: dict[str, Any], rollout: _Rollout, tick: int) -> dict[str, Any]:
        """The Deployment controller's status (calculateStatus, syncRolloutStatus)."""
        numbers = self._deployment_numbers(rollout, tick)
        desired = rollout.desired
        replicas = desired + numbers["old"]
        available = numbers["new_ready"] + numbers["old"]
        max_unavailable = desired * 10 // 100  # Seldon's MaxUnavailable "10%", rounded down
        rs = f"{dep['metadata']['name']}-{_md5(json.dumps(rollout.template, sort_keys=True))[:10]}"
        if numbers["new_ready"] >= desired and not numbers["old"]:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs}" has successfully progressed.',
            )
        elif tick - rollout.started >= self.scenario.seldon_progress_deadline_polls:
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{rs}" has timed out progressing.',
            )
        else:
            progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs}" is progressing.')
        if available >= desired - max_unavailable:
            avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            avail = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        status = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": desired,
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": max(replicas - available, 0),
            "conditions": [
                {"type": "Available", "status": avail[0], "reason": avail[1], "message": avail[2]},
                {"type": "Progressing", "status": progressing[0], "reason": progressing[1],
                 "message": progressing[2]},
            ],
        }  # fmt: skip
        return {k: v for k, v in status.items() if v != 0}  # omitempty

    @staticmethod
    def _deployment_condition(dep: dict[str, Any], ctype: str) -> dict[str, Any]:
        cond = next((c for c in (dep.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})
        return {k: cond[k] for k in ("status", "reason", "message") if k in cond}

    def _seldon_deployments(self, key, sdep, comps, status, clock: _SeldonClock) -> tuple[bool, bool]:
        """``createDeployments``: (all Deployments ready, still progressing)."""
        ns = key[1]
        ready, progressing, last_ok = True, True, None
        for dep in comps["deployments"]:
            dkey = ("Deployment", ns, dep["name"])
            found = self.objects.get(dkey)
            if found is None:
                ready = False
                found = self._create({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": dep["name"], "namespace": ns, "labels": dep["labels"],
                                 "ownerReferences": [dep["owner"]]},
                    "spec": {"replicas": dep["replicas"], "template": dep["template"],
                             "selector": {"matchLabels": {SELDON_ID_LABEL: dep["labels"][SELDON_ID_LABEL]}},
                             "strategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxUnavailable": "10%"}}},
                })  # fmt: skip
                rollout = self.rollouts[(ns, dep["name"])] = self._new_rollout(key, dep, sdep, clock, None)
                found["status"] = self._deployment_status(found, rollout, clock.tick)
                continue
            rollout = self.rollouts[(ns, dep["name"])]
            identical = True
            if found["spec"]["template"] != dep["template"] or found["spec"]["replicas"] != dep["replicas"]:
                template_changed = found["spec"]["template"] != dep["template"]
                found["spec"].update(template=dep["template"], replicas=dep["replicas"])
                found["metadata"]["labels"] = dep["labels"]
                found["metadata"]["generation"] += 1
                self._bump(found)
                if template_changed:  # a rollout; this reconcile reports not ready
                    rollout = self._new_rollout(key, dep, sdep, clock, rollout)
                    self.rollouts[(ns, dep["name"])] = rollout
                    identical = ready = False
                else:  # replicas only: the template is the same, "the deployments are the same"
                    rollout.desired = dep["replicas"]
                found["status"] = self._deployment_status(found, rollout, clock.tick)
            if not identical:
                continue
            st = found["status"]
            entry = {"replicas": st.get("replicas", 0), "availableReplicas": st.get("availableReplicas", 0)}
            known = (status.get("deploymentStatus") or {}).get(dep["name"])
            if known is None or (known.get("replicas", 0), known.get("availableReplicas", 0)) != (
                entry["replicas"],
                entry["availableReplicas"],
            ):
                status.setdefault("deploymentStatus", {})[dep["name"]] = {k: v for k, v in entry.items() if v}
                if dep is comps["deployments"][0]:
                    status["replicas"] = entry["replicas"]
            if st.get("readyReplicas", 0) == 0 or st.get("unavailableReplicas", 0) > 0:
                if ready:
                    available = self._deployment_condition(found, "Available")
                    self._condition(status, "DeploymentsReady", available.get("status") == "True",
                                    available.get("reason", ""), available.get("message", ""))  # fmt: skip
                    moving = self._deployment_condition(found, "Progressing")
                    if moving.get("status") == "False" and available.get("status") == "False":
                        progressing = False
                ready = False
            if ready:
                last_ok = self._deployment_condition(found, "Available")
        if ready:
            last_ok = last_ok or {}
            self._condition(
                status, "DeploymentsReady", True, last_ok.get("reason", ""), last_ok.get("message", "")
            )
        return ready, progressing

    def _seldon_cleanup(self, ns: str, seldon_id: str, comps, status) -> None:
        """``completeServiceCreation``: delete what the spec no longer has, a step at a time."""
        expected = {d["name"] for d in comps["deployments"]}
        leftover = [k for k in (status.get("deploymentStatus") or {}) if k not in expected]
        for name in leftover:
            if ("Deployment", ns, name) not in self.objects:
                del status["deploymentStatus"][name]  # "Failed to find old deployment - removing from status"
            else:
                self._delete(("Deployment", ns, name))  # removed from the status at the next reconcile
        if leftover:
            return
        for name in [k for k in status.get("serviceStatus") or {} if k not in comps["details"]]:
            del status["serviceStatus"][name]
            if ("Service", ns, name) in self.objects:
                self._delete(("Service", ns, name))
        for svc in self.of_kind("Service", ns, f"{SELDON_ID_LABEL}={seldon_id}"):  # orphans
            if svc["metadata"]["name"] not in comps["details"]:
                self._delete(("Service", ns, svc["metadata"]["name"]))

    def _seldon_reconcile(self, key: tuple[str, str, str], sdep: dict[str, Any], clock: _SeldonClock) -> None:
        """One ``Reconcile`` of seldon-core 1.17.1's SeldonDeployment controller.

        createComponents, createServices(all=false), createDeployments, and when the Deployments
        are ready completeServiceCreation; then the state (Available / Failed "Deployment is no
        longer progressing and not available." / Creating) and ``updateStatus``, which writes
        only a changed status (``equality.Semantic.DeepEqual``) — never ``observedGeneration``.
        A failing reconcile writes ``Failed`` with the error as description (``updateStatusForError``).
        """
        s = self.scenario
        old = copy.deepcopy(sdep.get("status") or {})
        status = copy.deepcopy(old)
        outcome = s.seldon_outcome(sdep) if callable(s.seldon_outcome) else s.seldon_outcome
        if outcome == "Failed":
            status.update(state="Failed", description=s.seldon_description)
        else:
            ns, name = key[1], key[2]
            comps = self._seldon_components(sdep)
            services_ready = self._seldon_services(ns, comps, status, all_=False)
            deployments_ready, progressing = self._seldon_deployments(key, sdep, comps, status, clock)
            if deployments_ready:
                self._seldon_services(ns, comps, status, all_=True)
                self._seldon_cleanup(ns, _dns_name(name), comps, status)
            if deployments_ready and services_ready:
                status["state"], status["description"] = "Available", ""
            elif not progressing and not deployments_ready:
                status["state"], status["description"] = "Failed", NOT_PROGRESSING
            else:
                status["state"], status["description"] = "Creating", ""
        if not status.get("description"):
            status.pop("description", None)  # omitempty
        if status != old:
            sdep["status"] = status
            self._bump(sdep)
            self.status_log.append((key, sdep["metadata"]["resourceVersion"], copy.deepcopy(status)))

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

            def _list(self, kind: str, namespace: str, query) -> None:
                try:
                    requirements = parse_selector((query.get("labelSelector") or [""])[0])
                except ValueError as err:
                    return self._status_error(400, "BadRequest", str(err))
                if kind == "Pod":
                    runs = [r.pod() for (_, ns, _), r in fake.pod_runs.items() if ns == namespace]
                    pods = [*fake.scenario.pods, *runs]
                    items = [p for p in pods if matches(p["metadata"].get("labels"), requirements)]
                else:
                    items = [
                        o
                        for (k, ns, _), o in sorted(fake.objects.items())
                        if k == kind
                        and ns == namespace
                        and matches(o["metadata"].get("labels"), requirements)
                    ]
                meta = {"resourceVersion": str(next(fake._revision))}
                return self._reply(200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta,
                                         "items": items})  # fmt: skip

            def _dispatch(self, method, kind, namespace, name, query, body) -> None:
                key = (kind, namespace, name)
                if name is None and method == "GET":
                    return self._list(kind, namespace, query)
                if method == "POST" and name is None:
                    key = (kind, namespace, body["metadata"]["name"])
                    if key in fake.objects:
                        return self._status_error(409, "AlreadyExists", f"{kind} {key[2]} already exists")
                    obj = json.loads(json.dumps(body))
                    obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1)
                    obj.pop("status", None)
                    fake._bump(obj)
                    fake.objects[key] = obj
                    fake.reads.pop(key, None)
                    fake.terminal_reads.pop(key, None)
                    if kind == "SeldonDeployment":
                        fake.seldon_clocks.pop(key, None)
                        fake._seldon_written(key)
                    if kind == "Job" and fake.scenario.job_runner is not None:
                        fake._start_pod_run(key, obj)
                    return self._reply(201, obj)
                if name is None:
                    return self._status_error(405, "MethodNotAllowed", f"{method} on a collection")
                obj = fake.objects.get(key)
                if obj is None:
                    return self._status_error(404, "NotFound", f'{kind} "{name}" not found')
                if method == "GET":
                    if kind in _JOB_KINDS:
                        out = {**obj, "status": fake._status(kind, key, obj)}
                        return self._reply(200, out)
                    if kind == "SeldonDeployment" and not fake._fixed(obj):
                        fake._seldon_read(key, obj)
                    return self._reply(200, obj)
                if method == "DELETE":
                    fake._delete(key)
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
                    meta = {
                        **body["metadata"],
                        "namespace": namespace,
                        "uid": obj["metadata"]["uid"],
                        "generation": obj["metadata"].get("generation", 1)
                        + (body.get("spec") != obj.get("spec")),
                    }
                    new = {**body, "metadata": meta}
                    if kind in _STATUS_SUBRESOURCE:  # a PUT of the object cannot set its status
                        new.pop("status", None)
                        if "status" in obj:
                            new["status"] = obj["status"]
                    fake._bump(new)
                    fake.objects[key] = new
                    if kind == "SeldonDeployment" and not fake._fixed(new):
                        fake._seldon_written(key)
                    return self._reply(200, new)
                if method == "PATCH":
                    if self.headers.get("Content-Type") != "application/merge-patch+json" or not isinstance(
                        body, dict
                    ):
                        # what a real API server answers to a dict sent as a JSON patch
                        return self._status_error(400, "BadRequest", "expected a merge patch (a JSON object)")
                    obj["metadata"].update(body.get("metadata", {}))
                    fake._bump(obj)
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
