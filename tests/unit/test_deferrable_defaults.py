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
