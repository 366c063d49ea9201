"""Lazy imports of optional heavy libraries, with an error that names the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from airflow_mlops.exceptions import MissingPackageError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingPackageError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.split(".")[0] == err.name.split(".")[0]:
            raise MissingPackageError(module.split(".")[0], extra) from err
        raise
