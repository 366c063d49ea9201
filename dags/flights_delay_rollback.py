"""Roll the flight-delay deployment back to the version it served before, and check it serves.

Triggered by hand (or by the MLOps page's Roll back button, with ``[mlops] ui_rollback_dag_id
= flights_delay_rollback``). ``to_version`` picks any version: one the deployment served (its
model files are kept, no registry access needed), the current one (redeployed on fresh model
servers — how to recover a version whose servers crashed), or any registered version (downloaded
from the registry). An unknown version fails the task with a clear error.
The rollback is a blue/green rollout like a deploy: the old version keeps serving until the
restored one answers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param
from airflow_mlops.operators.deploy import SeldonRollbackOperator
from airflow_mlops.sensors.seldon import SeldonDeploymentSensor
from include.flights_pipeline import DEPLOYMENT_NAME

with DAG(
    dag_id="flights_delay_rollback",
    description="Serve the previous version of the flight-delay model again",
    schedule=None,
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params={
        "to_version": Param(
            None,
            type=["null", "string"],
            description="Version to serve (default: the previous one; the current one redeploys it)",
        ),
    },
    tags=["mlops", "example"],
) as dag:
    rollback = SeldonRollbackOperator(
        task_id="rollback",
        deployment_name=DEPLOYMENT_NAME,
        to_version="{{ params.to_version or '' }}",
    )
    serving = SeldonDeploymentSensor(
        task_id="serving", deployment_name=DEPLOYMENT_NAME, poke_interval=5, timeout=300, deferrable=True
    )
    rollback >> serving
