"""A run whose middle task runs while the metadata DB restarts (test_metadata_db_faults.py).

``hold`` writes ``started`` in the folder the test names (``conf.folder``) and waits until the
test writes ``release`` there: the test restarts PostgreSQL in between.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, task


@task
def before() -> str:
    return "before"


@task
def hold(folder: str) -> str:
    import time
    from pathlib import Path

    Path(folder, "started").touch()
    while not Path(folder, "release").exists():
        time.sleep(0.5)
    return "held"


@task
def after(value: str) -> str:
    return f"after {value}"


with DAG(
    dag_id="metadata_db_restart",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    params={"folder": ""},
    tags=["test"],
):
    before() >> after(hold("{{ params.folder }}"))
