"""One MLflow run tree per Airflow DAG run: a parent run, and one nested run per task instance.

Shared by the Airflow side (:class:`airflow_mlops.hooks.mlflow.MlflowHook`) and the training
runtime (``horovod_entry.py``, rank 0, where it is imported as a sibling module): it needs an
``MlflowClient`` and nothing of Airflow. ``mlflow`` itself is imported inside the functions.

The tree, in the experiment the tasks log to::

    flights_delay_pipeline/scheduled__2013-06-01T00:00:00+00:00    parent: airflow.parent_key
    ├── train-0-scheduled__2013-06-01T00:00:00+00:00               mlflow.parentRunId = parent
    │   └── train-0-scheduled__2013-06-01T00:00:00+00:00           an earlier try, KILLED, superseded
    ├── train-1-scheduled__2013-06-01T00:00:00+00:00
    ├── select_best-scheduled__2013-06-01T00:00:00+00:00
    ├── register-scheduled__2013-06-01T00:00:00+00:00
    └── gate-flights_delay-v3-vs-v2

**Exactly one parent** per (experiment, DAG run), however many tasks ask at once, on however many
workers: :func:`find_or_create_parent`. MLflow has no unique constraint on runs, and "create, search
again, keep the oldest" needs an order every creator agrees on, which runs lack (``start_time`` is
the creating client's clock: with clocks apart and a creator paused between its search and its
create, two creators can each see themselves as the oldest). The one uniqueness MLflow does enforce
is the experiment name (a unique index in the tracking database; ``mlflow.set_experiment`` relies on
it too). So the parent is elected with a **lock experiment**: each creator makes a candidate run,
then tries to create the experiment named after the key (:func:`lock_name`) with its candidate's id
as a tag, in one transaction. The database lets exactly one create succeed; every other creator gets
``RESOURCE_ALREADY_EXISTS``, reads the winner's id from the lock's tag and deletes its own candidate.
The winner tags its run ``airflow.parent_key`` and deletes the lock (a deleted experiment keeps its
name, so the lock still answers, but it is out of the UI's experiment list). A creator that crashes
anywhere leaves at most an unelected candidate (no ``airflow.parent_key`` tag, never returned).
Needs a database-backed tracking store (any ``mlflow server`` on SQLite, PostgreSQL, MySQL); a
``file:`` store checks experiment names without a lock.

**One live run per task instance**: a task's run is tagged with the task instance
(:class:`TaskRef`: ``airflow.dag_id``, ``airflow.run_id``, ``airflow.task_id``, ``airflow.map_index``,
``airflow.try_number``). When a later try starts its run, :func:`supersede_earlier_tries` turns the
runs of earlier tries of the same task instance into its children: ``mlflow.parentRunId`` and
``airflow.superseded_by`` point at the new run, and one still ``RUNNING`` (its process was killed:
nothing closed it) is set to ``KILLED``. They are never deleted: a training try's run holds the
checkpoints the next try resumes from, a failed try's logs say why it failed, and a model version
may point at the run of a try that finished before the task was cleared.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

PARENT_KEY_TAG = "airflow.parent_key"
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
SUPERSEDED_BY_TAG = "airflow.superseded_by"
KIND_TAG = "mlops.kind"
#: the lock experiment's tag naming the elected parent run
LOCK_WINNER_TAG = "airflow_mlops.parent_run_id"
LOCK_PREFIX = "airflow-mlops-lock/parent"

log = logging.getLogger(__name__)

__all__ = [
    "PARENT_KEY_TAG",
    "PARENT_RUN_ID_TAG",
    "SUPERSEDED_BY_TAG",
    "TaskRef",
    "filter_value",
    "find_or_create_parent",
    "find_parent",
    "lock_name",
    "parent_key",
    "supersede_earlier_tries",
    "task_run_name",
]


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow search filter (``name=...``): model names may hold a ``'``.

    MLflow's filter grammar has no escapes: a value is quoted with the quote it does not contain.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"MLflow cannot search for {value!r}: it contains both kinds of quotes.")


def parent_key(dag_id: str, run_id: str) -> str:
    """The key (and run name) of a DAG run's parent run: ``<dag_id>/<run_id>``."""
    return f"{dag_id}/{run_id}"


