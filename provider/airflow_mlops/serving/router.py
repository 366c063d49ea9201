"""The stable address of a local Seldon deployment: a small router in front of the model servers.

Local mode runs one seldon-core microservice per model version, each on its own port. This
router owns the deployment's *stable* port and plays the part Seldon's executor plays on
Kubernetes: it reads the deployment's routing (``current.json``, through
:mod:`airflow_mlops.serving.state`) again whenever the file changed, and

* speaks the Seldon protocol of the model servers behind it (seldon-core 1.17.1's
  microservice): predictions at ``/api/v1.0/predictions``, ``/api/v0.1/predictions`` and
  ``/predict`` (a JSON body, a form-encoded ``json=`` field, or ``?json=``), feedback at
  ``/api/v1.0/feedback``, ``/api/v0.1/feedback`` and ``/send-feedback``, and every other route
  of the microservice (health, metadata, ``/seldon.json``, the graph methods) forwarded to the
  main predictor — under a gateway prefix too, ``/seldon/<namespace>/<deployment>/...`` or
  ``/seldon/<deployment>/...``, as ``SeldonClient`` sends through an Ambassador/Istio gateway;
* sends each prediction to the main predictor, or to a canary with its traffic weight;
* copies it to a shadow predictor when there is one (the shadow's answer is dropped);
* sends feedback to the predictor that made the prediction (its ``meta.tags.model_version``);
* optionally looks features up in the Feast online store first (``feature_lookup`` in the
  routing: a client sends entity keys as ``{"jsonData": {"rows": [...]}}`` and gets a
  probability), which is the pre-processing step of the served graph;
* spreads each predictor's requests over its live replicas (``replicas`` in the routing, each
  a model server of the same version), and when the connection to one fails before any answer
  (refused, reset, closed) retries the prediction — predictions are idempotent — on another
  live replica of the SAME version, against the routing read again (the supervisor may have
  restarted one on its port meanwhile); a version the routing no longer names (a blue/green
  switch stopped it after the routing moved) is replaced by what the routing names now;
* answers ``503`` with ``Retry-After`` and a Seldon error naming the version and the pids while
  no model server of the version answers (the supervisor is restarting it); each prediction
  carries a request id (``meta.tags.request_id``, kept when the client sends one) so the one
  answered prediction of a retried request is logged under one id;
* counts every connection failure as an error (``errors`` per predictor, ``failures`` per model
  server process in ``/router/status``) and logs it, with version, pid and port, to router.log;
* refuses a request body larger than the routing's ``max_request_bytes`` (default
  :data:`DEFAULT_MAX_REQUEST_BYTES`) with 413, and answers every failure — its own, the
  feature store's — with a Seldon error body
  ``{"status": {"code", "info", "reason", "status": "FAILURE"}}``, never a dropped connection.

Standard library only (plus Feast when ``feature_lookup`` is set): it starts in well under a
second and never imports Airflow. Run as::

    python -m airflow_mlops.serving.router --state DEPLOYMENT_DIR/current.json --port 9000

``GET /router/status`` answers the routing it uses and per-predictor counters;
``GET /health/ping`` answers 200 only when the main predictor does.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from airflow_mlops.serving.state import (
    EMPTY,
    CorruptState,
    DeploymentState,
    DeploymentStore,
    replicas_of,
    tracked_alive,
)

PREDICT_PATH = "/api/v1.0/predictions"
FEEDBACK_PATH = "/api/v1.0/feedback"
#: the routes of seldon-core 1.17.1's microservice (``seldon_core/wrapper.py``)
PREDICT_ROUTES = frozenset({PREDICT_PATH, "/api/v0.1/predictions", "/predict"})
FEEDBACK_ROUTES = frozenset({FEEDBACK_PATH, "/api/v0.1/feedback", "/send-feedback"})
FORWARDED_ROUTES = frozenset(
    {
        "/health/ping",
        "/health/status",
        "/api/v1.0/health/status",
        "/metadata",
        "/api/v1.0/metadata",
        "/seldon.json",
        "/transform-input",
        "/transform-output",
        "/route",
        "/aggregate",
    }
)
#: the largest request body accepted when the routing sets no ``max_request_bytes``
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: a body over the limit is read and dropped up to this size, so the client reads the 413
#: instead of a reset connection; a larger one is cut off
_DRAIN_BYTES = 256 * 1024 * 1024
_CONNECT_ERRORS = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine, OSError)
#: the model server gave no whole answer to this request (refused: nothing listens; reset or
#: closed: it died, or closed an idle keep-alive connection; an answer cut off after its headers:
#: it died while writing it). Predictions are idempotent: retried on another live replica
_NO_ANSWER = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
              http.client.RemoteDisconnected, http.client.IncompleteRead)  # fmt: skip
#: seconds a client is told to wait (``Retry-After``) while no model server of a version answers
RETRY_AFTER_S = 1


class NoAnswer(Exception):
    """No model server of a version answered (each connection failed before any answer)."""

    def __init__(self, version: Any, tried: list[dict[str, Any]], error: BaseException) -> None:
        pids = [r.get("pid") for r in tried]
        super().__init__(
            f"no model server of version {version} answered (pids {pids}: {type(error).__name__}: {error}); "
            "the deployment's supervisor restarts what died"
        )
        self.version, self.pids = version, pids


class RequestError(Exception):
    """A request the router answers itself, with a Seldon error body."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason
        self.headers = headers or {}


