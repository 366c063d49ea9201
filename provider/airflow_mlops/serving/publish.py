"""Publish a local deployment to the object store: its routing and its inference log.

With ``[mlops] data_dir`` in an object store the hosts of a multi-host Airflow share nothing but
the store, and the drift watcher (in the triggerer) may run on another host than the model
servers. So the deployment's supervisor (:mod:`.supervisor`) keeps a publisher running beside it
when ``data_dir`` is a store; every ``interval`` seconds it

* uploads ``current.json`` (the routing) when it changed, with ``served_on``, the host that
  serves it, to ``<data_dir>/deployments/<name>/current.json``;
* uploads each complete inference-log file the model servers wrote since the last one, in the
  order they were written, to ``<data_dir>/deployments/<name>/inference_log/`` under the same
  relative path (``hour=.../part-....parquet``), so a log cursor means the same file here and there
  (a file once it is ``SETTLE_S`` old: one named earlier may still be on its way into place).

An object is PUT whole: a reader sees a log file complete or not at all. A file is uploaded
before the cursor passes it (``published.json`` in the deployment's folder), so a publisher
killed between the two uploads the same bytes to the same key again: nothing doubles, nothing is
lost. It stops with the supervisor (same process group); on SIGTERM it publishes once more first.

It runs in the control plane's environment with the data connection only::

    python -m airflow_mlops.serving.publish --dir DATA_DIR/deployments/NAME --to s3://bucket/prefix/deployments/NAME
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from airflow_mlops.inference_log import cursor_of, list_files, settled
from airflow_mlops.serving.state import CURRENT, DeploymentState, DeploymentStore, read_json, write_json

#: the environment variable that turns publishing on: where the deployment's folder goes
PUBLISH_TO_ENV = "MLOPS_PUBLISH_TO"
#: what was published, in the deployment's folder
PUBLISHED = "published.json"
#: the published routing's own fields
SERVED_ON = "served_on"
PUBLISHED_AT = "published_at"
INTERVAL_S = 2.0
#: a log file is published once it was named this long ago (:func:`inference_log.settled`)
SETTLE_S = 1.0

log = logging.getLogger(__name__)


def published_dir(name: str) -> Any:
    """Where deployment ``name`` is published: ``<data_dir>/deployments/<name>`` in the store."""
    from airflow_mlops import storage

    return storage.data_root() / "deployments" / name


def read_published(path: Any) -> DeploymentState | None:
    """The routing published at ``path`` (a ``current.json`` in the store); None when there is none.

    :raises ValueError: it is not a JSON object.
    """
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return DeploymentState(raw)


def publish_environ(name: str) -> dict[str, str]:
    """
    What a deployment's supervisor needs to publish deployment ``name`` (``{}`` with a local
    ``data_dir``): where to (:data:`PUBLISH_TO_ENV`), the data connection's id and the connection
    itself as ``AIRFLOW_CONN_<ID>`` (its secret masked in Airflow's logs). Called where the
    connection can be read: the deploy task.
    """
    from airflow_mlops import storage

    root = storage.data_root()
    if not storage.is_remote(root):
        return {}
    env = {PUBLISH_TO_ENV: storage.location(published_dir(name))}
    conn_id = storage.data_conn_id()
    if conn_id:
        from airflow.sdk import BaseHook
        from airflow.sdk.log import mask_secret

        connection = BaseHook.get_connection(conn_id)
        if connection.password:
            mask_secret(connection.password)
        env["AIRFLOW__MLOPS__DATA_CONN_ID"] = conn_id
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = connection.as_json()
    return env


class Publisher:
    """Publish the deployment in ``directory`` to the store location ``to`` (see the module doc).

    :param settle: seconds a log file must have been named before it is published.
    """

    def __init__(self, directory: str | os.PathLike, to: str, settle: float = SETTLE_S) -> None:
        from airflow_mlops import storage

        self.store = DeploymentStore(directory)
        self.to = storage.as_path(to)
        self.settle = settle
        self.host = socket.gethostname()
        self._routing: bytes | None = None

    @property
    def _published_path(self) -> Path:
        return self.store.dir / PUBLISHED

    def _cursor(self) -> str | None:
        try:
            return (read_json(self._published_path) or {}).get("after")
        except ValueError:
            return None  # an unreadable record: publish the log again (same keys, same bytes)

    def publish_routing(self) -> bool:
        """Upload the routing when it changed since the last upload; whether it did."""
        raw = self.store.current_path.read_bytes() if self.store.current_path.exists() else None
        if raw is None or raw == self._routing:
            return False
        state = json.loads(raw)
        state.update({SERVED_ON: self.host, PUBLISHED_AT: time.time()})
        (self.to / CURRENT).write_text(json.dumps(state, indent=1, default=str))
        self._routing = raw
        return True

    def publish_log(self) -> int:
        """Upload the inference-log files written since the last one, in order; how many."""
        from airflow_mlops import storage

        log_dir = self.store.inference_log_dir
        count = 0
        for path in settled(list_files(log_dir, after=self._cursor()), self.settle):
            key = cursor_of(log_dir, path)
            storage.upload(path, self.to / "inference_log" / key)
            write_json(self._published_path, {"after": key, "published_at": time.time()})
            count += 1
        return count

    def publish(self) -> None:
        if self.publish_routing():
            log.info("published the routing of %s to %s", self.store.name, self.to)
        shipped = self.publish_log()
        if shipped:
            log.info("published %d inference-log file(s) of %s", shipped, self.store.name)

    def run(self, stop: threading.Event, interval: float = INTERVAL_S) -> None:
        while True:
            try:
                self.publish()
            except Exception:  # the store or the network: try again next time, nothing is lost
                log.exception(
                    "publishing %s to %s failed; retrying in %.0fs", self.store.name, self.to, interval
                )
            if stop.wait(interval):
                break
        try:
            self.publish()  # what the model servers wrote last
        except Exception:
            log.exception("the last publish of %s failed", self.store.name)


def command(directory: str | os.PathLike, to: str) -> list[str]:
    """The publisher's command line."""
    return [sys.executable, "-m", "airflow_mlops.serving.publish", "--dir", str(directory), "--to", to]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the deployment's folder (holding current.json)")
    parser.add_argument(
        "--to", required=True, help="where it goes in the store (s3://bucket/.../deployments/NAME)"
    )
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s publisher[%(process)d]: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Publisher(args.dir, args.to).run(stop, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
