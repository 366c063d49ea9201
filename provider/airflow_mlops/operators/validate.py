"""Validate a dataset snapshot with a Great Expectations suite."""

from __future__ import annotations

import json
import logging
import statistics
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow_mlops import storage
from airflow_mlops.exceptions import DataValidationError
from airflow_mlops.hooks.great_expectations import ProfiledSuite, SuiteLike
from airflow_mlops.links.great_expectations import DataDocsLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.hooks.great_expectations import ValidationSession
    from airflow_mlops.storage import StorePath

__all__ = ["GreatExpectationsValidateOperator", "ProfiledSuite", "history_row_counts", "row_count_bounds"]

POLICIES = ("fail", "warn", "skip_downstream")
#: XCom key of the summary, pushed before the task fails or skips (no return value then)
SUMMARY_KEY = "validation"


def _snapshot_location(data_path: str) -> tuple[StorePath, str, StorePath]:
    """``(root, dataset, manifest)`` of a snapshot ``<root>/<dataset>/data/<interval>/<version>.parquet``."""
    path = storage.as_path(data_path)
    if len(path.parts) < 4 or path.parent.parent.name != "data":
        raise ValueError(
            f"{data_path} is not a snapshot written by IngestOperator / write_snapshot "
            "(<root>/<dataset>/data/<interval>/<version>.parquet); quarantine and row_count_vs_history "
            "need one. Validate the ingest task's 'path', or turn these options off."
        )
    base = path.parent.parent.parent
    manifest = base / "manifests" / path.parent.name / f"{path.stem}.json"
    return base.parent, base.name, manifest


def history_row_counts(
    root: StorePath, dataset: str, before: datetime, window: int = 12, per: timedelta | None = None
) -> list[int]:
    """
    Row counts of the ``window`` latest intervals of ``dataset`` that end by ``before``.

    One count per interval: that of its most recently written manifest (an interval
    re-ingested with changed content, or cleaned by a quarantine, counts once). With ``per``,
    each count is scaled to an interval of that length (a quarter's rows are not a month's:
    the rate per day is what compares).
    """
    from airflow_mlops.datasets import read_manifest

    latest: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for manifest in (storage.as_path(root) / dataset / "manifests").glob("*/*.json"):
        data = read_manifest(manifest)
        end = datetime.fromisoformat(data["interval_end"])
        written = datetime.fromisoformat(data["ingested_at"])
        interval = manifest.parent.name
        if end <= before and (interval not in latest or latest[interval][0] < written):
            latest[interval] = (written, data)
    found = [latest[key][1] for key in sorted(latest)[-window:]]
    if per is None:
        return [m["rows"] for m in found]
    return [round(m["rows"] * per / _length(m)) for m in found]


def _length(manifest: dict[str, Any]) -> timedelta:
    length = datetime.fromisoformat(manifest["interval_end"]) - datetime.fromisoformat(
        manifest["interval_start"]
    )
    return length if length > timedelta(0) else timedelta(days=1)


def row_count_bounds(counts: Sequence[int], tolerance: float) -> tuple[int, int]:
    """
    ``median x (1 - tolerance)`` .. ``median x (1 + tolerance)`` of earlier intervals' row counts.

    Why the median: it needs no distribution assumption and only a few intervals, and one
    odd interval in the history (a holiday month, a half-failed ingest) does not move it;
    a mean or a standard deviation would be dragged by exactly the outliers this check is
    meant to catch. A relative band reads plainly (``0.5``: half to one and a half times
    the usual count) and tolerates calendar effects such as February's 28 days.
    """
    median = statistics.median(counts)
    return int(median * (1 - tolerance)), int(median * (1 + tolerance)) + 1


def _dataset_of(path: str) -> str:
    """``<dataset> snapshot <version>`` of a snapshot path, else the file's name."""
    try:
        _, dataset, _ = _snapshot_location(path)
    except ValueError:
        return Path(path).name
    return f"{dataset} (snapshot {Path(path).stem})"


