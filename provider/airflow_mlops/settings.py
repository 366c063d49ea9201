"""Where the provider keeps files and finds runtime environments ([mlops] config section)."""

from __future__ import annotations

import os
from pathlib import Path


def _conf(key: str) -> str:
    from airflow.configuration import conf

    return conf.get("mlops", key, fallback="") or ""


def data_dir() -> Path:
    """
    This host's folder: ``[mlops] data_dir``, or ``$AIRFLOW_HOME/mlops``.

    When ``data_dir`` is an object-store URL (``s3://...``, :func:`airflow_mlops.storage.data_root`:
    where tasks hand each other files), this is ``[mlops] local_data_dir`` instead (default
    ``$AIRFLOW_HOME/mlops``): the files that belong to one host (the processes of a local
    deployment, a drift worker's socket) and the outputs not yet moved to the store.
    """
    from airflow_mlops.storage import is_url

    configured = _conf("data_dir")
    if configured and is_url(configured):
        configured = _conf("local_data_dir")
    if configured.startswith("file://"):  # file:///srv/mlops is the folder /srv/mlops
        configured = configured.removeprefix("file://")
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
