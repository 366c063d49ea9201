"""Validate a dataset snapshot with a Great Expectations suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.exceptions import DataValidationError
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class GreatExpectationsValidateOperator(MlopsBaseOperator):
    """
    Run an expectation suite on a Parquet snapshot; a failing suite fails the task.

    The task fails with every failed expectation listed, so nothing downstream (training,
    registration) runs on bad data. The summary goes to XCom either way.

    :param data_path: Parquet file to validate (templated), e.g. the ingest task's
        ``{{ ti.xcom_pull(task_ids='ingest')['path'] }}``.
    :param suite: the suite as a dict ``{"name", "expectations": [{"type", "kwargs"}]}``
        or the path of a JSON file holding one (templated).
    :param fail_on_error: fail the task when the suite fails (default); when False, only warn.
    """

    template_fields: Sequence[str] = ("data_path", "suite")
    template_ext: Sequence[str] = ()
    ui_color = "#ffefeb"

    def __init__(
        self,
        *,
        data_path: str,
        suite: dict[str, Any] | str,
        fail_on_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_path = data_path
        self.suite = suite
        self.fail_on_error = fail_on_error

    def execute(self, context: Context) -> dict[str, Any]:
        import pandas as pd

        from airflow_mlops.hooks.great_expectations import GreatExpectationsHook

        df = pd.read_parquet(self.data_path)
        summary = GreatExpectationsHook().validate_dataframe(df, self.suite)
        stats = summary["statistics"]
        self.log.info(
            "Suite %s on %s (%d rows): %s of %s expectations passed",
            summary["suite"],
            self.data_path,
            len(df),
            stats.get("successful_expectations"),
            stats.get("evaluated_expectations"),
        )
        summary.update(data_path=self.data_path, rows=len(df))
        if summary["success"]:
            return summary
        listing = "\n".join(f"  - {failure}" for failure in summary["failures"])
        message = (
            f"Data validation failed: {len(summary['failures'])} expectation(s) of suite "
            f"'{summary['suite']}' failed on {self.data_path}:\n{listing}\n"
            "Fix the data at its source (or the suite, if the expectation is wrong) and re-run."
        )
        if self.fail_on_error:
            raise DataValidationError(message)
        self.log.warning(message)
        return summary