def summary_line(summary: Mapping[str, Any]) -> str:
    """
    One line: ``Validated 5957 rows of flights (snapshot 1536...) against suite 'flights': 28/28
    expectations passed.`` (with the quarantined rows and the failures, when there are).
    """
    stats = summary.get("statistics") or {}
    rows = summary.get("clean_rows", summary["rows"])
    line = f"Validated {rows} rows of {_dataset_of(summary['data_path'])}"
    if summary.get("quarantined_rows"):
        line += f" ({summary['quarantined_rows']} of {summary['rows']} quarantined)"
    line += (
        f" against suite {summary['suite']!r}: {stats.get('successful_expectations')}/"
        f"{stats.get('evaluated_expectations')} expectations passed"
    )
    failures = summary.get("failures") or []
    return line + (f"; {len(failures)} failed." if failures else ".")


class GreatExpectationsValidateOperator(MlopsBaseOperator):
    """
    Run an expectation suite on a Parquet snapshot and act on the result by ``policy``.

    The GE context is built only in ``execute``. The summary goes to XCom (the return value,
    and under key ``validation`` also when the task fails or skips); GE's Data Docs page of
    the validation is stored under ``[mlops] data_dir``/``data_docs/<dag_id>/<run_id>/<task_id>/``
    and linked from the task ("Data Docs" extra link, served by the provider's plugin).

    :param data_path: Parquet file to validate (templated), e.g. the ingest task's
        ``{{ ti.xcom_pull(task_ids='ingest')['path'] }}`` or ``ingest.output["path"]``.
    :param suite: the expectation suite (templated): a dict ``{"name", "expectations": [{"type",
        "kwargs"}]}``; the path of a JSON file holding one; a list of GE ``Expectation`` objects;
        a GE ``ExpectationSuite``; a callable returning any of these (imports GE only when
        the task runs); or ``ProfiledSuite(reference_path=...)``, profiled from a reference
        snapshot when the task runs. The suite that ran is stored as ``suite.json`` next to
        the Data Docs.
    :param policy: what a failing suite does: ``fail`` (default) fails the task with
        ``DataValidationError`` listing every failed expectation; ``warn`` logs them and
        succeeds with ``success: False``; ``skip_downstream`` skips this task, so that
        downstream tasks (default trigger rule) are skipped too.
    :param quarantine: move the rows that fail row-level (column map) expectations to a side
        snapshot ``<dataset>_quarantine`` and store the remaining rows as a new snapshot of
        the same dataset and interval; the clean rows are validated again, the policy applies
        to that result (table-level failures remain), and ``path`` points at the clean snapshot.
    :param row_count_vs_history: when set (e.g. ``0.5``), also expect the row count within this
        relative tolerance of the median row count of the dataset's earlier intervals (see
        :func:`row_count_bounds`); no check until ``min_history`` intervals exist.
    :param history_window: how many of the latest earlier intervals make the history.
    :param min_history: fewest earlier intervals for the row-count check.
    :param data_docs: render and store GE's Data Docs (about a second per validation).
    :param fail_on_error: deprecated: ``True`` is ``policy="fail"``, ``False`` is ``policy="warn"``.
    """

    template_fields: Sequence[str] = ("data_path", "suite")
    template_ext: Sequence[str] = ()
    ui_color = "#ffefeb"
    operator_extra_links = (DataDocsLink(),)

    def __init__(
        self,
        *,
        data_path: str,
        suite: SuiteLike,
        policy: str = "fail",
        quarantine: bool = False,
        row_count_vs_history: float | None = None,
        history_window: int = 12,
        min_history: int = 3,
        data_docs: bool = True,
        fail_on_error: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fail_on_error is not None:
            warnings.warn(
                "fail_on_error is deprecated; use policy='fail' or policy='warn'.",
                DeprecationWarning,
                stacklevel=2,
            )
            policy = "fail" if fail_on_error else "warn"
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is not one of {', '.join(POLICIES)}.")
        if row_count_vs_history is not None and not 0 < row_count_vs_history < 1:
            raise ValueError("row_count_vs_history is a relative tolerance between 0 and 1, e.g. 0.5.")
        self.data_path = data_path
        self.suite = suite
        self.policy = policy
        self.quarantine = quarantine
        self.row_count_vs_history = row_count_vs_history
        self.history_window = history_window
        self.min_history = min_history
        self.data_docs = data_docs

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.datasets import load_parquet
        from airflow_mlops.hooks.great_expectations import GreatExpectationsHook, load_suite

        df = load_parquet(self.data_path)  # a file, or an object-store URL
        notes: list[tuple[int, str]] = []  # logged after the summary line: (level, message)
        spec = self._with_history(load_suite(self.suite), notes)
        folder = self._output_folder(context)
        dest = storage.data_root() / "data_docs" / folder
        summary: dict[str, Any] = {"data_path": self.data_path, "path": self.data_path, "rows": len(df)}
        summary["suite_path"] = storage.location(dest / "suite.json")
        # built in a local folder (uploaded afterwards when the data dir is an object store)
        with (
            storage.output_folder(dest) as out_dir,
            GreatExpectationsHook().session(spec, data_docs=self.data_docs) as session,
        ):
            # the suite that ran, as data: a profiled one can be inspected and reused from here
            (out_dir / "suite.json").write_text(json.dumps(spec, indent=2, default=str))
            result = session.validate(df, "snapshot", unexpected_rows=self.quarantine)
            if self.quarantine and result["unexpected_rows"]:
                summary.update(self._quarantine(df, result, context, notes))
                clean = load_parquet(summary["path"])
                summary["quarantined_failures"] = result["row_level_failures"]
                result = session.validate(clean, "clean")
            elif self.quarantine:
                summary.update(quarantined_rows=0, quarantine_path=None, clean_rows=len(df))
            if self.data_docs:
                summary.update(self._store_data_docs(session, result, out_dir, folder, dest, context))
        result.pop("unexpected_rows", None)
        # per-expectation records: for the lineage facets, not the XCom (28 records for the example)
        results = result.pop("results", [])
        summary.update(result)
        self._validation = {**summary, "results": results}
        self._log(summary, notes)
        # also under its own key: a failed or skipped task pushes no return value
        context["ti"].xcom_push(key=SUMMARY_KEY, value=summary)
        if summary["success"]:
            return summary
        return self._apply_policy(summary, context)

    # --- OpenLineage -------------------------------------------------------------------

    #: the summary of the last validation in this task process, with the per-expectation results
    _validation: dict[str, Any] | None = None

    def openlineage(self, stage: str) -> Any:
        """
        The snapshot in (schema, version), with the suite's outcome once validated: one
        ``dataQualityAssertions`` entry per expectation and ``dataQualityMetrics`` (rows, nulls
        GE counted); also when the suite failed. With quarantine: the clean snapshot (a new
        version of the same dataset) and the quarantined rows' dataset out.
        """
        from airflow_mlops import lineage

        validation = self._validation if stage != "start" else None
        quality: dict[str, Any] = {}
        if validation:
            rows = validation.get("clean_rows", validation.get("rows"))
            quality = lineage.data_quality_facets(validation["results"], rows, self.policy)
        outputs = []
        if validation and validation.get("quarantine_path"):
            clean = {"path": validation["path"], "version": validation["version"]}
            quarantined = {"path": validation["quarantine_path"], "rows": validation["quarantined_rows"]}
            quarantined["version"] = Path(quarantined["path"]).stem
            outputs = [
                lineage.snapshot_output({**clean, "rows": validation.get("clean_rows")}),
                lineage.snapshot_output(quarantined),
            ]
        return lineage.operator_lineage([lineage.file_input(self.data_path, **quality)], outputs)

    # --- pieces of execute -------------------------------------------------------------

    def _output_folder(self, context: Context) -> PurePosixPath:
        """This instance's folder under ``data_docs/``: ``<dag_id>/<run_id>/<task_id>[_<map index>]``."""
        ti = context["ti"]
        task = ti.task_id if ti.map_index in (None, -1) else f"{ti.task_id}_{ti.map_index}"
        return PurePosixPath(ti.dag_id, ti.run_id, task)

    def _with_history(self, spec: dict[str, Any], notes: list[tuple[int, str]]) -> dict[str, Any]:
        if self.row_count_vs_history is None:
            return spec
        root, dataset, manifest = _snapshot_location(self.data_path)
        this = json.loads(manifest.read_text())
        start = datetime.fromisoformat(this["interval_start"])
        # scaled to this interval's length: a retraining on two months compares with monthly runs
        counts = history_row_counts(root, dataset, start, self.history_window, per=_length(this))
        if len(counts) < self.min_history:
            notes.append(
                (
                    logging.INFO,
                    f"Row count vs. history: {len(counts)} earlier interval(s) of {dataset}, "
                    f"{self.min_history} needed; not checked yet.",
                )
            )
            return spec
        low, high = row_count_bounds(counts, self.row_count_vs_history)
        check = {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": low, "max_value": high},
            "meta": {"history_row_counts": counts, "tolerance": self.row_count_vs_history},
        }
        return {**spec, "expectations": [*spec["expectations"], check]}

    def _quarantine(
        self, df: pd.DataFrame, result: dict[str, Any], context: Context, notes: list[tuple[int, str]]
    ) -> dict[str, Any]:
        from airflow_mlops.datasets import read_manifest, write_snapshot

        root, dataset, manifest_path = _snapshot_location(self.data_path)
        manifest = read_manifest(manifest_path)
        start, end = (datetime.fromisoformat(manifest[k]) for k in ("interval_start", "interval_end"))
        bad = df.index.isin(result["unexpected_rows"])
        ti = context["ti"]
        lineage = {
            "derived_from": manifest["version"],
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "suite": result["suite"],
        }
        quarantined, _ = write_snapshot(
            df[bad].reset_index(drop=True), root, f"{dataset}_quarantine", start, end, lineage
        )
        clean, _ = write_snapshot(
            df[~bad].reset_index(drop=True),
            root,
            dataset,
            start,
            end,
            {**lineage, "quarantined": int(bad.sum())},
        )
        notes.append(
            (
                logging.WARNING,
                f"Quarantined {quarantined.rows} of {len(df)} rows to {quarantined.path}; "
                f"the {clean.rows} clean rows are {clean.path}.",
            )
        )
        return {
            "path": clean.path,
            "version": clean.version,
            "clean_rows": clean.rows,
            "quarantined_rows": quarantined.rows,
            "quarantine_path": quarantined.path,
        }

    def _store_data_docs(
        self,
        session: ValidationSession,
        result: dict[str, Any],
        out_dir: Path,
        folder: PurePosixPath,
        dest: StorePath,
        context: Context,
    ) -> dict[str, Any]:
        """Data Docs built into ``out_dir`` (to become ``dest``, ``data_docs/<folder>``); the page's link."""
        from airflow_mlops.links.great_expectations import data_docs_url

        site = session.export_data_docs(out_dir / "site")
        page = (site / result.pop("data_docs_page")).relative_to(out_dir).as_posix()
        url = data_docs_url(folder / page)
        DataDocsLink.persist(context, url)
        return {"data_docs": storage.location(dest / page), "data_docs_url": url}

    def _log(self, summary: dict[str, Any], notes: Sequence[tuple[int, str]] = ()) -> None:
        """The task log's first line says what was validated and how it went; the details follow."""
        self.log.info(summary_line(summary))
        for level, message in notes:
            self.log.log(level, message)
        if summary.get("data_docs_url"):
            self.log.info("Data Docs: %s", summary["data_docs_url"])

    def _apply_policy(self, summary: dict[str, Any], context: Context) -> dict[str, Any]:
        listing = "\n".join(f"  - {failure}" for failure in summary["failures"])
        message = (
            f"Data validation failed: {len(summary['failures'])} expectation(s) of suite "
            f"'{summary['suite']}' failed on {summary['path']}:\n{listing}\n"
            "Fix the data at its source (or the suite, if the expectation is wrong) and re-run."
        )
        if self.policy == "warn":
            self.log.warning(message)
            return summary
        if self.policy == "skip_downstream":
            from airflow.sdk.exceptions import AirflowSkipException

            self.log.warning(message)
            raise AirflowSkipException(f"Skipping downstream tasks: {message}")
        raise DataValidationError(message)
