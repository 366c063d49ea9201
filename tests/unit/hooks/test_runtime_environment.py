"""What a runtime process sees of the Airflow worker's environment: the drift runtime, for real.

``DriftDetectOperator`` runs ``runtimes/drift_detect.py`` in the real drift runtime; its
``bin/python`` is reached through a stand-in environment folder whose ``bin/python`` writes the
environment it was started with to a file, then runs the real interpreter. The worker has an
Airflow connection and the Fernet key in its environment; the drift runtime must see neither,
and still produce its report. (The training processes: tests/integration/test_training_horovod.py;
the allow-list itself: tests/unit/hooks/test_runtime_hook.py.)
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
DRIFT_PYTHON = RUNTIMES / "drift" / "bin" / "python"

pytestmark = pytest.mark.skipif(not DRIFT_PYTHON.exists(), reason="the drift runtime is not built")

WORKER_SECRETS = {
    "AIRFLOW_CONN_SECRET_X": "postgresql://admin:hunter2@db.example.com:5432/prod",
    "AIRFLOW__CORE__FERNET_KEY": "cNNnrX2AbW3x8xsVD5rWvNpMmRsUsyOyoRpODsuNJ6o=",
}


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "env_check", "manual__2026-01-01", "drift", -1, 1

    def __init__(self) -> None:
        self.xcoms: dict = {}

    def xcom_push(self, key: str, value) -> None:
        self.xcoms[key] = value


@pytest.fixture
def observed_drift_runtime(tmp_path) -> tuple[Path, Path]:
    """``(runtimes_dir, dump)``: a drift runtime whose python records its environment in ``dump``."""
    root = tmp_path / "runtimes"
    bin_dir = root / "drift" / "bin"
    bin_dir.mkdir(parents=True)
    dump = tmp_path / "drift-env.bin"
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nenv -0 > "{dump}"\nexec "{DRIFT_PYTHON}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return root, dump


def test_the_drift_runtime_sees_no_airflow_secrets(observed_drift_runtime, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from airflow_mlops.operators.drift import DriftDetectOperator

    for name, value in WORKER_SECRETS.items():
        monkeypatch.setenv(name, value)
    runtimes_dir, dump = observed_drift_runtime
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(0, 1, 500)}).to_parquet(tmp_path / "reference.parquet")
    pd.DataFrame({"x": rng.normal(3, 1, 500)}).to_parquet(tmp_path / "current.parquet")
    op = DriftDetectOperator(
        task_id="drift",
        reference_path=str(tmp_path / "reference.parquet"),
        current_path=str(tmp_path / "current.parquet"),
        numeric_features=["x"],
        report_dir=str(tmp_path / "report"),
        runtimes_dir=str(runtimes_dir),
    )

    summary = op.execute({"ti": FakeTI(), "outlet_events": {}})

    assert summary["is_drift"] is True and summary["drifted_features"] == ["x"]  # it really ran
    env = dict(item.split("=", 1) for item in dump.read_bytes().decode().split("\0") if "=" in item)
    assert not set(WORKER_SECRETS) & set(env), sorted(env)
    assert not [k for k in env if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))], sorted(env)
    assert not [k for k, v in env.items() if any(secret in v for secret in WORKER_SECRETS.values())]
    assert env["PATH"].split(os.pathsep)[0] == str(runtimes_dir / "drift" / "bin")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["is_drift"] is True
