"""The stable address of a local Seldon deployment: a small router in front of the model servers.

Local mode runs one seldon-core microservice per model version, each on its own port. This
router owns the deployment's *stable* port and plays the part Seldon's executor plays on
Kubernetes: it reads the deployment's routing (``current.json``, written atomically by
:class:`~airflow_mlops.hooks.seldon.SeldonHook`) on every request when the file changed, and

* sends each prediction to the main predictor, or to a canary with its traffic weight;
* copies it to a shadow predictor when there is one (the shadow's answer is dropped);
* optionally looks features up in the Feast online store first (``feature_lookup`` in the
  routing: a client sends entity keys as ``{"jsonData": {"rows": [...]}}`` and gets a
  probability), which is the pre-processing step of the served graph;
* retries a request once, against the routing read again, when a model server refuses the
  connection: a blue/green switch stops the old server only after the routing moved, so a
  request caught in between is answered by the new one instead of failing.

Standard library only (plus Feast when ``feature_lookup`` is set): it starts in well under a
second and never imports Airflow. Run as::

    python -m airflow_mlops.serving.router --state DEPLOYMENT_DIR/current.json --port 9000

``GET /router/status`` answers the routing it uses and per-predictor counters;
``GET /health/ping`` answers 200 only when the main predictor does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PREDICT_PATH = "/api/v1.0/predictions"
_CONNECT_ERRORS = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine, OSError)


class LookupNotReady(Exception):
    """Entity keys arrived while the deployment's feature lookup is still warming up (or failed)."""

    def __init__(self, error: str | None) -> None:
        super().__init__(
            f"the feature lookup could not be built ({error}); see router.log"
            if error
            else "the feature lookup is warming up (Feast loads once, ~20 s); retry in a few seconds"
        )


class Routing:
    """
    The routing of one deployment, re-read from its state file whenever the file changes.

    A routing that asks for a new feature lookup is applied only once that lookup is warm:
    warming imports Feast and opens the store (20 s or more), so it runs in a thread of its own
    while requests keep the routing they had. A lookup that cannot be built leaves the routing
    as it was and is reported by ``/router/status`` (``feature_lookup_error``).
    """

    def __init__(self, state_path: str) -> None:
        self.state_path = state_path
        self._mtime: int | None = None
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {}
        self.lookup = None  # FeatureLookup, built when the routing asks for one
        self._lookup_config: dict[str, Any] | None = None
        self._warming: dict[str, Any] | None = None  # the lookup config being warmed
        self._failed: tuple[dict[str, Any], int] | None = None  # (config, state mtime) that failed
        self.lookup_error: str | None = None
        self.counters: dict[str, dict[str, int]] = {}

    def refresh(self, force: bool = False) -> dict[str, Any]:
        try:
            mtime = os.stat(self.state_path).st_mtime_ns
        except FileNotFoundError:
            return self.state
        if not force and mtime == self._mtime:
            return self.state
        with self._lock:
            try:
                with open(self.state_path) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                return self.state  # being replaced: keep the last good routing
            config = state.get("feature_lookup")
            if config and config != self._lookup_config:
                self._warm(config, mtime)  # applied by the next refresh once the lookup is ready
                if not self.state:  # a (re)started router: route now, entity keys wait (503)
                    self.state = state
                return self.state
            if not config:
                self.lookup, self._lookup_config, self._warming = None, None, None
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
        predictors = [p for p in self.state.get("predictors", []) if p.get("traffic", 0) > 0]
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
        for predictor in self.state.get("predictors", []):
            if predictor.get("role") == "main":
                return predictor
        return None

    def count(self, predictor: dict[str, Any] | None, key: str) -> None:
        name = f"{(predictor or {}).get('role', '?')}:v{(predictor or {}).get('version', '?')}"
        with self._lock:
            counts = self.counters.setdefault(name, {"requests": 0, "errors": 0, "retries": 0})
            counts[key] += 1


class _Connections(threading.local):
    """Keep-alive connections to the model servers, one set per router thread."""

    def __init__(self) -> None:
        self.pool: dict[str, http.client.HTTPConnection] = {}

    def request(
        self, endpoint: str, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[int, bytes, str]:
        conn = self.pool.get(endpoint)
        if conn is None:
            parts = urlsplit(endpoint)
            conn = self.pool[endpoint] = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=timeout
            )
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/json")
        except BaseException:
            conn.close()
            self.pool.pop(endpoint, None)
            raise


