"""Every operator and sensor that can defer takes its default from ``[operators] default_deferrable``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLASSES = {
    "airflow_mlops.operators.train": ["HorovodTrainOperator"],
    "airflow_mlops.operators.drift": ["DriftDetectOperator"],
    "airflow_mlops.operators.deploy": ["SeldonDeployOperator"],
    "airflow_mlops.sensors.dataset": ["DatasetVersionSensor"],
    "airflow_mlops.sensors.feast": ["FeastFeatureFreshnessSensor"],
    "airflow_mlops.sensors.mlflow": ["MlflowModelVersionSensor"],
    "airflow_mlops.sensors.seldon": ["SeldonDeploymentSensor"],
}

PROBE = """
import importlib, inspect, json, sys
classes = json.loads(sys.argv[1])
out = {}
for module, names in classes.items():
    for name in names:
        cls = getattr(importlib.import_module(module), name)
        out[name] = inspect.signature(cls.__init__).parameters["deferrable"].default
print(json.dumps(out))
"""


@pytest.mark.parametrize("setting", ["True", "False"])
def test_deferrable_defaults_follow_the_airflow_setting(setting, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=setting)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(CLASSES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    defaults = json.loads(done.stdout.strip().splitlines()[-1])
    assert defaults == {name: setting == "True" for names in CLASSES.values() for name in names}


def test_serving_queue_routes_the_seldon_tasks_unless_a_queue_is_named(monkeypatch):
    """``[mlops] serving_queue``: deploy, promote and rollback go where the deployment runs."""
    from datetime import datetime

    from airflow.sdk import DAG
    from airflow_mlops.operators.deploy import SeldonDeployOperator, SeldonRollbackOperator

    monkeypatch.setenv("AIRFLOW__MLOPS__SERVING_QUEUE", "serving")
    with DAG("serving_queue", start_date=datetime(2024, 1, 1), schedule=None):
        routed = SeldonDeployOperator(task_id="routed", deployment_name="x", model_name="m", version="1")
        named = SeldonRollbackOperator(task_id="named", deployment_name="x", queue="mine")
    with DAG(
        "queue_in_defaults", start_date=datetime(2024, 1, 1), schedule=None, default_args={"queue": "dq"}
    ):
        defaulted = SeldonRollbackOperator(task_id="defaulted", deployment_name="x")
    assert (routed.queue, named.queue, defaulted.queue) == ("serving", "mine", "dq")
    monkeypatch.delenv("AIRFLOW__MLOPS__SERVING_QUEUE")
    with DAG("no_serving_queue", start_date=datetime(2024, 1, 1), schedule=None):
        plain = SeldonDeployOperator(task_id="plain", deployment_name="x", model_name="m", version="1")
    assert plain.queue == "default"
