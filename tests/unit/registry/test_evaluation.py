"""``airflow_mlops.evaluation`` on its own: light to import, the rule's arithmetic on plain data.

Scoring real models against a real MLflow server: test_registry_operators.py (the gate and the
register operator's rule go through this module).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from airflow_mlops.evaluation import Evaluation, slice_regressions


def test_importing_it_imports_nothing_heavy():
    code = (
        "import sys, airflow_mlops.evaluation, airflow_mlops.operators.registry; "
        "print(sorted(m for m in ('pandas', 'numpy', 'mlflow', 'pyarrow', 'great_expectations') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_registry_module_still_offers_the_names_it_used_to_define():
    import airflow_mlops.evaluation as evaluation
    from airflow_mlops.operators import registry

    for name in ("Evaluation", "evaluate_against_champion", "evaluate_model", "slice_regressions", "METRICS"):
        assert getattr(registry, name) is getattr(evaluation, name)


def test_from_dict_checks_and_defaults():
    spec = {"data_path": "h.parquet", "features": ["a"], "label": "y", "metric": "log_loss"}
    evaluation = Evaluation.from_dict(spec, "gate")
    assert evaluation.higher_is_better is False and evaluation.dataset_version is None
    assert evaluation.gain(0.30, 0.35) == pytest.approx(0.05)  # a lower loss is a gain
    assert Evaluation.from_dict({**spec, "metric": "roc_auc"}, "gate").gain(0.7, 0.6) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"gate: evaluation needs \['label'\]"):
        Evaluation.from_dict({"data_path": "h.parquet", "features": ["a"]}, "gate")
    with pytest.raises(ValueError, match="'f1' is not one of"):
        Evaluation.from_dict({**spec, "metric": "f1"}, "gate")


def _scores(version: str, slices: dict) -> dict:
    return {"version": version, "overall": {"value": 0.7, "rows": 1000}, "slices": {"carrier": slices}}


def test_slice_regressions_judge_only_big_defined_slices_worst_first():
    evaluation = Evaluation(data_path="h.parquet", features=["a"], label="y")
    challenger = _scores(
        "2",
        {
            "UA": {"value": 0.60, "rows": 500},  # 0.10 worse: listed
            "AA": {"value": 0.50, "rows": 400},  # 0.25 worse: listed first
            "WN": {"value": 0.10, "rows": 50},  # far worse, but too few rows to judge
            "B6": {"value": None, "rows": 300},  # undefined (one class)
            "DL": {"value": 0.69, "rows": 300},  # 0.01 worse: within the allowance
        },
    )
    champion = _scores(
        "1",
        {
            "UA": {"value": 0.70, "rows": 500},
            "AA": {"value": 0.75, "rows": 400},
            "WN": {"value": 0.90, "rows": 50},
            "B6": {"value": 0.70, "rows": 300},
            "DL": {"value": 0.70, "rows": 300},
        },
    )
    found = slice_regressions(evaluation, challenger, champion, max_regression=0.02, min_rows=200)
    assert [(r["value"], round(r["regression"], 4)) for r in found] == [("AA", 0.25), ("UA", 0.1)]
    assert found[0] == {
        "slice": "carrier", "value": "AA", "rows": 400, "challenger": 0.50, "champion": 0.75,
        "regression": pytest.approx(0.25),
    }  # fmt: skip
