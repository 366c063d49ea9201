"""``gloo_launch.py`` (what each pod of an indexed Job runs) with real Horovod, two ranks on 127.0.0.1.

Needs the training runtime (``.runtimes/training``, built by scripts/runtime_env.sh); skipped without it.
Each process stands in for one pod: ``JOB_COMPLETION_INDEX`` as Kubernetes sets it, distinct
host names, rank 0 serving the rendezvous on a fixed port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from airflow_mlops.kubernetes.training import LAUNCHER_SOURCE

REPO = Path(__file__).resolve().parents[3]
PYTHON = REPO / ".runtimes" / "training" / "bin" / "python"
ALLREDUCE = """\
import horovod.torch as hvd, torch
hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum).item()
print(f"rank={hvd.rank()} size={hvd.size()} cross_size={hvd.cross_size()} sum={total}", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not PYTHON.exists(), reason="training runtime not built (.runtimes/training)")
def test_two_indexed_pods_rendezvous_through_rank_0_and_allreduce(tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "AIRFLOW"))}
    base.update(
        HVD_SIZE="2",
        HVD_HOST_PREFIX="hvd-train-0123456789-",
        HVD_RENDEZVOUS_ADDR="127.0.0.1",
        HVD_RENDEZVOUS_PORT=str(_free_port()),
        HVD_GLOO_IFACE="lo",
        HVD_RENDEZVOUS_TIMEOUT="60",
    )
    # rank 1 first: pods start in any order, it must wait for rank 0's rendezvous server
    procs = [
        subprocess.Popen(
            [PYTHON, LAUNCHER_SOURCE, "--", PYTHON, script],
            env={**base, "JOB_COMPLETION_INDEX": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in (1, 0)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            outputs.append(out)
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "rank=1 size=2 cross_size=2 sum=3.0" in outputs[0]
    assert "rank=0 size=2 cross_size=2 sum=3.0" in outputs[1]
