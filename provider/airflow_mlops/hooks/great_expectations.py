"""Great Expectations 1.x: run an expectation suite on a pandas DataFrame.

The GE context is built only when a validation runs (never at DAG-parse time): ``import
great_expectations`` alone costs ~17 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops._imports import require

if TYPE_CHECKING:
    import pandas as pd


def load_suite(suite: dict[str, Any] | str) -> dict[str, Any]:
    """A suite as a dict ``{"name", "expectations": [{"type", "kwargs"}]}``, from a dict or a JSON file."""
    if isinstance(suite, dict):
        data = suite
    else:
        path = Path(suite)
        if not path.exists():
            raise FileNotFoundError(f"Expectation suite file {path} does not exist.")
        data = json.loads(path.read_text())
    if not data.get("expectations"):
        raise ValueError("The expectation suite has no expectations; add at least one.")
    return data


def _describe_failure(res: Any) -> str:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    detail = res.result or {}
    parts = [f"{cfg.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"]
    if "unexpected_count" in detail:
        parts.append(
            f"{detail['unexpected_count']} unexpected ({detail.get('unexpected_percent', 0):.2f}%), "
            f"e.g. {detail.get('partial_unexpected_list', [])[:5]}"
        )
    elif "observed_value" in detail:
        parts.append(f"observed {detail['observed_value']!r}")
    for message in _exception_messages(res.exception_info or {}):
        parts.append(f"error: {message}")
    return ": ".join(parts)


def _exception_messages(info: dict[str, Any]) -> list[str]:
    """GE 1.x reports an error either flat or nested under one key per metric."""
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info.get("raised_exception") else []
    return list(
        dict.fromkeys(
            str(v.get("exception_message"))
            for v in info.values()
            if isinstance(v, dict) and v.get("raised_exception")
        )
    )


class GreatExpectationsHook(BaseHook):
    """Validate pandas data against Great Expectations suites with an ephemeral context."""

    hook_name = "Great Expectations"

    def validate_dataframe(self, df: pd.DataFrame, suite: dict[str, Any] | str) -> dict[str, Any]:
        """
        Run ``suite`` on ``df``.

        :return: ``{"success", "suite", "statistics", "failures": [readable strings]}``.
        """
        gx = require("great_expectations", "great-expectations")
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        spec = load_suite(suite)
        context = gx.get_context(mode="ephemeral")
        batch = (
            context.data_sources.add_pandas("airflow")
            .add_dataframe_asset("snapshot")
            .add_batch_definition_whole_dataframe("whole")
        )
        gx_suite = gx.ExpectationSuite(name=spec.get("name", "suite"))
        for exp in spec["expectations"]:
            gx_suite.add_expectation_configuration(
                ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}), meta=exp.get("meta"))
            )
        gx_suite = context.suites.add(gx_suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=gx_suite, name="airflow")
        )
        result = definition.run(batch_parameters={"dataframe": df})
        return {
            "success": bool(result.success),
            "suite": gx_suite.name,
            "statistics": dict(result.statistics),
            "failures": [_describe_failure(r) for r in result.results if not r.success],
        }
