"""Launch the seldon-core 1.17 python microservice on a chosen bind host.

Runs INSIDE the serving runtime environment; must not import airflow.

Why this exists: ``seldon_core/microservice.py`` (1.17.1) has no host option or
environment variable.  It hard-codes ``0.0.0.0`` in five places: the gunicorn
``bind`` of the REST server and of the metrics server, the Flask ``app.run``
of both in ``--debug`` mode, and the gRPC server address plus the
``_reserve_grpc_port`` socket (``""``, i.e. all interfaces).  ``GUNICORN_CMD_ARGS``
does not help: seldon's ``StandaloneApplication`` derives from gunicorn's
``BaseApplication``, which ignores it (and one bind would apply to both the REST
and the metrics server anyway).

So this launcher rewrites the wildcard address to ``--host`` in exactly those
places (and skips seldon's per-request metrics update when there is nothing to record:
:func:`skip_empty_metrics_updates`) and then calls seldon's own ``main()``; every other seldon flag
(``--http-port``, ``--grpc-port``, ``--metrics-port``, ``--workers``,
``--threads``, ``--grpc-workers`` ...) is passed through unchanged.  It refuses
to start when the seldon internals it patches are missing, so an upgrade can
never silently fall back to listening on all interfaces.

Usage (same arguments as ``seldon-core-microservice`` plus ``--host``)::

    python seldon_serve.py [--host 127.0.0.1] seldon_model.MlflowModel \
        --http-port 9000 --grpc-port 5000 --metrics-port 6000

The host defaults to ``$SELDON_BIND_HOST`` and then to ``127.0.0.1``; pass
``--host 0.0.0.0`` (or set ``SELDON_BIND_HOST=0.0.0.0``) inside a container.
``--grpc-workers 0`` disables gRPC entirely (no port, model loaded once less).

The directory of this file is put on ``sys.path`` so ``seldon_model`` is found
whatever the working directory.  Patches are inherited by seldon's worker
processes because Linux multiprocessing forks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys

HOST_ENV = "SELDON_BIND_HOST"
DEFAULT_HOST = "127.0.0.1"
_WILDCARDS = ("0.0.0.0", "", "*", "[::]", "::")


def _split_host(argv: list[str]) -> tuple[str, list[str]]:
    host = os.environ.get(HOST_ENV) or DEFAULT_HOST
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--host":
            if i + 1 >= len(argv):
                raise SystemExit("--host needs a value")
            host = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--host="):
            host = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise SystemExit("empty bind host")
    return host, rest


def _hostport(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _rebind(address: str, host: str) -> str:
    """``0.0.0.0:9000`` -> ``<host>:9000``; any other address is left alone."""
    if not isinstance(address, str) or ":" not in address:
        return address
    addr_host, port = address.rsplit(":", 1)
    if addr_host in _WILDCARDS:
        return _hostport(host, port)
    return address


def install(host: str) -> None:
    """Patch seldon-core so every server it starts binds to ``host``."""
    from seldon_core import gunicorn_utils, wrapper
    from seldon_core import microservice as ms

    missing = [
        name
        for owner, name in (
            (gunicorn_utils.StandaloneApplication, "load_config"),
            (ms, "_reserve_grpc_port"),
            (wrapper, "get_grpc_server"),
            (wrapper, "get_rest_microservice"),
            (wrapper, "get_metrics_microservice"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise SystemExit(
            "seldon_serve: this seldon-core version lacks {}; refusing to start "
            "without control over the bind address".format(", ".join(missing))
        )

    from seldon_core import __version__ as seldon_version

    if not str(seldon_version).startswith("1.17."):
        print(
            f"seldon_serve: written against seldon-core 1.17.x, found {seldon_version}; "
            "check that every server still binds to the requested host",
            file=sys.stderr,
            flush=True,
        )

    # 1. gunicorn (REST + metrics servers; UserModelApplication subclasses this).
    original_load_config = gunicorn_utils.StandaloneApplication.load_config

    @functools.wraps(original_load_config)
    def load_config(self):  # type: ignore[no-untyped-def]
        if self.options and "bind" in self.options:
            self.options = dict(self.options, bind=_rebind(self.options["bind"], host))
        return original_load_config(self)

    gunicorn_utils.StandaloneApplication.load_config = load_config

    # 2. Flask development server (--debug): patch run() on the apps seldon builds.
    def _host_for_run(make_app):  # type: ignore[no-untyped-def]
        @functools.wraps(make_app)
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            app = make_app(*args, **kwargs)
            original_run = app.run

            def run(*a, **kw):  # type: ignore[no-untyped-def]
                if a:  # Flask.run(host, port, ...)
                    a = (host if a[0] is None or a[0] in _WILDCARDS else a[0],) + a[1:]
                elif kw.get("host") is None or kw["host"] in _WILDCARDS:
                    kw["host"] = host
                return original_run(*a, **kw)

            app.run = run
            return app

        return wrapped

    wrapper.get_rest_microservice = _host_for_run(wrapper.get_rest_microservice)
    wrapper.get_metrics_microservice = _host_for_run(wrapper.get_metrics_microservice)

    # 3. gRPC: the port reservation socket and the server's listening address.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    @contextlib.contextmanager
    def _reserve_grpc_port(grpc_port: int):  # type: ignore[no-untyped-def]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 1:
            raise RuntimeError("Failed to set SO_REUSEPORT.")
        sock.bind((host, grpc_port))
        try:
            yield sock.getsockname()[1]
        finally:
            sock.close()

    ms._reserve_grpc_port = _reserve_grpc_port

    original_get_grpc_server = wrapper.get_grpc_server

    @functools.wraps(original_get_grpc_server)
    def get_grpc_server(*args, **kwargs):  # type: ignore[no-untyped-def]
        server = original_get_grpc_server(*args, **kwargs)
        original_add = server.add_insecure_port

        def add_insecure_port(address):  # type: ignore[no-untyped-def]
            return original_add(_rebind(address, host))

        server.add_insecure_port = add_insecure_port
        return server

    wrapper.get_grpc_server = get_grpc_server


def skip_empty_metrics_updates() -> None:
    """Make ``SeldonMetrics.update`` return at once when it has no metrics to record.

    seldon-core 1.17 calls it on every request, with an empty list unless the model defines
    custom metrics; each call still takes the cross-process lock and reads and writes this
    worker's entry of a ``multiprocessing.Manager`` dict: six round trips to the manager
    process, ~0.37 ms of a ~2.2 ms request (bench/README.md, Serving). With no metrics the call
    changes nothing, so skipping it changes nothing either; metrics a model does report are
    recorded as before.
    """
    from seldon_core import metrics

    update = metrics.SeldonMetrics.update
    if getattr(update, "_skips_empty", False):
        return

    @functools.wraps(update)
    def update_when_any(self, custom_metrics, method):  # type: ignore[no-untyped-def]
        if custom_metrics:
            update(self, custom_metrics, method)

    update_when_any._skips_empty = True  # type: ignore[attr-defined]
    metrics.SeldonMetrics.update = update_when_any


def main(argv: list[str] | None = None) -> int:
    host, rest = _split_host(list(sys.argv[1:] if argv is None else argv))
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    install(host)
    skip_empty_metrics_updates()
    from seldon_core import microservice as ms

    sys.argv = [sys.argv[0]] + rest
    print(f"seldon_serve: binding seldon servers to {host}", file=sys.stderr, flush=True)
    ms.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
