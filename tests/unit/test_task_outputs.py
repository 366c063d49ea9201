"""One output folder per task instance (``airflow_mlops.task_outputs``) and the one drift config
(``airflow_mlops.drift_config``) that the drift operator and the drift watcher both build."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest


def ti(task_id="check", map_index=-1, run_id="manual__2026-01-01T00:00:00+00:00", dag_id="dag"):
    return SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)


def test_every_task_instance_of_a_run_has_its_own_folder(tmp_path, monkeypatch):
    from airflow_mlops.task_outputs import task_output_dir

    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path))
    instances = [ti("a"), ti("b"), ti("m", 0), ti("m", 1), ti("m", 10), ti("a", run_id="scheduled__x")]
    folders = [task_output_dir(i, "drift") for i in instances]
    assert len(set(folders)) == len(folders)
    assert all(f.is_relative_to(tmp_path / "drift" / "dag") for f in folders)
    assert folders[2].parts[-2:] == ("m", "map_index=0") and folders[0].name == "a"
    assert task_output_dir(SimpleNamespace(**{**vars(ti("a")), "map_index": None}), "drift") == folders[0]


def test_run_ids_that_differ_only_in_unsafe_characters_keep_separate_folders():
    from airflow_mlops.task_outputs import run_folder

    assert run_folder("scheduled__2026-01-01") == "scheduled__2026-01-01"  # safe: as is
    a, b = run_folder("manual__2026-01-01T00:00:00+00:00"), run_folder("manual__2026-01-01T00_00_00_00_00")
    assert a != b and a.startswith("manual__2026-01-01T00_00_00_00_00-")
    assert all(c.isalnum() or c in "-_." for c in a)


@pytest.mark.parametrize("bad", [{"task_id": ".."}, {"dag_id": "."}, {"task_id": "a/b"}, {"dag_id": ""}])
def test_ids_that_would_leave_the_folder_are_refused(bad):
    from airflow_mlops.task_outputs import instance_folder

    args = {"dag_id": "dag", "run_id": "r", "task_id": "t", **bad}
    with pytest.raises(ValueError, match="cannot name a folder"):
        instance_folder(args["dag_id"], args["run_id"], args["task_id"])
    assert instance_folder("dag", "../r", "t") == PurePosixPath("dag", run_folder_of("../r"), "t")


def run_folder_of(run_id: str) -> str:
    from airflow_mlops.task_outputs import run_folder

    return run_folder(run_id)


def test_the_drift_operator_writes_in_its_instances_folder(tmp_path, monkeypatch):
    from airflow_mlops.operators.drift import DriftDetectOperator

    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path))
    op = DriftDetectOperator(task_id="check", reference_path="r", current_path="c", numeric_features=["x"])
    assert op._report_dir({"ti": ti(map_index=3)}) == tmp_path / "drift" / "dag" / Path(
        run_folder_of(ti().run_id), "check", "map_index=3"
    )
    # a report_dir given to a mapped task: each instance below it
    given = DriftDetectOperator(
        task_id="check", reference_path="r", current_path="c", numeric_features=["x"], report_dir="/reports"
    )
    assert given._report_dir({"ti": ti(map_index=3)}) == Path("/reports/map_index=3")
    assert given._report_dir({"ti": ti()}) == Path("/reports")


def test_operator_and_watcher_build_the_same_drift_config(tmp_path, monkeypatch):
    """Same keys, same defaults: one builder (``drift_config``) behind both."""
    import inspect

    from airflow_mlops.drift_config import drift_config
    from airflow_mlops.operators.drift import DriftDetectOperator
    from airflow_mlops.triggers.drift import DriftEventTrigger

    operator = inspect.signature(DriftDetectOperator.__init__).parameters
    watcher = inspect.signature(DriftEventTrigger.__init__).parameters
    for name in ("p_val", "correction", "mmd", "max_rows", "categorical_features"):
        assert operator[name].default == watcher[name].default, name

    monkeypatch.setenv("AIRFLOW__MLOPS__DATA_DIR", str(tmp_path))
    op = DriftDetectOperator(
        task_id="t", reference_path="ref.parquet", current_path="cur.parquet", numeric_features=["x"]
    )
    from_operator = op._config({"ti": ti()})
    built = drift_config(
        reference="ref.parquet",
        current="cur.parquet",
        out_dir=op._report_dir({"ti": ti()}),
        numeric_features=["x"],
    )
    assert from_operator == built
    assert set(built) == {
        "reference",
        "current",
        "numeric_features",
        "categorical_features",
        "prediction_column",
        "p_val",
        "correction",
        "mmd",
        "max_rows",
        "min_effect_size",
        "seed",
        "output",
        "plot",
    }