class LookupNotReady(RequestError):
    """Entity keys arrived while the deployment's feature lookup is still warming up (or failed)."""

    def __init__(self, error: str | None) -> None:
        super().__init__(
            503,
            "FEATURE_LOOKUP_UNAVAILABLE",
            f"the feature lookup could not be built ({error}); see router.log"
            if error
            else "the feature lookup is warming up (Feast loads once, ~20 s); retry in a few seconds",
        )


def seldon_error(status: int, reason: str, message: str) -> bytes:
    """A Seldon protocol error body (the executor's shape)."""
    return json.dumps(
        {"status": {"code": status, "info": message, "reason": reason, "status": "FAILURE"}}
    ).encode()


class Routing:
    """
    The routing of one deployment, re-read from its state file whenever the file changes.

    A routing that asks for a new feature lookup is applied only once that lookup is warm:
    warming imports Feast and opens the store (20 s or more), so it runs in a thread of its own
    while requests keep the routing they had. A lookup that cannot be built leaves the routing
    as it was and is reported by ``/router/status`` (``feature_lookup_error``).
    """

    def __init__(self, state_path: str) -> None:
        self.store = DeploymentStore.for_state_file(state_path)
        self.state_path = str(self.store.current_path)
        self._mtime: int | None = None
        self._lock = threading.Lock()
        self.state: DeploymentState = EMPTY
        self.lookup = None  # FeatureLookup, built when the routing asks for one
        self._lookup_config: dict[str, Any] | None = None
        self._warming: dict[str, Any] | None = None  # the lookup config being warmed
        self._failed: tuple[dict[str, Any], int] | None = None  # (config, state mtime) that failed
        self.lookup_error: str | None = None
        self.counters: dict[str, dict[str, int]] = {}
        #: connection failures per model server process (``v<version>:<port>:<pid>``)
        self.failures: dict[str, int] = {}
        self._turns: dict[str, itertools.count] = {}
        self._logged: dict[str, tuple[float, int]] = {}

    @property
    def name(self) -> str:
        return self.state.name or self.store.name

    @property
    def warming(self) -> bool:
        """A lookup the routing asked for is being built (the routing waits for it)."""
        return self._warming is not None

    def refresh(self, force: bool = False) -> DeploymentState:
        try:
            mtime = os.stat(self.state_path).st_mtime_ns
        except FileNotFoundError:
            return self.state
        if not force and mtime == self._mtime:
            return self.state
        with self._lock:
            try:
                state = self.store.read()
            except (OSError, CorruptState):
                return self.state  # unreadable: keep the last good routing
            if state is None:
                return self.state
            config = state.feature_lookup
            if config and config != self._lookup_config:
                self._warm(config, mtime)  # applied by the next refresh once the lookup is ready
                if self.state is EMPTY:  # a (re)started router: route now, entity keys wait (503)
                    self.state = state
                return self.state
            if not config:  # no lookup wanted (any more): entity keys go to the model as they are
                self.lookup, self._lookup_config, self._warming, self.lookup_error = None, None, None, None
            self.state, self._mtime = state, mtime
        return self.state

    def _warm(self, config: dict[str, Any], mtime: int) -> None:
        """
        Build and warm ``config``'s lookup in a thread (the caller holds the lock): once per
        config, and again after a failure only when the state file is written again.
        """
        if config == self._warming or self._failed == (config, mtime):
            return
        self._warming, self.lookup_error = config, None

        def build() -> None:
            from airflow_mlops.serving.feature_lookup import FeatureLookup

            try:
                lookup = FeatureLookup.from_dict(config)
                lookup.warm()
            except Exception as err:
                print(f"router: the feature lookup could not be built: {err!r}", file=sys.stderr, flush=True)
                with self._lock:
                    if self._warming == config:
                        self.lookup_error = f"{type(err).__name__}: {err}"
                        self._warming, self._failed = None, (config, mtime)
                return
            with self._lock:
                if self._warming == config:
                    self.lookup, self._lookup_config, self._warming = lookup, config, None
                    self._mtime = None  # the next refresh applies the routing that asked for it

        threading.Thread(target=build, name="feature-lookup-warm", daemon=True).start()

    def choose(self) -> dict[str, Any] | None:
        """A predictor for one request, by traffic weight."""
        predictors = [p for p in self.state.predictors if p.get("traffic", 0) > 0]
        if not predictors:
            return None
        total = sum(p["traffic"] for p in predictors)
        pick = random.uniform(0, total)
        for predictor in predictors:
            pick -= predictor["traffic"]
            if pick <= 0:
                return predictor
        return predictors[-1]

    def main(self) -> dict[str, Any] | None:
        return self.state.main

    def by_version(self, version: Any) -> dict[str, Any] | None:
        """The predictor taking traffic that serves ``version`` (feedback follows its prediction)."""
        return next((p for p in self.state.predictors if str(p.get("version")) == str(version)), None)

    def count(self, predictor: dict[str, Any] | None, key: str) -> None:
        name = f"{(predictor or {}).get('role', '?')}:v{(predictor or {}).get('version', '?')}"
        with self._lock:
            counts = self.counters.setdefault(
                name, {"requests": 0, "errors": 0, "retries": 0, "unavailable": 0}
            )
            counts[key] = counts.get(key, 0) + 1

    def replicas(self, predictor: dict[str, Any]) -> list[dict[str, Any]]:
        """The model servers of ``predictor`` in the order to try them: live ones first, taking
        turns (round robin), then those whose process looks gone (its record may be stale)."""
        replicas = replicas_of(predictor)
        if len(replicas) == 1:
            return list(replicas)
        key = str(predictor.get("version"))
        with self._lock:
            turn = next(self._turns.setdefault(key, itertools.count()))
        start = turn % len(replicas)
        ordered = replicas[start:] + replicas[:start]
        alive = [r for r in ordered if tracked_alive(r)]
        return alive + [r for r in ordered if r not in alive]

    def current(self, predictor: dict[str, Any]) -> dict[str, Any] | None:
        """``predictor``'s version as the routing names it now (same role), or None: switched away."""
        version, role = str(predictor.get("version")), predictor.get("role")
        for candidate in [*self.state.predictors, *([self.state.shadow] if self.state.shadow else [])]:
            if str(candidate.get("version")) == version and candidate.get("role") == role:
                return candidate
        return None

    def failed(self, predictor: dict[str, Any], replica: dict[str, Any], err: BaseException) -> None:
        """A connection to ``replica`` failed: an error of its predictor, a failure of the process,
        and a line in router.log (one a second per process at most, with the count left out)."""
        self.count(predictor, "errors")
        key = f"v{predictor.get('version')}:{replica.get('port')}:{replica.get('pid')}"
        with self._lock:
            self.failures[key] = self.failures.get(key, 0) + 1
            last, quiet = self._logged.get(key, (0.0, 0))
            now = time.monotonic()
            if now - last < 1.0:
                self._logged[key] = (last, quiet + 1)
                return
            self._logged[key] = (now, 0)
        more = f" ({quiet} more since the last line)" if quiet else ""
        print(
            f"router: {time.strftime('%H:%M:%S')} connection to the model server of version "
            f"{predictor.get('version')} (pid {replica.get('pid')}, {replica.get('endpoint')}) failed: "
            f"{type(err).__name__}: {err}{more}",
            file=sys.stderr,
            flush=True,
        )


