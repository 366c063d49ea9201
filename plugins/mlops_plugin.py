"""The MLOps UI plugin for Airflow's plugins folder, for an Airflow that did not pip install the provider.

Airflow loads plugins from two places: the ``airflow.plugins`` entry point of installed packages
(``pip install airflow-provider-mlops`` registers ``MlopsPlugin`` that way) and the files of
``[core] plugins_folder``. Point the plugins folder here (``AIRFLOW__CORE__PLUGINS_FOLDER``) and
the MLOps page loads from this checkout's ``provider/`` without an install.

When the provider *is* installed, its entry point already registers the plugin and this file
registers nothing: Airflow would otherwise list the second copy as a plugin import error
("already registered").
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path


def _installed() -> bool:
    return any(ep.value.startswith("airflow_mlops.") for ep in entry_points(group="airflow.plugins"))


if not _installed():
    # this checkout's provider sources (plugins/ and provider/ are siblings), unless importable
    try:
        import airflow_mlops  # noqa: F401
    except ModuleNotFoundError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provider"))
    from airflow_mlops.plugins.mlops_view import MlopsPlugin

    __all__ = ["MlopsPlugin"]
