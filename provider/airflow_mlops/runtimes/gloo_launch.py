"""Start one Horovod rank of an indexed Kubernetes Job with Gloo, without ``horovodrun`` or SSH.

An entry script of the training image (``/opt/mlops/runtimes/gloo_launch.py``, like
``horovod_entry.py``), run by its Python (it needs ``horovod``; the provider never imports it).
Usage::

    python /opt/mlops/runtimes/gloo_launch.py -- python /opt/mlops/runtimes/horovod_entry.py config.json

Environment (rendered by ``airflow_mlops.kubernetes.training.render_indexed_job``):

* ``JOB_COMPLETION_INDEX`` (set by Kubernetes) is the rank; ``HVD_SIZE`` the number of ranks;
* ``HVD_HOST_PREFIX``: pod ``i`` is host ``<prefix><i>``, one slot per pod;
* ``HVD_RENDEZVOUS_ADDR``/``HVD_RENDEZVOUS_PORT``: where rank 0 serves the Gloo rendezvous;
* ``HVD_GLOO_IFACE``: the network interface Gloo uses (``eth0`` in a pod).

Rank 0 starts Horovod's HTTP rendezvous server on the fixed port (``horovodrun`` picks a
random one, which other pods could not know); every rank then runs the command with the
``HOROVOD_*`` variables ``horovodrun --gloo`` would have set, and exits with its status.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time


def _wait_for(host: str, port: int, timeout: float) -> None:
    """Block until rank 0's rendezvous server accepts connections (pods start in any order)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise SystemExit(  # noqa: B904 - the message carries the cause
                    f"rendezvous server {host}:{port} not reachable after {timeout:.0f} s: {err}"
                )
            time.sleep(1)


def _start_rendezvous(plan, port: int):
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    server = RendezvousHTTPServer(("", port), RendezvousHandler, 0)
    server.init(plan)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not command:
        raise SystemExit("usage: gloo_launch.py -- COMMAND...")
    rank = int(os.environ["JOB_COMPLETION_INDEX"])
    size = int(os.environ["HVD_SIZE"])
    prefix = os.environ["HVD_HOST_PREFIX"]
    addr = os.environ["HVD_RENDEZVOUS_ADDR"]
    port = int(os.environ["HVD_RENDEZVOUS_PORT"])
    plan = get_host_assignments(parse_hosts(",".join(f"{prefix}{i}:1" for i in range(size))), size)
    slot = plan[rank]

    server = _start_rendezvous(plan, port) if rank == 0 else None
    if server is None:
        _wait_for(addr, port, float(os.environ.get("HVD_RENDEZVOUS_TIMEOUT", "300")))
    env = dict(
        os.environ,
        HOROVOD_HOSTNAME=slot.hostname,
        HOROVOD_RANK=str(slot.rank),
        HOROVOD_SIZE=str(slot.size),
        HOROVOD_LOCAL_RANK=str(slot.local_rank),
        HOROVOD_LOCAL_SIZE=str(slot.local_size),
        HOROVOD_CROSS_RANK=str(slot.cross_rank),
        HOROVOD_CROSS_SIZE=str(slot.cross_size),
        HOROVOD_GLOO_RENDEZVOUS_ADDR=addr,
        HOROVOD_GLOO_RENDEZVOUS_PORT=str(port),
        HOROVOD_CONTROLLER="gloo",
        HOROVOD_CPU_OPERATIONS="gloo",
        HOROVOD_GLOO_IFACE=os.environ.get("HVD_GLOO_IFACE", "eth0"),
    )
    try:
        return subprocess.call(command, env=env)
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
