"""Where a task instance writes its files: one folder per (DAG, run, task, map index).

An operator that writes files under ``[mlops] data_dir`` takes its folder from
:func:`task_output_dir`, so two task instances never share a file — neither two tasks side by
side in one run nor the instances of a mapped task::

    <data_dir>/<kind>/<dag_id>/<run>/<task_id>/                  a task that is not mapped
    <data_dir>/<kind>/<dag_id>/<run>/<task_id>/map_index=<n>/    instance n of a mapped task

``<run>`` is the run id when it holds only letters, digits and ``-_.``; otherwise each other
character becomes ``_`` and ``-`` plus 8 hex digits of the run id's SHA-256 are appended, so run
ids that differ only there (``…T00:00:00+00:00`` and ``…T00_00_00_00_00``) keep separate folders.
``map_index=<n>`` for mapped instances only follows Airflow's own task-log layout. The tries of
one task instance share its folder: a retry finds what its first try made.

Only the standard library at module level (operators import this at parse time).
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

#: the folder of instance ``n`` of a mapped task, inside the task's folder
MAP_INDEX_PREFIX = "map_index="


def map_index(ti: Any) -> int:
    """The task instance's map index; -1 when it is not mapped."""
    index = getattr(ti, "map_index", -1)
    return -1 if index is None else int(index)


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


def run_folder(run_id: str) -> str:
    """The folder name of a DAG run: the run id, made safe for any file system (see module doc)."""
    safe = _safe(run_id)
    if safe == run_id:
        return run_id
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def instance_folder(dag_id: str, run_id: str, task_id: str, index: int = -1) -> PurePosixPath:
    """The folder of a task instance relative to an output kind's root (``dag/run/task[/map_index=n]``).

    :raises ValueError: for an id that would leave the folder (``.``, ``..``, a ``/``).
    """
    for what, value in (("dag_id", dag_id), ("task_id", task_id)):
        if not value or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError(f"{what} {value!r} cannot name a folder")
    folder = PurePosixPath(dag_id, run_folder(run_id), task_id)
    return folder / f"{MAP_INDEX_PREFIX}{index}" if index is not None and index >= 0 else folder


def task_output_dir(ti: Any, kind: str) -> Path:
    """The folder (not created) where task instance ``ti`` writes its ``kind`` of output
    (``drift``, ``data_docs``...): ``[mlops] data_dir/<kind>/<dag_id>/<run>/<task_id>[/map_index=<n>]``."""
    from airflow_mlops import settings

    return settings.data_dir() / kind / instance_folder(ti.dag_id, ti.run_id, ti.task_id, map_index(ti))


def create_task_output_dir(ti: Any, kind: str) -> Path:
    """:func:`task_output_dir`, created (with its parents).

    :raises airflow_mlops.datasets.DataWriteError: the folder cannot be created (a file where a
        folder is expected, no permission, a full disk): the message names the path and the fix.
    """
    from airflow_mlops.datasets import DataWriteError

    folder = task_output_dir(ti, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataWriteError(folder, err) from err
    return folder
