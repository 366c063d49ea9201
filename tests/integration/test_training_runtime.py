"""Integration test of the training runtime venv: horovod + torch over Gloo on CPU.

Needs the venv built by ``scripts/runtime_env.sh training .runtimes/training``
(override the parent dir with ``MLOPS_RUNTIMES_DIR``); skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO_ROOT / ".runtimes").resolve()
TRAINING_VENV = RUNTIMES_DIR / "training"
HOROVODRUN = TRAINING_VENV / "bin" / "horovodrun"

WORKER = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import horovod.torch as hvd
    import torch

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    result = hvd.allreduce(torch.tensor([rank + 1.0]), name="rank_plus_one")  # default op: Average
    out = Path(sys.argv[1]) / f"rank{rank}.json"
    out.write_text(json.dumps({"rank": rank, "size": size, "allreduce": result.tolist(),
                               "python": sys.executable}))
    hvd.shutdown()
    """
)


@pytest.mark.skipif(
    not HOROVODRUN.exists(),
    reason=f"training runtime not found at {TRAINING_VENV} (no bin/horovodrun); create it with "
    f"`scripts/runtime_env.sh training {TRAINING_VENV}` or set MLOPS_RUNTIMES_DIR",
)
def test_horovodrun_gloo_allreduce_two_ranks(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    venv_bin = TRAINING_VENV / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Workers are started as plain `python`: the venv's bin must come first on PATH.
    env["PATH"] = os.pathsep.join([str(venv_bin), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(TRAINING_VENV)

    cmd = [str(HOROVODRUN), "-np", "2", "--gloo", "-H", "localhost:2", "python", str(script), str(out_dir)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"horovodrun timed out after 300 s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    details = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, details

    results = {}
    for rank in (0, 1):
        path = out_dir / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no result\n{details}"
        results[rank] = json.loads(path.read_text())

    for rank, res in results.items():
        assert res["rank"] == rank
        assert res["size"] == 2
        assert res["allreduce"] == pytest.approx([1.5])
        assert Path(res["python"]).parent.resolve() == venv_bin.resolve(), res["python"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["rank0.json", "rank1.json"]
