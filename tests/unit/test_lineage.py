"""OpenLineage naming and facets (``airflow_mlops.lineage``) and the hook-level lineage of ``@task`` helpers.

The names must match on both sides of every edge of the lineage graph: what an operator writes
and what the next task (an operator, or a ``@task`` through Airflow's hook lineage and the
OpenLineage provider's asset converters) reads are compared here as the provider emits them.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
import pytest
from airflow_mlops import lineage

SNAPSHOT_FILE = "/data/datasets/flights/data/20130601T000000_20130701T000000/0123456789abcdef.parquet"
CURRENT_FILE = "/data/datasets/flights/current/20130601T000000_20130701T000000.parquet"


# -- naming --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (SNAPSHOT_FILE, ("file", "/data/datasets/flights")),
        (CURRENT_FILE, ("file", "/data/datasets/flights")),
        ("/data/datasets/weather/current", ("file", "/data/datasets/weather")),
        ("/data/datasets/weather/current/", ("file", "/data/datasets/weather")),
        ("/data/tables/flights/0123/train.parquet", ("file", "/data/tables/flights/0123/train.parquet")),
        ("file:///data/in/2013-06-*.csv", ("file", "/data/in")),
        ("file://nas01/exports/flights.csv", ("file://nas01", "/exports/flights.csv")),
        ("s3://bucket/raw/flights/2013-06-*.parquet", ("s3://bucket", "raw/flights")),
        ("s3://aws_default@bucket/raw/flights.csv", ("s3://bucket", "raw/flights.csv")),
        ("gcs://bucket/raw/x.parquet", ("gs://bucket", "raw/x.parquet")),
        (
            "s3://bucket/root/flights/data/20130601T000000_20130701T000000/0123456789abcdef.parquet",
            ("s3://bucket", "root/flights"),
        ),
    ],
)
def test_paths_are_named_by_the_openlineage_spec_and_snapshots_by_their_dataset(path, expected):
    assert lineage.path_dataset(path) == expected


def test_a_snapshot_file_keeps_its_own_name_when_asked_and_its_version_is_its_stem():
    assert lineage.path_dataset(SNAPSHOT_FILE, logical=False) == ("file", SNAPSHOT_FILE)
    assert lineage.snapshot_root(SNAPSHOT_FILE) == ("/data/datasets/flights", "0123456789abcdef")
    assert lineage.snapshot_root(CURRENT_FILE) == ("/data/datasets/flights", None)
    # a file merely named like a version, outside the layout, is not a snapshot
    assert lineage.snapshot_root("/data/x/0123456789abcdef.parquet") is None


def test_local_names_are_absolute_with_symlinks_resolved(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "flights").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    assert lineage.path_dataset("link/flights") == ("file", str(real.resolve() / "flights"))


def test_ingest_callables_are_named_by_the_file_they_read_or_by_their_import_path():
    from airflow_mlops.example_data.nycflights13 import load_flights, table_file

    expected = ("file", str(table_file("flights").resolve()))
    assert lineage.callable_dataset(load_flights) == expected
    assert lineage.callable_dataset("airflow_mlops.example_data.nycflights13:load_flights") == expected
    assert lineage.callable_dataset(pd.DataFrame) == ("python", "pandas.core.frame:DataFrame")
    assert lineage.callable_dataset("mypkg.sources.load") == ("python", "mypkg.sources:load")


def test_mlflow_feast_seldon_and_drift_names():
    assert lineage.mlflow_namespace("https://user:secret@mlflow.example.com:8443/") == (
        "https://mlflow.example.com:8443"
    )
    assert lineage.run_model_dataset("http://127.0.0.1:5000", "abc") == (
        "http://127.0.0.1:5000",
        "runs/abc/model",
    )
    assert lineage.model_version_dataset("http://127.0.0.1:5000/", "flights_delay", 3) == (
        "http://127.0.0.1:5000",
        "models/flights_delay/versions/3",
    )
    assert lineage.model_uri_dataset("runs:/abc/model", "http://t", "http://r") == (
        "http://t",
        "runs/abc/model",
    )
    assert lineage.model_uri_dataset("models:/m/2", "http://t", "http://r") == (
        "http://r",
        "models/m/versions/2",
    )
    assert lineage.feature_view_dataset("weather_hourly", "flights") == ("feast://flights", "weather_hourly")
    assert lineage.deployment_dataset("flights-delay") == (
        f"seldon://{socket.gethostname()}",
        "flights-delay",
    )
    assert lineage.deployment_dataset(
        "flights-delay", mode="kubernetes", host="10.0.0.1:443", k8s_namespace="models"
    ) == ("seldon://10.0.0.1:443", "models/flights-delay")
    assert lineage.drift_uri("flights-delay") == "x-mlops://drift/flights-delay"
    assert lineage.drift_dataset("flights-delay") == ("x-mlops://drift", "flights-delay")
    # a drift Asset of the user's own naming wins
    assert lineage.drift_dataset("d", "x-mlops://monitoring/d-drift") == ("x-mlops://monitoring", "d-drift")


def test_paths_in_task_arguments():
    found = lineage.paths_in(
        {"train": __file__, "nested": [__file__, "s3://b/k.parquet"], "lr": 0.1, "name": "model"}
    )
    assert found == [__file__, "s3://b/k.parquet"]


@pytest.mark.parametrize(
    "dataset",
    [
        ("file", "/data/datasets/flights"),
        ("feast://flights", "weather_hourly"),
        ("x-mlops://drift", "flights-delay"),
    ],
)
def test_asset_uris_convert_back_to_the_same_dataset_through_airflows_converters(dataset):
    """Hook lineage carries Airflow Assets: the registered converters must give the name back."""
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset
    from airflow.sdk import Asset

    converted = translate_airflow_asset(Asset(uri=lineage.dataset_uri(dataset)), None)
    assert (converted.namespace, converted.name) == dataset


def test_the_example_drift_asset_is_the_dataset_the_drift_check_writes():
    """The retraining DAG's inlet (the drift Asset) and the pipeline's drift verdict are one dataset."""
    import sys

    from airflow.providers.openlineage.utils.utils import translate_airflow_asset

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dags"))
    try:
        from include.flights_pipeline import DEPLOYMENT_NAME, DRIFT
    finally:
        sys.path.pop(0)
    converted = translate_airflow_asset(DRIFT, None)
    assert (converted.namespace, converted.name) == lineage.drift_dataset(DEPLOYMENT_NAME)


def test_feast_asset_uris_need_a_project_and_a_view():
    from airflow.sdk import Asset

    asset = lineage.create_feature_view_asset(project="flights", view="weather_hourly")
    assert asset.uri == "feast://flights/weather_hourly"
    with pytest.raises(ValueError, match="must name"):
        Asset(uri="feast://flights")


# -- facets --------------------------------------------------------------------------------------

FACETS_DIR = Path(lineage.__file__).parent / "lineage_facets"


def _custom_examples() -> dict[str, dict]:
    return {
        "SnapshotDatasetFacet": {"dataset": "flights", "version": "0123456789abcdef", "rows": 3},
        "TrainingRunDatasetFacet": {"runId": "r1", "metrics": {"auc": 0.7}, "numProc": 2},
        "ModelVersionDatasetFacet": {"name": "m", "version": "1", "aliases": ["champion"]},
        "DeploymentDatasetFacet": {"deployment": "d", "mode": "local", "predictors": [{"version": "1"}]},
        "DriftDatasetFacet": {"isDrift": True, "driftScore": 0.5, "driftedFeatures": ["temp"]},
        "GateRunFacet": {"modelName": "m", "outcome": "promote", "challengerVersion": "2"},
    }


@pytest.mark.parametrize("name", sorted(lineage.CUSTOM_FACETS))
def test_custom_facets_carry_our_producer_and_a_schema_shipped_with_the_package(name):
    import jsonschema
    from openlineage.client.serde import Serde

    key, facet = lineage.custom_facet(name, **_custom_examples()[name])
    assert key == lineage.CUSTOM_FACETS[name] and key.startswith("airflowMlops_")
    payload = json.loads(Serde.to_json(facet))
    assert payload["_producer"] == lineage.PRODUCER
    assert payload["_schemaURL"] == f"{lineage.SCHEMA_BASE}{name}.json#/$defs/{name}"
    schema = json.loads((FACETS_DIR / f"{name}.json").read_text())
    assert schema["properties"] == {key: {"$ref": f"#/$defs/{name}"}}
    _base, own = schema["$defs"][name]["allOf"]
    # the documented fields are exactly the class's fields, and the payload validates
    fields = {a.name for a in type(facet).__attrs_attrs__} - {"_producer", "_schemaURL", "_deleted"}
    assert set(own["properties"]) == fields
    jsonschema.validate(payload, own)


def test_data_quality_facets_from_great_expectations_records():
    records = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}, "success": True,
         "observed": 40},
        {"type": "expect_column_values_to_not_be_null", "column": "origin", "kwargs": {"column": "origin"},
         "success": False, "element_count": 40, "unexpected_count": 1},
        {"type": "expect_column_values_to_be_between", "column": "distance",
         "kwargs": {"column": "distance", "min_value": 10, "max_value": 6000}, "success": False,
         "element_count": 40, "missing_count": 0, "unexpected_count": 1},
    ]  # fmt: skip
    facets = lineage.data_quality_facets(records, rows=40, policy="warn")
    assertions = facets["dataQualityAssertions"].assertions
    assert [(a.assertion, a.column, a.success, a.severity) for a in assertions] == [
        ("expect_table_row_count_to_be_between", None, True, "warn"),
        ("expect_column_values_to_not_be_null", "origin", False, "warn"),
        ("expect_column_values_to_be_between", "distance", False, "warn"),
    ]
    assert assertions[0].actual == "40" and json.loads(assertions[2].expected) == {
        "min_value": 10,
        "max_value": 6000,
    }
    metrics = facets["dataQualityMetrics"]
    assert metrics.rowCount == 40
    assert {c: m.nullCount for c, m in metrics.columnMetrics.items()} == {"origin": 1, "distance": 0}


def test_snapshot_output_has_schema_version_statistics_and_interval(tmp_path):
    from airflow_mlops.datasets import write_snapshot

    df = pd.DataFrame({"origin": ["EWR", "JFK"], "temp": [20.5, 21.0]})
    start, end = pd.Timestamp("2013-06-01", tz="UTC"), pd.Timestamp("2013-07-01", tz="UTC")
    snapshot, _ = write_snapshot(df, tmp_path, "weather", start, end)
    out = lineage.snapshot_output(snapshot.to_dict())
    assert (out.namespace, out.name) == ("file", str((tmp_path / "weather").resolve()))
    assert out.facets["version"].datasetVersion == snapshot.version
    assert [(f.name, f.type) for f in out.facets["schema"].fields] == [
        ("origin", "string"),
        ("temp", "double"),
    ]
    assert out.facets["airflowMlops_snapshot"].intervalStart == start.isoformat()
    assert out.outputFacets["outputStatistics"].rowCount == 2
    assert out.outputFacets["outputStatistics"].size == Path(snapshot.path).stat().st_size


# -- hook-level lineage of the @task helpers -------------------------------------------------------


@pytest.fixture
def collector(monkeypatch):
    """A real hook lineage collector (with no lineage reader plugin Airflow hands out a no-op one)."""
    import airflow.sdk.lineage as sdk_lineage

    real = sdk_lineage.HookLineageCollector()
    monkeypatch.setattr(sdk_lineage, "get_hook_lineage_collector", lambda: real)
    return real


def _collected(collector) -> tuple[list, list]:
    """What the OpenLineage provider makes of the collected Assets (as ``ExtractorManager`` does)."""
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset

    found = collector.collected_assets

    def names(infos):
        return [(d.namespace, d.name) for i in infos if (d := translate_airflow_asset(i.asset, i.context))]

    return names(found.inputs), names(found.outputs)


def test_read_table_write_table_and_write_snapshot_report_what_a_task_read_and_wrote(tmp_path, collector):
    from airflow_mlops.datasets import read_table, write_snapshot, write_table

    df = pd.DataFrame({"carrier": ["UA"], "n": [1.0]})
    start, end = pd.Timestamp("2013-06-01", tz="UTC"), pd.Timestamp("2013-07-01", tz="UTC")
    snapshot, _ = write_snapshot(df, tmp_path / "datasets", "flights", start, end)
    read_table(snapshot.path)
    table = write_table(df, tmp_path / "tables" / "v1" / "train.parquet")
    inputs, outputs = _collected(collector)
    flights = lineage.path_dataset(snapshot.path)
    assert flights == ("file", str((tmp_path / "datasets" / "flights").resolve()))
    assert inputs == [flights]
    assert outputs == [flights, ("file", str(Path(table).resolve()))]
    # the same names as the operators': the ingest task's output, the training task's input
    assert lineage.snapshot_output(snapshot.to_dict()).name == flights[1]
    assert lineage.file_input(table).name == str(Path(table).resolve())


def test_historical_features_reports_the_feature_views_it_reads(collector):
    from airflow_mlops.hooks.feast import FeastHook

    class Store:
        def get_historical_features(self, entity_df, features):
            return type("Job", (), {"to_df": lambda self: entity_df.assign(temp=1.0)})()

    hook = FeastHook()
    hook.__dict__.update(store=Store(), extras={"project": "flights"})
    entities = pd.DataFrame({"origin": ["EWR"], "event_timestamp": [pd.Timestamp("2013-06-01", tz="UTC")]})
    hook.historical_features(entities, ["weather_hourly:temp", "carrier_daily:carrier_flights"])
    inputs, outputs = _collected(collector)
    assert sorted(inputs) == [("feast://flights", "carrier_daily"), ("feast://flights", "weather_hourly")]
    assert outputs == []
