"""A long-lived drift checker in the *drift runtime*: imports alibi-detect once, then answers checks.

A fresh ``drift_detect.py`` process per window spends most of its time importing alibi-detect
(~8 s on a laptop, against ~0.1 s for the tests). This process does the import once and then
runs ``drift_detect.main`` in-process for each check it is sent, on a Unix socket only its user
may open (mode 0600)::

    python drift_worker.py SOCKET STATE_JSON [--idle-exit 1800] [--max-requests 500] [--max-rss-mb 1500]

Protocol: one connection per check. The client sends one JSON line ``{"config": PATH}`` (the same
``config.json`` ``drift_detect.py`` takes) and reads one JSON line back: ``{"rc": 0 | 1 | 2,
"output": "...", "pid": N}`` — the exit code and output ``drift_detect.py`` would have had — or
``{"rc": null, "unsupported": "..."}`` for a check it leaves to a process of its own (MMD: the
worker keeps torch out, as ``drift_detect.py`` does for KS-only checks, to stay small).

Bounded: it serves one check at a time; it exits after ``--max-requests`` checks, once its
resident memory passes ``--max-rss-mb``, or after ``--idle-exit`` seconds without a check
(the next check starts a new one). ``STATE_JSON`` (``{"pid", "socket", "started_at"}``) appears
once it accepts checks and is removed when it exits; it is also its lease: a worker whose state
file is gone or names another pid (stopped, its data dir removed) exits within a second.
Standard library and the drift runtime's packages only (never ``airflow`` or
``airflow_mlops``), like ``drift_detect.py`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drift_detect  # noqa: E402 - the sibling script, imported as a module

#: one request line at most (a path in JSON)
MAX_REQUEST_BYTES = 1 << 16


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _still_mine(state_path: str) -> bool:
    try:
        return json.loads(Path(state_path).read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def _warm_up() -> None:
    """One small check end to end now, so the first real one finds every import done, every lazy
    import inside the libraries too, and matplotlib's font cache loaded (the first plot of a
    process costs a second or more)."""
    import tempfile

    import numpy as np
    import pandas as pd

    sys.modules.setdefault("torch", None)  # as drift_detect does without MMD: ~5 s and ~300 MB less
    with tempfile.TemporaryDirectory(prefix="drift-worker-warm-up-") as tmp:
        rng = np.random.default_rng(0)
        for side, shift in (("reference", 0.0), ("current", 1.0)):
            frame = pd.DataFrame({"x": rng.normal(shift, 1, 200), "c": rng.choice(["a", "b"], 200)})
            frame.to_parquet(os.path.join(tmp, f"{side}.parquet"), index=False)
        config = {
            "reference": os.path.join(tmp, "reference.parquet"),
            "current": os.path.join(tmp, "current.parquet"),
            "numeric_features": ["x"],
            "categorical_features": ["c"],
            "output": os.path.join(tmp, "report.json"),
            "plot": os.path.join(tmp, "pvalues.png"),
        }
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            drift_detect.main([os.path.join(tmp, "config.json")])


def check(config_path: str) -> dict:
    """One check, as ``drift_detect.py CONFIG`` would run it: its exit code and output."""
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:
        said = f"drift_detect: error: cannot read {config_path}: {err}"
        return {"rc": drift_detect.EXIT_BAD_INPUT, "output": said}
    if raw.get("mmd"):
        return {"rc": None, "unsupported": "mmd (needs torch, which this worker keeps out)"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = drift_detect.main([config_path])
        except Exception:  # what would have ended the script: its traceback, exit code 1
            traceback.print_exc()
            rc = 1
    return {"rc": rc, "output": out.getvalue()}


def _answer(conn: socket.socket) -> bool:
    """Serve one connection; False when the peer sent nothing usable."""
    conn.settimeout(30)
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST_BYTES:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data.strip():
        return False  # a client making sure the worker runs (it connects and closes)
    try:
        request = json.loads(data)
        config_path = request["config"]
    except (ValueError, KeyError, TypeError):
        conn.sendall(json.dumps({"rc": 2, "output": "drift_worker: bad request"}).encode() + b"\n")
        return False
    reply = {**check(str(config_path)), "pid": os.getpid()}
    conn.sendall(json.dumps(reply).encode() + b"\n")
    return True


def serve(sock_path: str, state_path: str, idle_exit: float, max_requests: int, max_rss_mb: float) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    _warm_up()
    old = os.umask(0o177)  # the socket file: this user only
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(sock_path)
    finally:
        os.umask(old)
    server.listen(16)
    server.settimeout(1.0)
    state = {"pid": os.getpid(), "socket": sock_path, "started_at": time.time()}
    tmp = f"{state_path}.{os.getpid()}.tmp"
    Path(tmp).write_text(json.dumps(state))
    os.replace(tmp, state_path)
    print(f"drift worker {os.getpid()} ready on {sock_path}", flush=True)
    served, last = 0, time.monotonic()
    reason = "stopped"
    try:
        while not stopping:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if time.monotonic() - last > idle_exit:
                    reason = f"idle for {idle_exit:.0f}s"
                    break
                if not _still_mine(state_path):  # stopped, or its data dir is gone
                    reason = f"{state_path} no longer names it"
                    break
                continue
            with conn:
                try:
                    served += _answer(conn)
                except OSError as err:  # the client went away: its check is its own to retry
                    print(f"drift worker: a client left: {err}", flush=True)
            last = time.monotonic()
            if served >= max_requests:
                reason = f"served {served} checks"
                break
            if _rss_mb() > max_rss_mb:
                reason = f"resident memory {_rss_mb():.0f} MB > {max_rss_mb:.0f} MB"
                break
    finally:
        # the state first: a client that finds no state starts a new worker instead of waiting
        if _still_mine(state_path):
            with contextlib.suppress(OSError):
                os.unlink(state_path)
        with contextlib.suppress(OSError):
            os.unlink(sock_path)
        server.close()
    print(f"drift worker {os.getpid()} exits: {reason}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("state")
    parser.add_argument("--idle-exit", type=float, default=1800.0)
    parser.add_argument("--max-requests", type=int, default=500)
    parser.add_argument("--max-rss-mb", type=float, default=1500.0)
    args = parser.parse_args(argv)
    return serve(args.socket, args.state, args.idle_exit, args.max_requests, args.max_rss_mb)


if __name__ == "__main__":
    sys.exit(main())
