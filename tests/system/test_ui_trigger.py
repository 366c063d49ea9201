"""The Trigger button of Airflow's UI, pressed with the form's defaults on every example DAG.

A person opens the DAG's page, presses **Trigger**, leaves every field of the form as it is
(the logical date is now, the Params keep their defaults) and presses **Trigger** again. The
run must do real work: it gets every task of the DAG, and they succeed (the gate may skip the
deploy of a challenger that lost, and only that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import Browser, log_in
from run_checks import assert_every_task_ran

pytestmark = [pytest.mark.system, pytest.mark.timeout(3600)]

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
#: rollback last: by then the deployment has served more than one version
EXAMPLE_DAGS = ["flights_delay_pipeline", "flights_delay_retrain", "flights_delay_rollback"]


@pytest.fixture(scope="module")
def logged_in(browser, stack, scheduled_run) -> Browser:
    # after the scheduler's run: the rollback's default needs a deployment that served a version
    return log_in(browser, stack)


def test_the_example_dags_are_the_dag_files_shipped():
    shipped = sorted(p.stem for p in DAGS_DIR.glob("*.py"))
    assert shipped == sorted(EXAMPLE_DAGS)


def press_trigger_with_the_forms_defaults(b: Browser, stack, dag_id: str) -> str:
    """Open the DAG's page, press Trigger, keep the form as it is, submit; the new run's id."""
    before = {r["dag_run_id"] for r in stack.dag_runs(dag_id)}
    b.goto(f"{stack.airflow_url}/dags/{dag_id}")
    button = "document.querySelector('button[aria-label=\"Trigger Dag\"]')"
    b.wait_for(f"!!{button}", what=f"the Trigger button of {dag_id}")
    b.eval(f"{button}.click()")
    submit = (
        "[...document.querySelectorAll('[role=dialog] button')]"
        ".filter(e => e.textContent.trim() === 'Trigger').pop()"
    )
    b.wait_for(f"!!{submit} && !{submit}.disabled", what="the trigger form")
    b.screenshot(f"trigger-{dag_id}-form")
    b.eval(f"{submit}.click()")

    def new_run():
        runs = [r for r in stack.dag_runs(dag_id) if r["dag_run_id"] not in before]
        return runs[0] if runs else None

    run = None
    for _ in range(60):
        b.pump(1)
        if run := new_run():
            break
    assert run, f"pressing Trigger on {dag_id} created no run"
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui", run
    b.screenshot(f"trigger-{dag_id}-submitted")
    return run["dag_run_id"]


@pytest.mark.parametrize("dag_id", EXAMPLE_DAGS)
def test_trigger_with_the_forms_defaults_runs_every_task(logged_in, stack, dag_id):
    run_id = press_trigger_with_the_forms_defaults(logged_in, stack, dag_id)
    states = assert_every_task_ran(stack, dag_id, run_id, stack.wait_run(dag_id, run_id, timeout=1800))
    if "pick_months" in states:  # the replay clock gave the run a month of 2013 and said why
        months = stack.xcom(dag_id, run_id, "pick_months")
        assert months["start"].startswith("2013-") and "replay clock" in months["reason"], months
        assert stack.xcom(dag_id, run_id, "ingest_flights")["rows"] > 20000
    if dag_id == "flights_delay_rollback":
        rolled = stack.xcom(dag_id, run_id, "rollback")
        current = json.loads((stack.data_dir / "deployments" / "flights-delay" / "current.json").read_text())
        assert str(current["version"]) == str(rolled["version"]), (current, rolled)