class _Connections(threading.local):
    """Keep-alive connections to the model servers, one set per router thread."""

    def __init__(self) -> None:
        self.pool: dict[str, http.client.HTTPConnection] = {}

    def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, str]:
        conn = self.pool.get(endpoint)
        reused = conn is not None
        if conn is None:
            parts = urlsplit(endpoint)
            conn = self.pool[endpoint] = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=timeout
            )
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/json")
        except _NO_ANSWER:
            conn.close()
            self.pool.pop(endpoint, None)
            if reused:  # an idle keep-alive connection the server closed: once more, on a new one
                return self.request(endpoint, method, path, body, timeout, content_type)
            raise
        except BaseException:
            conn.close()
            self.pool.pop(endpoint, None)
            raise


def _no_delay(sock: socket.socket) -> None:
    # headers and body go out as separate small writes: with Nagle's algorithm the second
    # waits for the peer's delayed ACK (~40 ms on Linux) on every request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _payload(body: bytes, content_type: str, query: str) -> tuple[bytes, str]:
    """
    The Seldon message of a request as the model server reads it (``seldon_core.flask_utils``):
    a form field or query parameter ``json``, else the body. Returns ``(body, content type)``
    to forward: JSON whenever it can be, so the router reads it and the model server logs it alike.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return body, content_type  # binData/strData files: forwarded as they are
    form = parse_qs(body.decode("utf-8", "replace")) if ctype == "application/x-www-form-urlencoded" else {}
    field = (form.get("json") or parse_qs(query).get("json") or [None])[0]
    if field is not None:
        return field.encode(), "application/json"
    return body, "application/json"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        raise RequestError(400, "MICROSERVICE_BAD_DATA", f"the request body is not JSON: {err}") from err


def _dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


class Router:
    """Forward Seldon protocol requests to the predictors of one deployment."""

    def __init__(
        self, state_path: str, timeout: float = 60.0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> None:
        self.routing = Routing(state_path)
        self.routing.refresh(force=True)
        self.timeout = timeout
        self.default_max_request_bytes = max_request_bytes
        self.connections = _Connections()
        self.shadow_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shadow")

    @property
    def max_request_bytes(self) -> int:
        return self.routing.state.max_request_bytes or self.default_max_request_bytes

    def _forward(
        self,
        predictor: dict[str, Any],
        method: str,
        path: str,
        body: bytes | None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, str, dict[str, Any]]:
        """
        Send a request to a model server of ``predictor``: a live replica, and when the connection
        fails before any answer, another replica of the same version (the routing read again);
        when the routing no longer names the version, what it names now.

        :return: ``(status, body, content type, the predictor that answered)``.
        :raises NoAnswer: no model server of the version answered.
        """
        tried: set[tuple[Any, Any]] = set()
        tried_records: list[dict[str, Any]] = []
        switched = False
        last: BaseException | None = None
        while True:
            candidates = [
                r for r in self.routing.replicas(predictor) if (r.get("endpoint"), r.get("pid")) not in tried
            ]
            if not candidates:
                self.routing.refresh(force=True)
                now = self.routing.current(predictor)
                if now is None and not switched:
                    # a switch moved the traffic: what the routing names now answers
                    switched = True
                    now = self.routing.choose() if predictor.get("role") == "canary" else self.routing.main()
                    if now is not None:
                        predictor, tried = now, set()
                        continue
                if now is not None:
                    predictor = now
                    candidates = [
                        r
                        for r in self.routing.replicas(now)
                        if (r.get("endpoint"), r.get("pid")) not in tried
                    ]
                if not candidates:
                    raise NoAnswer(predictor.get("version"), tried_records, last or ConnectionRefusedError())
            replica = candidates[0]
            try:
                status, data, ctype = self.connections.request(
                    replica["endpoint"], method, path, body, self.timeout, content_type
                )
                if status >= 500 and not tracked_alive(replica):
                    # the answer of what is left of a crashed server (a worker whose master
                    # died), not the model's: tried elsewhere like a failed connection
                    raise ConnectionAbortedError(f"answered {status} while its process is gone")
                return status, data, ctype, predictor
            except _NO_ANSWER as err:
                last = err
                self.routing.failed(predictor, replica, err)
                self.routing.count(predictor, "retries")
                tried.add((replica.get("endpoint"), replica.get("pid")))
                tried_records.append(replica)

    def _shadow(self, body: bytes, content_type: str) -> None:
        shadow = self.routing.state.shadow
        if not shadow:
            return

        def send() -> None:
            try:
                _SHADOW_CONNECTIONS.request(
                    shadow["endpoint"], "POST", PREDICT_PATH, body, self.timeout, content_type
                )
                self.routing.count(shadow, "requests")
            except Exception:
                self.routing.count(shadow, "errors")

        self.shadow_pool.submit(send)

    def transform(self, body: bytes) -> bytes:
        """Entity keys (``jsonData.rows``) → the model's feature matrix, when a lookup is configured."""
        lookup = self.routing.lookup
        if b'"jsonData"' not in body:
            return body
        if lookup is None:
            routing = self.routing
            if routing.state.feature_lookup or routing.warming or routing.lookup_error:
                raise LookupNotReady(routing.lookup_error)  # one is on its way, or could not be built
            return body
        from airflow_mlops.serving.feature_lookup import (
            FeatureStoreError,
            model_request,
            rows_from_request,
        )

        payload = _json(body)
        try:
            result = lookup.transform(rows_from_request(payload))
        except (ValueError, KeyError) as err:
            raise RequestError(400, "MICROSERVICE_BAD_DATA", f"feature lookup: {err}") from err
        except FeatureStoreError as err:
            status, reason = (
                (503, "FEATURE_STORE_UNAVAILABLE") if err.unavailable else (500, "FEATURE_STORE_ERROR")
            )
            raise RequestError(status, reason, f"feature lookup: {err}") from err
        except Exception as err:
            message = f"feature lookup failed: {type(err).__name__}: {err}"
            raise RequestError(500, "FEATURE_LOOKUP_ERROR", message) from err
        request = model_request(result)
        if isinstance(payload, dict) and payload.get("meta"):
            request["meta"] = payload["meta"]
        return json.dumps(request).encode()

    def predict(
        self, body: bytes, content_type: str = "application/json", query: str = ""
    ) -> tuple[int, bytes, str, dict[str, Any] | None]:
        self.routing.refresh()
        predictor = self.routing.choose()
        if predictor is None:
            raise RequestError(503, "NO_PREDICTOR", "the deployment has no predictor to route to")
        body, content_type = _payload(body, content_type, query)
        if content_type == "application/json":
            try:
                body = with_request_id(self.transform(body))
            except RequestError as err:
                return (
                    err.status,
                    seldon_error(err.status, err.reason, str(err)),
                    "application/json",
                    predictor,
                )
        try:
            status, data, ctype, predictor = self._forward(
                predictor, "POST", PREDICT_PATH, body, content_type
            )
        except NoAnswer as err:
            self.routing.count(predictor, "unavailable")
            raise unavailable(err) from err
        except _CONNECT_ERRORS as err:  # a timeout, or an answer cut off: not retried
            self.routing.failed(predictor, predictor, err)
            raise RequestError(
                502,
                "MICROSERVICE_UNAVAILABLE",
                f"the model server of version {predictor.get('version')} (pid {predictor.get('pid')}) "
                f"did not answer: {type(err).__name__}: {err}",
            ) from err
        self.routing.count(predictor, "requests" if status < 500 else "errors")
        self._shadow(body, content_type)
        return status, data, ctype, predictor

    def feedback(
        self, body: bytes, content_type: str = "application/json", query: str = ""
    ) -> tuple[int, bytes, str, dict[str, Any] | None]:
        """Feedback goes to the predictor that answered (``response.meta.tags``), else the main one."""
        self.routing.refresh()
        body, content_type = _payload(body, content_type, query)
        predictor = None
        if content_type == "application/json":
            version = _dig(_json(body), "response", "meta", "tags", "model_version")
            predictor = self.routing.by_version(version) if version is not None else None
        predictor = predictor or self.routing.main()
        if predictor is None:
            raise RequestError(503, "NO_PREDICTOR", "the deployment has no predictor to route to")
        try:
            status, data, ctype, predictor = self._forward(
                predictor, "POST", FEEDBACK_PATH, body, content_type
            )
        except NoAnswer as err:
            raise unavailable(err) from err
        return status, data, ctype, predictor

    def status(self) -> dict[str, Any]:
        state = self.routing.refresh()
        return {
            "name": self.routing.name,
            "pid": os.getpid(),
            "predictors": [
                {k: p.get(k) for k in ("role", "version", "traffic", "endpoint")} for p in state.predictors
            ],
            "shadow": {k: state.shadow.get(k) for k in ("version", "endpoint")} if state.shadow else None,
            "feature_lookup": bool(self.routing.lookup),
            "feature_lookup_error": self.routing.lookup_error,
            "max_request_bytes": self.max_request_bytes,
            "counters": self.routing.counters,
            "failures": dict(self.routing.failures),
            "replicas": [
                {
                    "role": p.get("role"),
                    "version": p.get("version"),
                    "pid": r.get("pid"),
                    "port": r.get("port"),
                    "alive": tracked_alive(r),
                    "restarts": int(r.get("restarts") or 0),
                }
                for p in [*state.predictors, *([state.shadow] if state.shadow else [])]
                for r in replicas_of(p)
            ],
        }


