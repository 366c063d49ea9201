"""Errors raised by the provider. Each names the problem and what to do about it."""

from __future__ import annotations


class MlopsError(Exception):
    """Base class of the provider's errors."""


class MissingPackageError(MlopsError, ImportError):
    """A library the operator needs is not installed in Airflow's environment."""

    def __init__(self, package: str, extra: str):
        self.package = package
        self.extra = extra
        super().__init__(
            f"The '{package}' package is not installed. "
            f"Install it with: pip install 'airflow-provider-mlops[{extra}]'"
        )


class MissingRuntimeError(MlopsError):
    """An isolated runtime environment (training, serving, drift) has not been created."""

    def __init__(self, name: str, path: str):
        self.name = name
        super().__init__(
            f"The '{name}' runtime environment was not found at {path}. "
            f"Create it from a checkout of airflow-provider-mlops with `make runtimes` "
            f"(or `scripts/runtime_env.sh {name} <runtimes_dir>/{name}`), and point [mlops] "
            "runtimes_dir (AIRFLOW__MLOPS__RUNTIMES_DIR) at the folder that holds it."
        )


class DataValidationError(MlopsError):
    """A data set failed its expectation suite."""


class DeploymentError(MlopsError):
    """A new deployment did not become healthy; the previous one keeps serving."""
