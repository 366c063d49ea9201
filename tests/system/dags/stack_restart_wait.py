"""Test DAG: one deferred sensor, for the triggerer-restart system test (test_stack_restart.py).

Copied next to the example DAGs by the system tests. ``WaitSensor`` defers to the triggerer
(``TimeDeltaTrigger``, which ends the task itself): the task can only succeed if a triggerer
runs its trigger, so it is still pending when the test kills the triggerer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import DAG

with DAG(
    dag_id="stack_restart_wait",
    schedule=None,
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["test"],
):
    WaitSensor(task_id="wait", time_to_wait=timedelta(seconds=45), deferrable=True)