_SHADOW_CONNECTIONS = _Connections()


def unavailable(err: NoAnswer) -> RequestError:
    """503 + ``Retry-After`` while no model server of a version answers."""
    return RequestError(
        503, "MICROSERVICE_UNAVAILABLE", str(err), headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def with_request_id(body: bytes) -> bytes:
    """``body`` (a Seldon JSON message) with ``meta.tags.request_id`` set, unless it has one:
    a retried prediction then carries the same id to the next model server. A body that is not
    a JSON object is left as it is (the model server answers it)."""
    try:
        message = json.loads(body)
    except ValueError:
        return body
    if not isinstance(message, dict):
        return body
    meta = message.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    tags = meta.get("tags")
    tags = tags if isinstance(tags, dict) else {}
    if tags.get("request_id"):
        return body
    message["meta"] = {**meta, "tags": {**tags, "request_id": uuid.uuid4().hex}}
    return json.dumps(message).encode()


def make_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients

        def setup(self) -> None:
            super().setup()
            _no_delay(self.connection)

        def log_message(self, fmt: str, *args: Any) -> None:  # requests are logged by the model servers
            pass

        def _send(
            self, status: int, data: bytes, ctype: str = "application/json", predictor=None, headers=None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if predictor:
                self.send_header("X-Mlops-Predictor", str(predictor.get("role")))
                self.send_header("X-Mlops-Model-Version", str(predictor.get("version")))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: RequestError) -> None:
            self._send(err.status, seldon_error(err.status, err.reason, str(err)), headers=err.headers)

        def _route(self) -> tuple[str, str]:
            """``(path, query)`` of the request, its gateway prefix removed."""
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            if path.startswith("/seldon/"):
                # /seldon/<namespace>/<deployment>/<route> or /seldon/<deployment>/<route>
                segments = path.split("/")[2:]
                name = router.routing.name
                if len(segments) > 2 and segments[1] == name:
                    return "/" + "/".join(segments[2:]), parts.query
                if len(segments) > 1 and segments[0] == name:
                    return "/" + "/".join(segments[1:]), parts.query
                raise RequestError(
                    404,
                    "NOT_FOUND",
                    f"no such deployment here ({path}): this address serves {name!r} at "
                    f"/seldon/<namespace>/{name}/... and /seldon/{name}/...",
                )
            return path, parts.query

        def _body(self) -> bytes:
            """The request body, within the limit. :raises RequestError: 413 or 400."""
            limit = router.max_request_bytes
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._chunked(limit)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                raise RequestError(400, "BAD_REQUEST", "Content-Length is not a number") from None
            if length > limit:
                self._drain(length)
                raise self._too_large(length, limit)
            return self.rfile.read(length) if length > 0 else b""

        def _chunked(self, limit: int) -> bytes:
            """A ``Transfer-Encoding: chunked`` body; past ``limit`` the rest is read and dropped
            (up to a bound), so the client gets the 413 rather than a reset connection."""
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    raise RequestError(400, "BAD_REQUEST", "malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total <= limit:
                    chunks.append(self.rfile.read(size))
                else:  # refused: nothing of it is kept
                    chunks.clear()
                    if total > _DRAIN_BYTES:
                        break
                    self.connection.settimeout(10)
                    self._discard(size)
                self.rfile.readline(1024)
            if total > limit:
                self.close_connection = True
                raise self._too_large(total, limit)
            return b"".join(chunks)

        def _discard(self, size: int) -> None:
            """Read ``size`` bytes of the body and drop them (a slow or gone client: stop)."""
            try:
                while size > 0:
                    chunk = self.rfile.read(min(size, 1 << 20))
                    if not chunk:
                        return
                    size -= len(chunk)
            except OSError:
                self.close_connection = True

        def _drain(self, length: int) -> None:
            """Read the refused body (up to a bound) so the client gets the 413, then close."""
            self.close_connection = True
            self.connection.settimeout(10)
            self._discard(min(length, _DRAIN_BYTES))

        @staticmethod
        def _too_large(length: int, limit: int) -> RequestError:
            return RequestError(
                413,
                "REQUEST_TOO_LARGE",
                f"the request body has {length} bytes, more than the {limit} this deployment accepts; "
                "send fewer rows per request (or deploy with a larger max_request_bytes)",
            )

        def _handle(self, method: str) -> None:
            try:
                router.routing.refresh()  # the routing as it is now: its limit, its predictors
                path, query = self._route()
                if method == "GET" and path == "/router/status":
                    return self._send(200, json.dumps(router.status()).encode())
                body = self._body() if method == "POST" else None
                ctype = self.headers.get("Content-Type") or "application/json"
                if path in PREDICT_ROUTES and (method == "POST" or path == "/predict"):
                    return self._send(*router.predict(body or b"", ctype, query))
                if path in FEEDBACK_ROUTES and (method == "POST" or path == "/send-feedback"):
                    return self._send(*router.feedback(body or b"", ctype, query))
                if path in FORWARDED_ROUTES:
                    return self._forward_to_main(method, path, query, body, ctype)
                routes = sorted(PREDICT_ROUTES | FEEDBACK_ROUTES | FORWARDED_ROUTES | {"/router/status"})
                raise RequestError(
                    404, "NOT_FOUND", f"unknown route {method} {path}; this address serves {routes}"
                )
            except RequestError as err:
                self._error(err)
            except _CONNECT_ERRORS as err:
                main = router.routing.main() or {}
                self._error(
                    RequestError(
                        502,
                        "MICROSERVICE_UNAVAILABLE",
                        f"no model server answered (version {main.get('version')}, pid {main.get('pid')}): "
                        f"{type(err).__name__}: {err}",
                    )
                )
            except Exception as err:  # never drop the connection without an answer
                print(f"router: {method} {self.path} failed: {err!r}", file=sys.stderr, flush=True)
                self._error(RequestError(500, "ROUTER_ERROR", f"{type(err).__name__}: {err}"))

        def _forward_to_main(
            self, method: str, path: str, query: str, body: bytes | None, ctype: str
        ) -> None:
            router.routing.refresh()
            main = router.routing.main()
            if main is None:
                raise RequestError(503, "NO_PREDICTOR", "the deployment has no main predictor")
            target = f"{path}?{query}" if query else path
            try:
                status, data, content_type, answered = router._forward(main, method, target, body, ctype)
            except NoAnswer as err:
                raise unavailable(err) from err
            except _CONNECT_ERRORS as err:
                raise RequestError(
                    503,
                    "MICROSERVICE_UNAVAILABLE",
                    f"the main predictor (version {main.get('version')}, pid {main.get('pid')}) does not "
                    f"answer: {err}",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from err
            self._send(status, data, content_type, predictor=answered)

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: 16 clients connecting at once overflowed it and some
    # got their connection reset (bench/serve.py --concurrency 16)
    request_queue_size = 128


def serve(state_path: str, host: str, port: int, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
    router = Router(state_path, max_request_bytes=max_request_bytes)
    server = _Server((host, port), make_handler(router))

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"router: {state_path} on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        router.shadow_pool.shutdown(wait=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="the deployment's current.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body when the routing sets no max_request_bytes",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    serve(args.state, args.host, args.port, args.max_request_bytes)
    print(f"router: stopped after {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
