"""Library chatter routed into the task log (``airflow_mlops.library_logs``, ``quiet_mlflow``,
``quiet_great_expectations``): in-process, with the real libraries where they are involved.

Airflow logs what a task writes to stderr at ERROR; the routed output must write nothing there,
keep warnings and errors at their level and put routine notices at DEBUG (kept, not dropped).
The task logs of the operators themselves are tested in tests/unit/registry/test_task_logs.py and
tests/unit/operators/test_validate_operator.py.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

# imported first: Airflow configures logging when it is imported, which would drop caplog's handler
from airflow_mlops.hooks.mlflow import quiet_mlflow


@pytest.fixture
def restore_logger():
    """Put the loggers a test routes back as they were."""
    saved = {}

    def save(name: str) -> logging.Logger:
        logger = logging.getLogger(name)
        saved.setdefault(name, (list(logger.handlers), logger.propagate, logger.level))
        return logger

    yield save
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


def _records(caplog, name_prefix: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith(name_prefix)]


def test_a_routed_logger_writes_nothing_to_stderr_and_keeps_only_real_warnings(caplog, capfd, restore_logger):
    from airflow_mlops.library_logs import route_logger

    library = restore_logger("chatty_lib")
    library.addHandler(logging.StreamHandler(sys.stderr))  # what MLflow does to its logger
    library.propagate = False
    library.setLevel(logging.INFO)
    caplog.set_level(logging.DEBUG)

    route_logger("chatty_lib", routine=[r"expected: .* instead"])
    route_logger("chatty_lib", routine=[r"expected: .* instead"])  # idempotent
    child = logging.getLogger("chatty_lib.sub")
    child.info("Created version '1' of model 'm'")
    child.warning("expected: registering models:/m-1 instead")
    child.warning("the model's dependencies differ")
    child.error("could not reach the server")

    assert _records(caplog, "chatty_lib") == [
        ("DEBUG", "Created version '1' of model 'm'"),
        ("DEBUG", "expected: registering models:/m-1 instead"),
        ("WARNING", "the model's dependencies differ"),
        ("ERROR", "could not reach the server"),
    ]
    assert capfd.readouterr().err == ""
    assert len(library.handlers) == 1


def test_log_stream_logs_whole_lines(caplog):
    from airflow_mlops.library_logs import LogStream

    caplog.set_level(logging.DEBUG)
    stream = LogStream("printer")
    print("Successfully registered model 'm'.", file=stream)
    stream.write("Downloading artifacts: 50%\rDownloading artifacts: 100%")
    stream.write("\nhalf a ")
    assert _records(caplog, "printer") == [
        ("DEBUG", "Successfully registered model 'm'."),
        ("DEBUG", "Downloading artifacts: 50%\rDownloading artifacts: 100%"),
    ]
    stream.flush()
    assert _records(caplog, "printer")[-1] == ("DEBUG", "half a ")


def test_quiet_mlflow_routes_what_mlflow_prints_and_logs(caplog, capfd, monkeypatch, restore_logger):
    import mlflow  # noqa: F401 - configures its loggers, as in a task
    from mlflow.utils import logging_utils

    for name in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.setenv(name, "unset by the test")
        monkeypatch.delenv(name)
    monkeypatch.setattr(logging_utils, "MLFLOW_LOGGING_STREAM", logging_utils.MLFLOW_LOGGING_STREAM)
    restore_logger("mlflow")
    caplog.set_level(logging.DEBUG)

    quiet_mlflow()
    quiet_mlflow()  # idempotent
    logging_utils.eprint("Successfully registered model 'flights_delay'.")
    logging.getLogger("mlflow.tracking._model_registry.fluent").warning(
        "Run with id 1f has no artifacts at artifact path 'model', "
        "registering model based on models:/m-2 instead"
    )
    logging.getLogger("mlflow.store.model_registry.abstract_store").info("Waiting up to 300 seconds")
    logging.getLogger("mlflow.models.utils").warning("Found extra inputs in the model input")

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    assert capfd.readouterr().err == ""  # (stdout has this test process's own log handler)
    assert _records(caplog, "mlflow") == [
        ("DEBUG", "Successfully registered model 'flights_delay'."),
        (
            "DEBUG",
            "Run with id 1f has no artifacts at artifact path 'model', registering model based on "
            "models:/m-2 instead",
        ),
        ("DEBUG", "Waiting up to 300 seconds"),
        ("WARNING", "Found extra inputs in the model input"),
    ]


def test_a_users_own_mlflow_settings_are_kept(monkeypatch, restore_logger):
    from mlflow.utils import logging_utils

    monkeypatch.setattr(logging_utils, "MLFLOW_LOGGING_STREAM", logging_utils.MLFLOW_LOGGING_STREAM)
    restore_logger("mlflow")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    quiet_mlflow()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "false"
