"""What the system tests check of a finished DAG run: it did real work."""

from __future__ import annotations

from typing import Any


def gate_skipped(stack: Any, dag_id: str, run_id: str, states: dict[str, str | None]) -> set[str]:
    """The tasks a gate that did not promote may skip (the deploy and the check after it)."""
    if "gate" not in states or stack.xcom(dag_id, run_id, "gate", key="comparison")["promote"]:
        return set()
    return {"deploy", "detect_drift"} & set(states)


def assert_every_task_ran(stack: Any, dag_id: str, run_id: str, state: str) -> dict[str, str | None]:
    """
    The run succeeded with a task instance for every task of the DAG, each a success: a green
    run with no task, or with tasks left unrun, fails. Only a gate that kept the champion may
    skip the deploy (and what follows it).
    """
    states = stack.task_states(dag_id, run_id)
    tasks = {t["task_id"] for t in stack.api("GET", f"/dags/{dag_id}/tasks")["tasks"]}
    assert tasks and set(states) == tasks, f"the run got {sorted(states)}, the DAG has {sorted(tasks)}"
    may_skip = gate_skipped(stack, dag_id, run_id, states)
    not_run = {t: s for t, s in states.items() if s != "success" and not (s == "skipped" and t in may_skip)}
    assert state == "success" and not_run == {}, (dag_id, run_id, state, not_run)
    return states
