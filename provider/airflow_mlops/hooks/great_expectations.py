"""Great Expectations 1.x: run an expectation suite on a pandas DataFrame.

The GE context is built only when a validation runs (never at DAG-parse time): ``import
great_expectations`` alone costs ~17 s. Suites travel as plain dicts
``{"name", "expectations": [{"type", "kwargs", "meta"}]}`` so they can be stored next to
the result, diffed and read without GE; :func:`load_suite` turns every accepted form
(dict, JSON file, GE objects, a callable, a :class:`ProfiledSuite`) into one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlparse

from airflow.sdk import BaseHook

from airflow_mlops._imports import require

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class ProfiledSuite:
    """
    A suite profiled, when the task runs, from a reference snapshot (see :func:`profile_suite`).

    :param reference_path: Parquet file of the reference data, e.g. a known-good month (templated).
    :param name: name of the suite.
    :param margin: numeric ranges are the reference's ``quantiles`` widened by this fraction
        of the inter-quantile span on each side.
    :param quantiles: lower and upper quantile of the reference giving a numeric range.
    :param mostly: share of rows that must lie in a numeric range (tails beyond the
        quantiles are normal; a shifted or rescaled column moves most rows out).
    :param max_categories: string columns with at most this many distinct values get a value set.
    :param ignore_columns: columns that get schema and null checks but no range or value set.
    """

    reference_path: str
    name: str = "profiled"
    margin: float = 0.5
    quantiles: tuple[float, float] = (0.01, 0.99)
    mostly: float = 0.99
    max_categories: int = 20
    ignore_columns: Sequence[str] = field(default_factory=tuple)

    #: rendered by the operator like its own template fields (Airflow renders nested objects)
    template_fields: ClassVar[Sequence[str]] = ("reference_path",)

    def build(self) -> dict[str, Any]:
        from airflow_mlops import storage
        from airflow_mlops.datasets import load_parquet

        path = storage.as_path(self.reference_path)  # a file, or an object-store URL
        if not path.exists():
            raise FileNotFoundError(
                f"Reference snapshot {self.reference_path} for the profiled suite '{self.name}' does not "
                "exist; point reference_path at a Parquet snapshot of known-good data."
            )
        suite = profile_suite(
            load_parquet(path),
            self.name,
            margin=self.margin,
            quantiles=self.quantiles,
            mostly=self.mostly,
            max_categories=self.max_categories,
            ignore_columns=self.ignore_columns,
        )
        suite["meta"]["reference_path"] = storage.location(path)
        return suite


def _expectation(type_: str, meta: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    exp: dict[str, Any] = {"type": type_, "kwargs": kwargs}
    if meta:
        exp["meta"] = meta
    return exp


def _type_list(series: pd.Series) -> list[str] | None:
    """The type list GE 1.24 accepts for this column, or None where it cannot check one."""
    from pandas.api import types

    if types.is_datetime64_any_dtype(series):
        return None  # GE 1.24 rejects every type name for tz-aware columns (observes 'Timestamp')
    if types.is_object_dtype(series):
        return ["str"]  # GE checks an object column value by value, by Python type name
    return [str(series.dtype)]


def _numeric_range(
    values: pd.Series, margin: float, quantiles: tuple[float, float], integer: bool
) -> tuple[float, float]:
    import math

    lo, hi = (float(q) for q in values.quantile(list(quantiles)))
    pad = margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    return (math.floor(lo), math.ceil(hi)) if integer else (lo, hi)


def profile_suite(
    df: pd.DataFrame,
    name: str = "profiled",
    *,
    margin: float = 0.5,
    quantiles: tuple[float, float] = (0.01, 0.99),
    mostly: float = 0.99,
    max_categories: int = 20,
    ignore_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """
    Build a suite (plain dict) from a reference frame.

    * the exact column set, and each column's dtype;
    * columns without nulls in the reference must stay without nulls;
    * numeric columns: values within the ``quantiles`` widened by ``margin`` x their span,
      ``mostly`` of the rows. A column constant in the reference (a partition key such as
      ``month``) says nothing about its range and gets none;
    * string columns with at most ``max_categories`` distinct values: that value set.

    Datetime columns get neither a range (they move with the data interval) nor a type check.

    :param df: the reference data.
    :param name: name of the suite.
    :return: ``{"name", "expectations", "meta": {"profiled_rows", ...}}``.
    """
    from pandas.api import types

    exps = [_expectation("expect_table_columns_to_match_set", column_set=list(df.columns), exact_match=True)]
    for column in df.columns:
        series = df[column]
        type_list = _type_list(series)
        if type_list:
            exps.append(
                _expectation("expect_column_values_to_be_in_type_list", column=column, type_list=type_list)
            )
        if series.notna().all():
            exps.append(_expectation("expect_column_values_to_not_be_null", column=column))
        values = series.dropna()
        if column in ignore_columns or values.empty:
            continue
        if types.is_numeric_dtype(series) and not types.is_bool_dtype(series):
            if values.nunique() <= 1:
                continue
            lo, hi = _numeric_range(values, margin, quantiles, types.is_integer_dtype(series))
            exps.append(
                _expectation(
                    "expect_column_values_to_be_between",
                    column=column,
                    min_value=lo,
                    max_value=hi,
                    mostly=mostly,
                )
            )
        elif types.is_object_dtype(series) or types.is_string_dtype(series):
            distinct = values.unique()
            if len(distinct) <= max_categories and all(isinstance(v, str) for v in distinct):
                exps.append(
                    _expectation(
                        "expect_column_values_to_be_in_set", column=column, value_set=sorted(distinct)
                    )
                )
    meta = {"profiled_rows": len(df), "margin": margin, "quantiles": list(quantiles), "mostly": mostly}
    return {"name": name, "expectations": exps, "meta": meta}


def _expectation_dict(obj: Any) -> dict[str, Any]:
    """A GE ``Expectation`` (or an expectation dict) as ``{"type", "kwargs", "meta"}``."""
    if isinstance(obj, dict):
        return obj
    config = getattr(obj, "configuration", None)
    if config is None:
        raise TypeError(
            f"{obj!r} is not an expectation: pass great_expectations.expectations.* objects "
            "or dicts {'type': ..., 'kwargs': {...}}."
        )
    data = config.to_json_dict()
    kwargs = {k: v for k, v in data.get("kwargs", {}).items() if k != "batch_id"}
    return {"type": data["type"], "kwargs": kwargs, **({"meta": data["meta"]} if data.get("meta") else {})}


def load_suite(suite: Any) -> dict[str, Any]:
    """
    A suite as a plain dict ``{"name", "expectations": [{"type", "kwargs"}]}``.

    :param suite: a dict; the path of a JSON file holding one; a list of GE ``Expectation``
        objects (or expectation dicts); a GE ``ExpectationSuite``; a :class:`ProfiledSuite`
        (profiled now); or a callable returning any of these.
    """
    if isinstance(suite, ProfiledSuite):
        data = suite.build()
    elif isinstance(suite, dict):
        data = suite
    elif isinstance(suite, str | os.PathLike):
        path = Path(suite)
        if not path.exists():
            raise FileNotFoundError(f"Expectation suite file {path} does not exist.")
        data = json.loads(path.read_text())
    elif isinstance(suite, list | tuple):
        data = {"name": "suite", "expectations": [_expectation_dict(e) for e in suite]}
    elif hasattr(suite, "expectations") and hasattr(suite, "name"):  # a GE ExpectationSuite
        data = {"name": suite.name, "expectations": [_expectation_dict(e) for e in suite.expectations]}
    elif callable(suite):
        return load_suite(suite())
    else:
        raise TypeError(
            f"Cannot read an expectation suite from {type(suite).__name__}: pass a dict, a JSON file "
            "path, a list of expectations, an ExpectationSuite, a ProfiledSuite or a callable."
        )
    if not data.get("expectations"):
        raise ValueError("The expectation suite has no expectations; add at least one.")
    missing = [i for i, exp in enumerate(data["expectations"]) if not exp.get("type")]
    if missing:
        raise ValueError(f"Expectations at positions {missing} have no 'type'; name the GE expectation.")
    return data


def _describe_failure(res: Any) -> str:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    detail = res.result or {}
    parts = [f"{cfg.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"]
    if "unexpected_count" in detail:
        parts.append(
            f"{detail['unexpected_count']} unexpected ({detail.get('unexpected_percent') or 0:.2f}%), "
            f"e.g. {detail.get('partial_unexpected_list', [])[:5]}"
        )
    elif "observed_value" in detail:
        parts.append(f"observed {detail['observed_value']!r}")
    for message in _exception_messages(res.exception_info or {}):
        parts.append(f"error: {message}")
    return ": ".join(parts)


def _result_record(res: Any) -> dict[str, Any]:
    """One expectation's outcome as JSON-safe data: type, column, arguments, success and what GE
    measured (``observed``, ``element_count``, ``missing_count`` (nulls), ``unexpected_count``)."""
    import json

    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    detail = res.result or {}
    record: dict[str, Any] = {
        "type": cfg.type,
        "column": kwargs.get("column"),
        "kwargs": json.loads(json.dumps(kwargs, default=str)),
        "success": bool(res.success),
    }
    for key in ("observed_value", "element_count", "missing_count", "unexpected_count"):
        if detail.get(key) is not None:
            value = detail[key]
            record["observed" if key == "observed_value" else key] = json.loads(
                json.dumps(value, default=str)
            )
    return record


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


def _errored(res: Any) -> bool:
    return bool(_exception_messages(res.exception_info or {}))


#: column map expectations about the schema: a wrong type is the column's problem, not the rows'
_SCHEMA_EXPECTATIONS = frozenset(
    {"expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"}
)


def _row_level(res: Any) -> bool:
    """Whether removing the unexpected rows fixes this result (a column map expectation)."""
    return (
        "unexpected_index_list" in (res.result or {})
        and res.expectation_config.type not in _SCHEMA_EXPECTATIONS
        and not _errored(res)
    )


def quiet_great_expectations() -> None:
    """
    Great Expectations' set-up chatter into the task log at DEBUG: it logs ~100 INFO lines while it
    is imported ("Skipping registering function ...") and one per context ("Created temporary
    directory ..."). Its warnings and errors keep their level; progress bars are turned off per
    context (``ProgressBarsConfig``), and so are the usage statistics of the GE releases that send
    them (``GX_ANALYTICS_ENABLED``, unless set). Idempotent.
    """
    from airflow_mlops.library_logs import route_logger

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    route_logger("great_expectations")


class ValidationSession:
    """
    One GE context for several validations of the same suite, e.g. a snapshot and its
    quarantine-cleaned version; optionally rendering GE's Data Docs for each of them.

    Use through :meth:`GreatExpectationsHook.session`.
    """

    def __init__(self, spec: dict[str, Any], project_dir: Path, data_docs: bool) -> None:
        quiet_great_expectations()  # before the import: importing GE alone logs ~100 INFO lines
        gx = require("great_expectations", "great-expectations")
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        self._gx = gx
        self.project_dir = project_dir
        self.data_docs = data_docs
        self._runs = 0
        # a file context in a folder of ours: its local site renders Data Docs, and unlike
        # an ephemeral context it leaves no temporary folders behind once that folder goes
        self.context = (
            gx.get_context(mode="file", project_root_dir=str(project_dir))
            if data_docs
            # without Data Docs nothing needs the disk: an in-memory context skips writing the
            # suite and each validation definition to YAML/JSON files (~20% of a month's run)
            else gx.get_context(mode="ephemeral")
        )
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.batch = (
            self.context.data_sources.add_pandas("airflow")
            .add_dataframe_asset("snapshot")
            .add_batch_definition_whole_dataframe("whole")
        )
        gx_suite = gx.ExpectationSuite(name=spec.get("name", "suite"))
        for exp in spec["expectations"]:
            gx_suite.add_expectation_configuration(
                ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}), meta=exp.get("meta"))
            )
        self.suite = self.context.suites.add(gx_suite)

    @property
    def site_dir(self) -> Path:
        return self.project_dir / "gx" / "uncommitted" / "data_docs" / "local_site"

    def validate(self, df: pd.DataFrame, run_name: str = "airflow", unexpected_rows: bool = False) -> dict:
        """
        Run the suite on ``df``.

        :param run_name: names this validation on its Data Docs page.
        :param unexpected_rows: also return ``unexpected_rows``: the positions (``df`` must have a
            default RangeIndex) of the unexpected rows of every *failed* row-level (column map)
            expectation. Rows an expectation tolerates through ``mostly`` are not included.
        :return: ``{"success", "suite", "statistics", "failures": [readable strings],
            "row_level_failures"`` (the failures that quarantining rows can fix)``, "results"``
            (one record per expectation, :func:`_result_record`)``, "data_docs_page"`` (path
            relative to the site, when rendering)``}``.
        """
        gx = self._gx
        self._runs += 1
        name = f"airflow-{run_name}-{self._runs}"
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=self.batch, suite=self.suite, name=name)
        )
        result_format = "COMPLETE" if unexpected_rows else "SUMMARY"
        page = None
        if not self.data_docs:
            result = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
        else:
            checkpoint = self.context.checkpoints.add(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=[definition],
                    actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                    result_format=result_format,
                )
            )
            run = checkpoint.run(
                batch_parameters={"dataframe": df},
                # an explicit run_time: GE would otherwise try to parse one out of the run name
                run_id=gx.RunIdentifier(run_name=run_name, run_time=datetime.now(UTC)),
            )
            (key, result), *_ = run.run_results.items()
            page = self._page_of(key)
        summary: dict[str, Any] = {
            "success": bool(result.success),
            "suite": self.suite.name,
            "statistics": dict(result.statistics),
            "failures": [_describe_failure(r) for r in result.results if not r.success],
            "row_level_failures": [
                _describe_failure(r) for r in result.results if not r.success and _row_level(r)
            ],
            # one record per expectation: what OpenLineage's data quality facets report
            "results": [_result_record(r) for r in result.results],
        }
        if page is not None:
            summary["data_docs_page"] = page
        if unexpected_rows:
            rows: set[int] = set()
            for res in result.results:
                if _row_level(res) and not res.success:
                    rows.update(int(i) for i in (res.result or {}).get("unexpected_index_list") or [])
            summary["unexpected_rows"] = sorted(rows)
        return summary

    def _page_of(self, key: Any) -> str:
        urls = self.context.get_docs_sites_urls(resource_identifier=key, site_names=["local_site"])
        page = Path(unquote(urlparse(urls[0]["site_url"]).path))
        return str(page.relative_to(self.site_dir))

    def export_data_docs(self, target: Path) -> Path:
        """Copy the rendered site (index, suite and validation pages) to ``target``."""
        if not self.data_docs:
            raise RuntimeError("This session renders no Data Docs; open it with data_docs=True.")
        shutil.copytree(self.site_dir, target, dirs_exist_ok=True)
        return target


class GreatExpectationsHook(BaseHook):
    """Validate pandas data against Great Expectations suites, with a throwaway context."""

    hook_name = "Great Expectations"

    @contextmanager
    def session(self, suite: Any, data_docs: bool = False) -> Iterator[ValidationSession]:
        """
        A context for validations of ``suite`` (anything :func:`load_suite` accepts).

        :param data_docs: build GE Data Docs; the session's project lives in a temporary
            folder removed on exit, so copy the site out with ``export_data_docs`` before.
        """
        spec = load_suite(suite)
        with tempfile.TemporaryDirectory(prefix="mlops-gx-") as tmp:
            yield ValidationSession(spec, Path(tmp), data_docs)

    def validate_dataframe(self, df: pd.DataFrame, suite: Any) -> dict[str, Any]:
        """
        Run ``suite`` on ``df``.

        :return: ``{"success", "suite", "statistics", "failures": [readable strings], ...}``.
        """
        with self.session(suite) as session:
            return session.validate(df)


#: what a suite argument may be, for type hints
SuiteLike = dict[str, Any] | str | os.PathLike | Sequence[Any] | ProfiledSuite | Callable[[], Any]