def lock_name(experiment_id: str, key: str) -> str:
    """Name of the experiment that elects the parent of ``key`` in ``experiment_id``."""
    return f"{LOCK_PREFIX}/{experiment_id}/{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def task_run_name(task_id: str, run_id: str, map_index: int = -1) -> str:
    """A task's run name: ``<task_id>-<run_id>``, ``<task_id>-<map_index>-<run_id>`` when mapped."""
    suffix = f"-{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{task_id}{suffix}-{run_id}"[:250]


@dataclass(frozen=True)
class TaskRef:
    """The task instance a run belongs to; the try number is not part of its identity."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def from_ti(cls, ti: Any) -> TaskRef:
        index = getattr(ti, "map_index", -1)
        return cls(
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            -1 if index is None else int(index),
            int(getattr(ti, "try_number", 1) or 1),
        )

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> TaskRef | None:
        """The task of a run's (or a job config's) ``airflow.*`` tags; None when they are missing."""
        try:
            return cls(
                tags["airflow.dag_id"],
                tags["airflow.run_id"],
                tags["airflow.task_id"],
                int(tags.get("airflow.map_index", -1)),
                int(tags.get("airflow.try_number", 1)),
            )
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        return {
            "airflow.dag_id": self.dag_id,
            "airflow.run_id": self.run_id,
            "airflow.task_id": self.task_id,
            "airflow.map_index": str(self.map_index),
            "airflow.try_number": str(self.try_number),
        }

    def filter(self) -> str:
        """A search filter matching the runs of every try of this task instance."""
        return " and ".join(
            f"tags.`{key}` = {filter_value(value)}"
            for key, value in self.tags().items()
            if key != "airflow.try_number"
        )

    @property
    def parent_key(self) -> str:
        return parent_key(self.dag_id, self.run_id)


# -- the parent -----------------------------------------------------------------------------------


def _error_code(err: Exception) -> str | None:
    return getattr(err, "error_code", None)


def find_parent(client: Any, experiment_id: str, key: str) -> str | None:
    """The elected parent run of ``key`` in ``experiment_id``, or None when there is none yet.

    Reads the lock experiment first (it names the winner from the moment it exists), then, for a
    lock purged by ``mlflow gc``, the runs tagged ``airflow.parent_key``. A parent someone deleted
    is restored: tasks of the DAG run still log under it.
    """
    from mlflow.entities import ViewType

    winner = _lock_winner(client, experiment_id, key)
    if winner is None:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_KEY_TAG}` = {filter_value(key)}",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time ASC"],
            max_results=5,
        )
        if not runs:
            return None
        winner = runs[0].info.run_id
    if client.get_run(winner).info.lifecycle_stage == "deleted":
        client.restore_run(winner)
        log.warning("Restored the deleted parent run %s of %s: its DAG run logs under it.", winner, key)
    return winner


def find_or_create_parent(
    client: Any, experiment_id: str, dag_id: str, run_id: str, tags: dict[str, str] | None = None
) -> str:
    """
    The parent run of the DAG run ``dag_id``/``run_id`` in ``experiment_id``, created on first use.

    Safe under any number of concurrent callers on any number of hosts: they all get the same run
    id, and only that run is ever tagged ``airflow.parent_key`` (see the module's docstring).

    :param tags: more tags for the parent when this call creates it.
    :return: the parent's run id.
    """
    key = parent_key(dag_id, run_id)
    found = find_parent(client, experiment_id, key)
    if found is not None:
        return found
    candidate = client.create_run(
        experiment_id,
        run_name=key,
        tags={
            **(tags or {}),
            "airflow.dag_id": dag_id,
            "airflow.run_id": run_id,
            KIND_TAG: "dag_run",
            "mlflow.note.content": (
                f"Airflow DAG run `{run_id}` of `{dag_id}`: one nested run per task that logs to MLflow."
            ),
        },
    )
    return elect(client, experiment_id, key, candidate.info.run_id)


def elect(client: Any, experiment_id: str, key: str, candidate: str) -> str:
    """
    Make ``candidate`` the parent of ``key`` unless another run already is: the winner's run id.

    The lock experiment is created with the candidate's id as a tag, in one transaction; the
    database lets one creation succeed. A loser deletes its candidate. When the create answers
    "already exists" and the lock names ``candidate`` (our own request went through, then an HTTP
    retry repeated it), the candidate has won.
    """
    from mlflow.exceptions import MlflowException

    lock = lock_name(experiment_id, key)
    try:
        lock_id = client.create_experiment(lock, tags={LOCK_WINNER_TAG: candidate, PARENT_KEY_TAG: key})
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
            _discard(client, candidate)
            raise
        winner = _lock_winner(client, experiment_id, key)
        if winner is None:  # purged (``mlflow gc``) between our create and our read
            return _after_purge(client, experiment_id, key, candidate)
        if winner != candidate:
            _discard(client, candidate)
        return winner
    _settle(client, lock_id, key, candidate)
    return candidate


def _after_purge(client: Any, experiment_id: str, key: str, candidate: str) -> str:
    """The lock was deleted for good right after it refused us: the run tagged with the key (the
    lock is only deleted once its winner has the tag) decides, else ``candidate`` stands again."""
    found = find_parent(client, experiment_id, key)
    if found is not None:
        _discard(client, candidate)
        return found
    return elect(client, experiment_id, key, candidate)


def _lock_winner(client: Any, experiment_id: str, key: str) -> str | None:
    """The run the lock experiment names (and the lock settled, see :func:`_settle`), or None."""
    lock = client.get_experiment_by_name(lock_name(experiment_id, key))
    if lock is None:
        return None
    winner = (lock.tags or {}).get(LOCK_WINNER_TAG)
    if not winner:
        raise RuntimeError(
            f"MLflow experiment {lock.name!r} exists without the tag {LOCK_WINNER_TAG!r}: it was not made by "
            "airflow-mlops. Delete it for good (`mlflow gc --experiment-ids "
            f"{lock.experiment_id}`) so that the DAG run's parent run can be elected."
        )
    if lock.lifecycle_stage == "active":  # its winner has not settled it yet (or stopped): help
        _settle(client, lock.experiment_id, key, winner)
    return winner


def _settle(client: Any, lock_id: str, key: str, winner: str) -> None:
    """Tag the winner with the key, *then* delete the lock (so a deleted lock implies a tagged
    parent: the tag finds the parent once ``mlflow gc`` has purged the lock). Idempotent: the
    winner and any caller that reads the lock before it is deleted may both do it."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(winner, PARENT_KEY_TAG, key)
    except MlflowException:
        # two callers settling at once: MLflow's SQL store inserts a tag it found absent, so the
        # second insert of the same (run, key) fails (UNIQUE constraint) although the tag is set
        if client.get_run(winner).data.tags.get(PARENT_KEY_TAG) != key:
            raise
    try:
        client.delete_experiment(lock_id)
    except Exception as err:  # noqa: BLE001 - a lock left in the experiment list is only untidy
        if _error_code(err) != "RESOURCE_DOES_NOT_EXIST":  # not: another caller deleted it first
            log.warning("Could not delete the lock experiment %s: %s", lock_id, err)


def _discard(client: Any, candidate: str) -> None:
    try:
        client.delete_run(candidate)
    except Exception as err:  # noqa: BLE001 - an unelected candidate is never returned by a search
        log.warning("Could not delete the unelected parent candidate %s: %s", candidate, err)


# -- the task runs --------------------------------------------------------------------------------


def supersede_earlier_tries(client: Any, experiment_id: str, live_run_id: str, task: TaskRef) -> list[str]:
    """
    Nest the runs of earlier tries of ``task`` under ``live_run_id``, the run of the try now running.

    Each gets ``mlflow.parentRunId`` and ``airflow.superseded_by`` = ``live_run_id``; one still
    ``RUNNING`` (a killed try: nothing closed it) is set to ``KILLED``. So the parent has one
    child per task instance, and no earlier try stays ``RUNNING``. Idempotent.

    :return: the run ids superseded.
    """
    runs = client.search_runs([experiment_id], filter_string=task.filter(), max_results=1000)
    superseded = []
    for run in runs:
        run_id = run.info.run_id
        if run_id == live_run_id or PARENT_KEY_TAG in run.data.tags:
            continue
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
        if run.data.tags.get(SUPERSEDED_BY_TAG) != live_run_id:
            client.set_tag(run_id, SUPERSEDED_BY_TAG, live_run_id)
            client.set_tag(run_id, PARENT_RUN_ID_TAG, live_run_id)
        superseded.append(run_id)
    if superseded:
        log.debug("Run %s supersedes the runs of earlier tries: %s", live_run_id, ", ".join(superseded))
    return superseded
