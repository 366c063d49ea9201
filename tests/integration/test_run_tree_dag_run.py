"""One MLflow run tree per DAG run, end to end: real Airflow (``dag.test()`` on a real metadata DB),
real ``horovodrun`` training, a real MLflow tracking server over HTTP.

The DAG (``run_tree_dag.py``): ``train`` mapped over two hyperparameter points (2 Horovod processes
each) → ``select_best`` → ``register`` → ``gate``. It runs once, then Airflow clears the DAG run and
runs it again (same run id), where the first try of ``train[0]`` dies on rank 0 after its MLflow
run started (left ``RUNNING``, as a killed worker leaves it) and its retry trains.

* after each pass: exactly one parent run for the DAG run (named and tagged after it), with exactly
  one child per task instance — the live try's run: names, ``airflow.*`` tags, ``mlflow.parentRunId``,
  ``FINISHED`` — and no run of the DAG run left ``RUNNING``;
* after the rerun: the earlier tries' runs are nested under the live ones (``train[0]``: the first
  pass's ``FINISHED`` run and the dead try's run, set to ``KILLED``), never a second parent;
* the model version's ``run_id`` is its training run, its tags name that run, the parent and the
  registration's run; the extra links point at the live child and at the parent;
* the MLflow UI shows the tree (headless Chromium): the screenshot is ``mlflow-run-tree.png`` in
  the test artifacts (``docs/img/mlflow-run-tree.png`` is one).

Needs ``.runtimes/training`` (or ``$MLOPS_RUNTIMES_DIR/training``). ~6-10 min on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
from mlflow_server import MlflowServer  # noqa: E402

RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
JOB = Path(__file__).resolve().parent / "run_tree_dag.py"
#: the task instances that log to MLflow, as (task_id, map_index)
TASKS = {("train", "0"), ("train", "1"), ("select_best", "-1"), ("register", "-1"), ("gate", "-1")}

if not (RUNTIMES_DIR / "training" / "bin" / "horovodrun").exists():
    pytest.skip(
        f"training runtime not found under {RUNTIMES_DIR} (no training/bin/horovodrun); create it with "
        "`scripts/runtime_env.sh training .runtimes/training` or set MLOPS_RUNTIMES_DIR",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server.wait_healthy(timeout=300)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def result(server, tmp_path_factory) -> dict:
    """Both passes of the DAG run (``run_tree_dag.py`` in a fresh Airflow home)."""
    root = tmp_path_factory.mktemp("run-tree")
    home = root / "airflow-home"
    (home / "dags").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES_DIR),
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": server.url}),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    work, out, log = root / "work", root / "result.json", root / "job.log"
    work.mkdir()
    with open(log, "wb") as f:
        proc = subprocess.run(
            [sys.executable, str(JOB), str(work), str(out), server.url],
            env=env, cwd=root, stdout=f, stderr=subprocess.STDOUT, timeout=1800,
        )  # fmt: skip
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-8000:]
    data = json.loads(out.read_text())
    assert data["import_errors"] == {}, data["import_errors"]
    data["log"] = output
    return data


def _value(xcom):
    """An XCom value as the metadata DB returns it (serialised JSON text, or already decoded)."""
    if isinstance(xcom, str):
        try:
            return json.loads(xcom)
        except ValueError:
            return xcom
    return xcom


def tree(runs: list[dict], dag_run_id: str) -> tuple[dict, dict, list[dict]]:
    """``(parent, {(task_id, map_index): live child}, every active run of the DAG run)``, checking
    on the way that there is one parent and one live child per task instance."""
    active = [r for r in runs if r["stage"] == "active" and r["tags"].get("airflow.run_id") == dag_run_id]
    parents = [r for r in active if "airflow.parent_key" in r["tags"]]
    assert len(parents) == 1, parents
    parent = parents[0]
    assert [r for r in active if r["tags"].get("mlops.kind") == "dag_run"] == [parent]  # no stray candidate
    children = [r for r in active if r["tags"].get("mlflow.parentRunId") == parent["run_id"]]
    keys = Counter((r["tags"]["airflow.task_id"], r["tags"]["airflow.map_index"]) for r in children)
    assert keys == Counter(TASKS), keys  # one child per task instance, nothing else
    assert not [r for r in active if r["status"] == "RUNNING" and r is not parent], "a run left RUNNING"
    return (
        parent,
        {(r["tags"]["airflow.task_id"], r["tags"]["airflow.map_index"]): r for r in children},
        active,
    )


@pytest.mark.parametrize("which", ["first", "rerun"])
def test_a_dag_run_is_one_parent_with_one_child_per_task(result, which):
    passed = result[which]
    dag_run_id = passed["run_id"]
    assert passed["state"] == "success", passed["tasks"]
    states = {passed["tasks"][f"{task}[{index}]"]["state"] for task, index in TASKS}
    assert states == {"success"}, passed["tasks"]  # (deploy runs or is skipped: the gate's choice)
    parent, children, _ = tree(passed["runs"], dag_run_id)

    key = f"run_tree/{dag_run_id}"
    assert parent["name"] == key
    assert {k: parent["tags"].get(k) for k in ("airflow.dag_id", "airflow.run_id", "airflow.parent_key")} == {
        "airflow.dag_id": "run_tree",
        "airflow.run_id": dag_run_id,
        "airflow.parent_key": key,
    }
    assert parent["status"] == "FINISHED"  # set by the last task that ended
    tries = {key: passed["tasks"][f"{key[0]}[{key[1]}]"]["try_number"] for key in TASKS}
    if which == "rerun":  # cleared: every task's next try; train[0] died once more and retried
        assert tries == {**{k: 2 for k in TASKS}, ("train", "0"): 3}, tries
    names = {
        ("train", "0"): f"train-0-{dag_run_id}",
        ("train", "1"): f"train-1-{dag_run_id}",
        ("select_best", "-1"): f"select_best-{dag_run_id}",
        ("register", "-1"): f"register-{dag_run_id}",
        ("gate", "-1"): "gate-run_tree_model-v1-vs-vnone"
        if which == "first"
        else "gate-run_tree_model-v2-vs-v1",
    }
    for task, child in children.items():
        assert child["name"] == names[task]
        assert child["status"] == "FINISHED"
        assert child["tags"]["airflow.dag_id"] == "run_tree"
        assert child["tags"]["airflow.try_number"] == str(tries[task])
        assert child["experiment_id"] == parent["experiment_id"]
        assert "airflow.superseded_by" not in child["tags"]

    xcoms = {k: _value(v) for k, v in passed["xcoms"].items()}
    # what the tasks handed on is the live children
    for index in ("0", "1"):
        trained = xcoms[f"train[{index}].return_value"]
        assert trained["run_id"] == children[("train", index)]["run_id"]
        assert trained["parent_run_id"] == parent["run_id"]
        # the extra links: the task's own (child) run, and the DAG run's parent
        assert xcoms[f"train[{index}]._link_MlflowRunLink"].endswith(f"/runs/{trained['run_id']}")
        assert xcoms[f"train[{index}]._link_MlflowParentRunLink"].endswith(f"/runs/{parent['run_id']}")
    assert xcoms["select_best[-1].mlflow_run_id"] == children[("select_best", "-1")]["run_id"]
    assert xcoms["select_best[-1].run_id"] in {children[("train", i)]["run_id"] for i in ("0", "1")}
    assert xcoms["register[-1].mlflow_run_id"] == children[("register", "-1")]["run_id"]
    assert xcoms["gate[-1].comparison"]["mlflow_run_id"] == children[("gate", "-1")]["run_id"]
    assert xcoms["gate[-1]._link_MlflowRunLink"].endswith(f"/runs/{children[('gate', '-1')]['run_id']}")
    assert xcoms["gate[-1]._link_MlflowParentRunLink"].endswith(f"/runs/{parent['run_id']}")


def test_the_rerun_nests_earlier_tries_under_the_live_runs_and_kills_the_dead_one(result):
    first, rerun = result["first"], result["rerun"]
    assert rerun["run_id"] == first["run_id"]  # Airflow cleared and reran the same DAG run
    assert "[test] rank 0 dies now" in result["log"] and not result["marker_left"]
    first_parent, first_children, _ = tree(first["runs"], first["run_id"])
    parent, children, active = tree(rerun["runs"], rerun["run_id"])
    assert parent["run_id"] == first_parent["run_id"]  # never a second parent

    for task, child in children.items():
        earlier = [r for r in active if r["tags"].get("mlflow.parentRunId") == child["run_id"]]
        assert all(r["tags"]["airflow.superseded_by"] == child["run_id"] for r in earlier)
        assert all((r["tags"]["airflow.task_id"], r["tags"]["airflow.map_index"]) == task for r in earlier)
        by_try = {r["tags"]["airflow.try_number"]: r for r in earlier}
        assert by_try["1"]["run_id"] == first_children[task]["run_id"]  # the first pass's, kept
        assert by_try["1"]["status"] == "FINISHED"
        if task == ("train", "0"):
            assert sorted(by_try) == ["1", "2"]
            assert by_try["2"]["status"] == "KILLED"  # the try that died: RUNNING until the retry
        else:
            assert sorted(by_try) == ["1"]


def test_the_model_version_links_to_its_training_run_and_the_parent(result, server):
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    rerun = result["rerun"]
    parent, children, _ = tree(rerun["runs"], rerun["run_id"])
    xcoms = {k: _value(v) for k, v in rerun["xcoms"].items()}
    version = client.get_model_version(result["model"], xcoms["register[-1].version"])
    winner = xcoms["select_best[-1].run_id"]
    assert version.run_id == winner
    assert version.tags["airflow.training_run_id"] == winner
    assert version.tags["airflow.parent_run_id"] == parent["run_id"]
    assert version.tags["airflow.registration_run_id"] == children[("register", "-1")]["run_id"]
    # the first pass's version too: its (now superseded) training run, the same parent
    first = client.get_model_version(result["model"], "1")
    assert first.tags["airflow.parent_run_id"] == parent["run_id"]
    assert client.get_run(first.run_id).data.tags["airflow.superseded_by"] in {
        children[("train", "0")]["run_id"],
        children[("train", "1")]["run_id"],
    }


def test_the_mlflow_ui_shows_the_tree(result, server, tmp_path):
    """MLflow's runs page, as a person opens it: the parent, expanded, shows one run per task, and
    ``train[0]``'s run, expanded, its two earlier tries."""
    from browser import CHROMIUM, Browser

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install_browser.sh)")
    rerun = result["rerun"]
    parent, children, _ = tree(rerun["runs"], rerun["run_id"])
    train0 = children[("train", "0")]["name"]
    b = Browser(tmp_path / "profile")
    try:
        b.goto(f"{server.url}/#/experiments/{parent['experiment_id']}/runs?workflowType=machine_learning")
        b.wait_for(f"{SHOWN}.includes({json.dumps(parent['name'])})", what="the parent run", timeout=120)
        b.eval("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")  # assistant
        assert b.eval(f"({EXPAND})({json.dumps(parent['name'])})") == "expanded"
        names = sorted(child["name"] for child in children.values())
        b.wait_for(f"{json.dumps(names)}.every(n => {SHOWN}.includes(n))", what="the task runs in the parent")
        assert b.eval(f"({EXPAND})({json.dumps(train0)})") == "expanded"
        b.wait_for(f"{SHOWN}.filter(n => n === {json.dumps(train0)}).length === 3", what="train[0]'s tries")
        b.eval(WIDEN_RUN_NAMES)
        time.sleep(1)  # let the table settle before the picture
        path = b.screenshot("mlflow-run-tree")
    finally:
        b.close()
    assert path.stat().st_size > 10_000


