"""A **real S3 API server** for tests: ``moto_server`` (moto's standalone server, PyPI ``moto[server]``)
on a free port of 127.0.0.1.

moto keeps its buckets in memory and speaks the S3 protocol over HTTP: s3fs, boto3, Airflow's
``ObjectStoragePath`` and MLflow talk to it as to any S3-compatible endpoint. It is not MinIO
or AWS (no MinIO build can be had here): what it proves is that the code goes through the S3
API and an Airflow connection, not a shared disk.

Import it after putting this folder on ``sys.path`` (``tests/support``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow_server import _die_with_parent, free_port

#: the project venv's ``moto_server`` script, next to the interpreter running the tests
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
#: moto accepts any credentials; these name themselves for what they are
ACCESS_KEY = "mlops-test-access-key"
SECRET_KEY = "mlops-test-secret-key"


class S3Server:
    """``moto_server`` on ``url``; :meth:`create_bucket` makes a bucket through the S3 API."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None

    def start(self) -> S3Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"moto_server did not answer on {self.url}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=30)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, listed through the S3 API."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def connection_uri(self) -> str:
        """An Airflow ``aws`` connection (JSON, for ``AIRFLOW_CONN_<ID>``) for this endpoint."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": SECRET_KEY,
                "extra": {"endpoint_url": self.url, "region_name": "us-east-1"},
            }
        )
