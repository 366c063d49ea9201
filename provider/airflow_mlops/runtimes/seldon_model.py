"""Seldon Core (1.17.x) python model serving an MLflow pyfunc model.

This module runs INSIDE the serving runtime environment (see
``docker/serving/requirements.txt``).  It must not import airflow nor anything
else from the ``airflow_mlops`` package: the serving image only ships this
directory (copied to ``/opt/mlops/runtimes``).

Start it with the seldon microservice CLI; the interface name is
``seldon_model.MlflowModel`` and this directory must be the working directory
or on ``PYTHONPATH``.  ``seldon_serve.py`` next to this file is a launcher that
additionally controls the bind host (seldon-core 1.17.1 hard-codes 0.0.0.0)::

    python seldon_serve.py --host 127.0.0.1 seldon_model.MlflowModel \
        --http-port 9000 --grpc-port 5000 --metrics-port 6000

Environment:

``MODEL_URI``
    Any MLflow model URI; in practice a local directory holding a downloaded
    MLflow model.  Required.
``MODEL_VERSION``
    Free-form version label, reported in metadata, response tags and the
    inference log.  Default ``"unknown"``.
``MODEL_NAME``
    Name reported by ``/api/v1.0/metadata``.  Default ``"mlflow-model"``.
``INFERENCE_LOG_DIR``
    Optional.  When set, every successful prediction request is appended as one
    JSON line to ``$INFERENCE_LOG_DIR/YYYY-MM-DD-HH.jsonl`` (UTC hour).
``CLASS_NAMES``
    Optional comma separated output names, only used by seldon when the model
    returns more than one output column.

Response format: a model returning one value per row (shape ``(n,)`` or
``(n, 1)``) is answered as a flat list, e.g.
``{"data": {"names": [], "ndarray": [0.61, 0.87]}, "meta": {"tags": {...}}}``
(seldon 1.17 only reports ``names`` for 2-D outputs).  ``meta.tags`` carries
``model_version`` and the ``request_id`` written to the inference log.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

_LOG_FILE_MODE = 0o644


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _append_line(path: str, line: bytes) -> None:
    """Append one line so that concurrent writers never interleave.

    The file is opened with O_APPEND and the whole line is handed to the
    kernel in (normally) a single ``write``; an exclusive ``flock`` around it
    additionally protects against short writes and non-local filesystems.
    Gunicorn workers, threads and gRPC worker processes may all write here.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _LOG_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class MlflowModel:
    """Seldon python model wrapping ``mlflow.pyfunc.load_model(MODEL_URI)``."""

    def __init__(self, **parameters: Any) -> None:
        # Seldon passes ``--parameters`` / PREDICTIVE_UNIT_PARAMETERS as kwargs;
        # they may override the environment (model_uri, model_version, ...).
        self.model_uri = parameters.get("model_uri") or _env("MODEL_URI")
        self.model_version = str(parameters.get("model_version") or _env("MODEL_VERSION", "unknown"))
        self.model_name = str(parameters.get("model_name") or _env("MODEL_NAME", "mlflow-model"))
        self.inference_log_dir = parameters.get("inference_log_dir") or _env("INFERENCE_LOG_DIR")
        names = parameters.get("class_names") or _env("CLASS_NAMES")
        self._class_names = [n.strip() for n in names.split(",") if n.strip()] if names else None
        self.model = None
        self._input_names: list[str] | None = None
        self._local = threading.local()
        if self.inference_log_dir:
            os.makedirs(self.inference_log_dir, exist_ok=True)

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        if self.model is not None:
            return
        if not self.model_uri:
            raise RuntimeError("MODEL_URI is not set: cannot load the MLflow model")
        started = time.perf_counter()
        import mlflow.pyfunc  # heavy import (several seconds), deferred until a worker loads

        self.model = mlflow.pyfunc.load_model(self.model_uri)
        self._input_names = self._signature_input_names(self.model)
        logger.info(
            "Loaded MLflow model %s (version %s) in %.0f ms",
            self.model_uri,
            self.model_version,
            (time.perf_counter() - started) * 1000.0,
        )

    @staticmethod
    def _signature_input_names(model: Any) -> list[str] | None:
        try:
            schema = model.metadata.get_input_schema()
            if schema is not None and schema.has_input_names():
                return [str(n) for n in schema.input_names()]
        except Exception:  # no / unusual signature: feature names must come with the request
            pass
        return None

    # --------------------------------------------------------------- predict
    @staticmethod
    def _rows(X: Any) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim == 0:
            return arr.reshape(1, 1)
        if arr.ndim == 1:
            return arr.reshape(1, -1)  # a single row sent as a flat list
        if arr.ndim > 2:
            raise ValueError(f"expected 2-D tabular input, got shape {arr.shape}")
        return arr

    def _frame(self, arr: np.ndarray, features_names: Iterable[str] | None) -> pd.DataFrame:
        if arr.dtype.kind in "biuf":
            arr = arr.astype(np.float32)
        names = [str(n) for n in (features_names or [])]
        if not names and self._input_names and len(self._input_names) == arr.shape[1]:
            names = list(self._input_names)
        if names and len(names) != arr.shape[1]:
            raise ValueError(f"got {len(names)} feature names for {arr.shape[1]} columns")
        return pd.DataFrame(arr, columns=names or None)

    @staticmethod
    def _to_array(output: Any) -> np.ndarray:
        if isinstance(output, (pd.DataFrame, pd.Series)):
            out = output.to_numpy()
        elif hasattr(output, "detach") and hasattr(output, "numpy"):  # a torch tensor
            out = output.detach().cpu().numpy()
        else:
            out = np.asarray(output)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.reshape(-1)
        return out

    def predict(self, X: Any, features_names: Iterable[str] | None = None, **kwargs: Any) -> np.ndarray:
        if self.model is None:
            self.load()
        request_id = str(uuid.uuid4())
        self._local.request_id = request_id
        ts = _dt.datetime.now(_dt.UTC)
        started = time.perf_counter()
        rows = self._rows(X)
        frame = self._frame(rows, features_names)
        out = self._to_array(self.model.predict(frame))
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self.inference_log_dir:
            self._log(request_id, ts, list(frame.columns), rows, out, latency_ms)
        return out

    # ------------------------------------------------------------ inference log
    def _log(
        self,
        request_id: str,
        ts: _dt.datetime,
        features: list[Any],
        rows: np.ndarray,
        out: np.ndarray,
        latency_ms: float,
    ) -> None:
        try:
            record = {
                "request_id": request_id,
                "ts": ts.isoformat(timespec="milliseconds"),
                "model_version": self.model_version,
                "features": [str(c) for c in features],
                "rows": rows.tolist(),  # as received, before the float32 cast
                "predictions": out.tolist(),
                "latency_ms": round(latency_ms, 3),
            }
            line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
            path = os.path.join(self.inference_log_dir, ts.strftime("%Y-%m-%d-%H") + ".jsonl")
            _append_line(path, line)
        except Exception:  # logging must never fail a prediction
            logger.exception("failed to append to the inference log in %s", self.inference_log_dir)

    # ------------------------------------------------------ seldon extensions
    def class_names(self) -> list[str]:
        # Only consulted by seldon for 2-D outputs (more than one column).
        if self._class_names:
            return list(self._class_names)
        from seldon_core.user_model import SeldonNotImplementedError

        raise SeldonNotImplementedError("class_names not configured")

    def tags(self) -> dict[str, str]:
        # Seldon calls tags() once while building the response, in the thread
        # that ran predict(); pop so a later non-predict response can't reuse it.
        tags = {"model_version": self.model_version}
        request_id = self._local.__dict__.pop("request_id", None)
        if request_id:
            tags["request_id"] = request_id
        return tags

    def health_status(self) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError("model not loaded")
        return {"status": "ok", "model_version": self.model_version}

    def init_metadata(self) -> dict[str, Any]:
        # Called by seldon when the app is built, i.e. before load(): env only.
        custom = {"model_uri": str(self.model_uri or "")}
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": "mlflow",
            "custom": custom,
        }
