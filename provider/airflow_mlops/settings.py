"""Where the provider keeps files and finds runtime environments ([mlops] config section)."""

from __future__ import annotations

import os
from pathlib import Path


def _conf(key: str) -> str:
    from airflow.configuration import conf

    return conf.get("mlops", key, fallback="") or ""


def data_dir() -> Path:
    """Root of snapshots, reports and local deployments: ``[mlops] data_dir`` or ``$AIRFLOW_HOME/mlops``."""
    configured = _conf("data_dir")
    if configured:
        # absolute: tasks and runtimes run in other working directories
        return Path(configured).expanduser().resolve()
    airflow_home = os.environ.get("AIRFLOW_HOME", str(Path.home() / "airflow"))
    return Path(airflow_home).expanduser() / "mlops"


def runtimes_dir() -> Path:
    """Folder holding one virtual environment per runtime (``training``, ``serving``, ``drift``)."""
    configured = _conf("runtimes_dir")
    if configured:
        # absolute: tasks and runtimes run in other working directories
        return Path(configured).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(cache) / "airflow-provider-mlops" / "runtimes"


def runtime_script(name: str) -> Path:
    """Path of an entry script under ``airflow_mlops/runtimes`` (run inside a runtime env)."""
    return Path(__file__).parent / "runtimes" / f"{name}.py"