#: the run names the runs table shows, in order
SHOWN = "[...document.querySelectorAll('[role=gridcell] a')].map(a => a.textContent.trim())"

#: clicks the expand button of the row of the run named ``name`` in MLflow's runs table
EXPAND = """
((name) => {
  const link = [...document.querySelectorAll('[role=gridcell] a')].find(a => a.textContent.trim() === name);
  const button = link && link.closest('[role=gridcell]').querySelector('button');
  if (!button) return 'no expand button';
  button.click();
  return 'expanded';
})
"""

#: drags the right edge of the "Run Name" column 340 px to the right (ag-grid's own resize)
WIDEN_RUN_NAMES = """
(async () => {
  const handles = [...document.querySelectorAll('[col-id="attributes.`Run Name`"] .ag-header-cell-resize')];
  const handle = handles[handles.length - 1];
  const box = handle.getBoundingClientRect();
  const x = box.x + box.width / 2, y = box.y + box.height / 2;
  const at = (cx, buttons) => ({bubbles: true, cancelable: true, clientX: cx, clientY: y, button: 0, buttons,
                                pointerId: 1, isPrimary: true, pointerType: 'mouse'});
  handle.dispatchEvent(new PointerEvent('pointerdown', at(x, 1)));
  handle.dispatchEvent(new MouseEvent('mousedown', at(x, 1)));
  for (let i = 1; i <= 20; i++) {
    await new Promise(done => setTimeout(done, 20));
    document.dispatchEvent(new PointerEvent('pointermove', at(x + i * 17, 1)));
    document.dispatchEvent(new MouseEvent('mousemove', at(x + i * 17, 1)));
  }
  document.dispatchEvent(new PointerEvent('pointerup', at(x + 340, 0)));
  document.dispatchEvent(new MouseEvent('mouseup', at(x + 340, 0)));
})()
"""