def _no_delay(sock: socket.socket) -> None:
    # headers and body go out as separate small writes: with Nagle's algorithm the second
    # waits for the peer's delayed ACK (~40 ms on Linux) on every request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Router:
    """Forward Seldon protocol requests to the predictors of one deployment."""

    def __init__(self, state_path: str, timeout: float = 60.0) -> None:
        self.routing = Routing(state_path)
        self.routing.refresh(force=True)
        self.timeout = timeout
        self.connections = _Connections()
        self.shadow_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shadow")

    def _forward(self, predictor: dict[str, Any], method: str, path: str, body: bytes | None):
        try:
            return self.connections.request(predictor["endpoint"], method, path, body, self.timeout)
        except _CONNECT_ERRORS:
            # a stale keep-alive connection, or a server stopped by a switch: one fresh try
            # against the routing as it is now
            self.routing.count(predictor, "retries")
            self.routing.refresh(force=True)
            retry = self.routing.main() if predictor.get("role") != "canary" else self.routing.choose()
            return self.connections.request(
                (retry or predictor)["endpoint"], method, path, body, self.timeout
            )

    def _shadow(self, body: bytes) -> None:
        shadow = self.routing.state.get("shadow")
        if not shadow:
            return

        def send() -> None:
            try:
                _SHADOW_CONNECTIONS.request(shadow["endpoint"], "POST", PREDICT_PATH, body, self.timeout)
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
            if self.routing.state.get("feature_lookup"):
                raise LookupNotReady(self.routing.lookup_error)
            return body
        from airflow_mlops.serving.feature_lookup import model_request, rows_from_request

        payload = json.loads(body)
        result = lookup.transform(rows_from_request(payload))
        request = model_request(result)
        if payload.get("meta"):
            request["meta"] = payload["meta"]
        return json.dumps(request).encode()

    def predict(self, body: bytes) -> tuple[int, bytes, str, dict[str, Any] | None]:
        self.routing.refresh()
        predictor = self.routing.choose()
        if predictor is None:
            return 503, _error("the deployment has no predictor to route to"), "application/json", None
        try:
            body = self.transform(body)
        except LookupNotReady as err:
            return 503, _error(str(err)), "application/json", predictor
        except (ValueError, KeyError) as err:
            return 400, _error(f"feature lookup: {err}"), "application/json", predictor
        status, data, ctype = self._forward(predictor, "POST", PREDICT_PATH, body)
        self.routing.count(predictor, "requests" if status < 500 else "errors")
        self._shadow(body)
        return status, data, ctype, predictor

    def status(self) -> dict[str, Any]:
        state = self.routing.refresh()
        return {
            "name": state.get("name"),
            "pid": os.getpid(),
            "predictors": [
                {k: p.get(k) for k in ("role", "version", "traffic", "endpoint")}
                for p in state.get("predictors", [])
            ],
            "shadow": {k: state["shadow"].get(k) for k in ("version", "endpoint")}
            if state.get("shadow")
            else None,
            "feature_lookup": bool(self.routing.lookup),
            "feature_lookup_error": self.routing.lookup_error,
            "counters": self.routing.counters,
        }


_SHADOW_CONNECTIONS = _Connections()


def _error(message: str) -> bytes:
    return json.dumps({"status": {"status": "FAILURE", "info": message}}).encode()


def make_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients

        def setup(self) -> None:
            super().setup()
            _no_delay(self.connection)

        def log_message(self, fmt: str, *args: Any) -> None:  # requests are logged by the model servers
            pass

        def _send(self, status: int, data: bytes, ctype: str = "application/json", predictor=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if predictor:
                self.send_header("X-Mlops-Predictor", str(predictor.get("role")))
                self.send_header("X-Mlops-Model-Version", str(predictor.get("version")))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?")[0] != PREDICT_PATH:
                return self._send(404, _error(f"unknown path {self.path}; predictions go to {PREDICT_PATH}"))
            try:
                self._send(*router.predict(body))
            except _CONNECT_ERRORS as err:
                self._send(502, _error(f"no model server answered: {err}"))

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/router/status":
                return self._send(200, json.dumps(router.status()).encode())
            router.routing.refresh()
            main = router.routing.main()
            if main is None:
                return self._send(503, _error("the deployment has no main predictor"))
            try:
                self._send(*router._forward(main, "GET", self.path, None), predictor=main)
            except _CONNECT_ERRORS as err:
                self._send(503, _error(f"the main predictor does not answer: {err}"))

    return Handler


def serve(state_path: str, host: str, port: int) -> None:
    router = Router(state_path)
    server = ThreadingHTTPServer((host, port), make_handler(router))
    server.daemon_threads = True

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
    args = parser.parse_args(argv)
    started = time.monotonic()
    serve(args.state, args.host, args.port)
    print(f"router: stopped after {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
