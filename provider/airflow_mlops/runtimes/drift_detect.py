"""Data-drift check between two parquet files, run inside the *drift runtime*.

This script runs in its own environment (``docker/drift``, or ``.runtimes/drift`` locally):
alibi-detect pins numpy<2 and pydantic<2, so it can never share Airflow's environment. It must
therefore import nothing but the standard library and the packages of
``docker/drift/requirements.txt`` (never ``airflow`` or ``airflow_mlops``). It is driven by a JSON
file in and a JSON file out::

    python drift_detect.py CONFIG_JSON

Config keys (see ``DEFAULTS`` for the optional ones)::

    {"reference": "ref.parquet", "current": "cur.parquet",
     "numeric_features": ["temp", ...], "categorical_features": ["carrier", ...],
     "prediction_column": "prediction" | null,
     "p_val": 0.05, "correction": "bonferroni" | "fdr",
     "max_rows": 20000, "seed": 0,
     "output": "report.json", "plot": "pvalues.png" | null}

Method: rows with a null in any tested column are dropped (counted per side), each side is
subsampled to at most ``max_rows`` rows (deterministic for a given ``seed``), and all features
are tested by a single alibi-detect ``TabularDrift`` detector: Kolmogorov-Smirnov for numeric
features, Chi-squared for categorical ones (codes taken from the union of the categories seen on
either side). One detector means the Bonferroni / FDR correction covers *all* features together;
separate KS and Chi2 detectors would each correct only within their own group. The prediction
column, when given and present in both files, is a separate question (did the score distribution
move?) and gets its own ``KSDrift`` test at the uncorrected ``p_val``.

Exit codes: 0 when the report was written (drift or not), 2 for bad input (message on stderr),
1 for anything unexpected.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2

CORRECTIONS = ("bonferroni", "fdr")
DEFAULTS: dict[str, Any] = {
    "numeric_features": [],
    "categorical_features": [],
    "prediction_column": None,
    "p_val": 0.05,
    "correction": "bonferroni",
    "max_rows": 20000,
    "seed": 0,
    "plot": None,
}
KNOWN_KEYS = {"reference", "current", "output", *DEFAULTS}


class InputError(Exception):
    """Bad configuration or data: reported on stderr with exit code 2."""


# --------------------------------------------------------------------------- config


def load_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"config file {path} must hold a JSON object, got {type(raw).__name__}")
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        print(f"drift_detect: warning: ignoring unknown config keys {unknown}", file=sys.stderr)
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k in ("plot", "max_rows")}}

    for key in ("reference", "current", "output"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise InputError(f"config key {key!r} is required and must be a non-empty string (a path)")
    if cfg["plot"] is not None and (not isinstance(cfg["plot"], str) or not cfg["plot"]):
        raise InputError("config key 'plot' must be a path or null")

    for key in ("numeric_features", "categorical_features"):
        value = cfg[key]
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise InputError(f"config key {key!r} must be a list of column names")
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise InputError(f"config key {key!r} lists {dupes} more than once")
    both = sorted(set(cfg["numeric_features"]) & set(cfg["categorical_features"]))
    if both:
        raise InputError(f"columns {both} are listed as both numeric and categorical features")

    pred = cfg["prediction_column"]
    if pred is not None and (not isinstance(pred, str) or not pred):
        raise InputError("config key 'prediction_column' must be a column name or null")
    if not cfg["numeric_features"] and not cfg["categorical_features"] and pred is None:
        raise InputError("nothing to test: no numeric_features, categorical_features or prediction_column")

    p_val = cfg["p_val"]
    if isinstance(p_val, bool) or not isinstance(p_val, int | float) or not 0 < p_val < 1:
        raise InputError(f"config key 'p_val' must be a number between 0 and 1 (exclusive), got {p_val!r}")
    cfg["p_val"] = float(p_val)
    if cfg["correction"] not in CORRECTIONS:
        raise InputError(
            f"config key 'correction' must be one of {list(CORRECTIONS)}, got {cfg['correction']!r}"
        )
    max_rows = cfg["max_rows"]
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise InputError(f"config key 'max_rows' must be a positive integer or null, got {max_rows!r}")
    seed = cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"config key 'seed' must be a non-negative integer, got {seed!r}")
    return cfg


# --------------------------------------------------------------------------- data


def check_columns(path: str, side: str, required: list[str], optional: str | None) -> bool:
    """Raise InputError naming every required column missing from the file; return whether
    ``optional`` (the prediction column) is present."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise InputError(f"{side} file not found: {path}")
    try:
        names = set(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for corrupt / non-parquet files
        raise InputError(f"cannot read {side} file {path} as parquet: {exc}") from exc
    missing = [c for c in required if c not in names]
    if missing:
        cols = ", ".join(repr(c) for c in missing)
        raise InputError(
            f"column {cols} not found in {side} file {path}"
            if len(missing) == 1
            else f"columns {cols} not found in {side} file {path}"
        )
    return optional is not None and optional in names


def read_side(path: str, side: str, columns: list[str], numeric: list[str]):
    """Read only ``columns``, check numeric ones are numeric, drop rows with nulls."""
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path, columns=columns).to_pandas()
    except Exception as exc:
        raise InputError(f"cannot read columns {columns} from {side} file {path}: {exc}") from exc
    for col in numeric:
        s = df[col]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            continue
        try:  # e.g. parquet decimals arrive as objects
            df[col] = pd.to_numeric(s, errors="raise")
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"column {col!r} in {side} file {path} must be numeric for a KS test, "
                f"but has type {s.dtype} ({exc})"
            ) from exc
    n_before = len(df)
    df = df.dropna(subset=columns).reset_index(drop=True)
    dropped = n_before - len(df)
    if df.empty:
        raise InputError(
            f"{side} file {path} has no rows left after dropping rows with nulls in {columns} "
            f"({n_before} rows read, {dropped} dropped)"
        )
    return df, dropped


def subsample(df, max_rows: int | None, rng):
    if max_rows is None or len(df) <= max_rows:
        return df
    import numpy as np

    idx = np.sort(rng.choice(len(df), size=max_rows, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def encode_categories(ref_col, cur_col):
    """Integer codes for both sides from the union of the categories observed on either side."""
    import numpy as np
    import pandas as pd

    combined = pd.concat([ref_col.astype(object), cur_col.astype(object)], ignore_index=True)
    try:
        codes, uniques = pd.factorize(combined, sort=True)
    except TypeError:  # unorderable mix of types: keep order of first appearance
        codes, uniques = pd.factorize(combined, sort=False)
    codes = codes.astype(np.float64)
    return codes[: len(ref_col)], codes[len(ref_col) :], len(uniques)


# --------------------------------------------------------------------------- detection


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def run_features(ref, cur, numeric: list[str], categorical: list[str], p_val: float, correction: str):
    """One TabularDrift over all features; returns (per-feature results, effective threshold)."""
    import numpy as np
    from alibi_detect.cd import TabularDrift

    names = numeric + categorical
    ref_cols = [ref[c].to_numpy(dtype=np.float64) for c in numeric]
    cur_cols = [cur[c].to_numpy(dtype=np.float64) for c in numeric]
    categories: dict[int, list[int]] = {}
    for j, col in enumerate(categorical):
        r, c, n_cat = encode_categories(ref[col], cur[col])
        ref_cols.append(r)
        cur_cols.append(c)
        categories[len(numeric) + j] = list(range(n_cat))
    x_ref = np.column_stack(ref_cols)
    x_cur = np.column_stack(cur_cols)

    detector = TabularDrift(x_ref, p_val=p_val, categories_per_feature=categories, correction=correction)
    pred = detector.predict(x_cur, drift_type="batch", return_p_val=True, return_distance=True)["data"]
    p_vals = np.asarray(pred["p_val"], dtype=np.float64)
    dist = np.asarray(pred["distance"], dtype=np.float64)
    n = len(names)
    threshold = pred["threshold"]
    if np.ndim(threshold) == 0:
        # Bonferroni: p_val / n. FDR with discoveries: the Benjamini-Hochberg cut-off; the
        # features rejected by BH are exactly those with p below it.
        effective = float(threshold)
    else:
        # FDR without discoveries: alibi returns every rank's threshold; the rank-1 one
        # (p_val / n) is below all p-values by construction, so nothing is flagged.
        effective = p_val / n
    results = {
        name: {
            "test": "chi2" if name in categorical else "ks",
            "p_val": _num(p_vals[i]),
            "distance": _num(dist[i]),
            "drift": bool(p_vals[i] < effective),
        }
        for i, name in enumerate(names)
    }
    if any(r["drift"] for r in results.values()) != bool(pred["is_drift"]):
        raise RuntimeError("per-feature drift flags disagree with alibi-detect's batch decision")
    return results, effective


def run_prediction(ref_pred, cur_pred, p_val: float) -> dict[str, Any]:
    import numpy as np
    from alibi_detect.cd import KSDrift

    detector = KSDrift(np.asarray(ref_pred, dtype=np.float64).reshape(-1, 1), p_val=p_val)
    pred = detector.predict(
        np.asarray(cur_pred, dtype=np.float64).reshape(-1, 1), return_p_val=True, return_distance=True
    )["data"]
    p = float(np.asarray(pred["p_val"]).ravel()[0])
    return {
        "test": "ks",
        "p_val": _num(p),
        "distance": _num(np.asarray(pred["distance"]).ravel()[0]),
        "drift": bool(pred["is_drift"]),
    }


# --------------------------------------------------------------------------- output


def write_plot(path: str, report: dict[str, Any], effective: float | None, pred_name: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, r) for name, r in report["features"].items()]
    if report["prediction"] is not None:
        rows.append((f"prediction: {pred_name}", report["prediction"]))
    rows.sort(key=lambda nr: (nr[1]["p_val"] is None, nr[1]["p_val"] or 0.0), reverse=True)

    p_val = report["threshold"]
    positive = [r["p_val"] for _, r in rows if r["p_val"]] + [p_val] + ([effective] if effective else [])
    floor = min(positive) / 100  # where p-values that underflowed to 0 are drawn
    values = [max(r["p_val"] or 0.0, floor) for _, r in rows]
    colors = ["#d62728" if r["drift"] else "#1f77b4" for _, r in rows]

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.4 * len(rows) + 1.5)))
    bars = ax.barh([name for name, _ in rows], values, color=colors)
    for (_, r), bar in zip(rows, bars, strict=True):
        label = f"p={r['p_val']:.2g}" if r["p_val"] else "p≈0 (underflow)"
        ax.text(bar.get_width() * 1.3, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 5)
    if effective is not None and not math.isclose(effective, p_val):
        ax.axvline(
            effective,
            color="black",
            lw=1.2,
            label=f"feature threshold after {report['correction']} ({effective:.2g})",
        )
    ax.axvline(p_val, color="black", ls="--", lw=1, label=f"p_val = {p_val:g}")
    ax.set_xlabel("p-value (log scale; red = drift)")
    ax.set_title(f"Drift test p-values (n_ref={report['n_reference']}, n_cur={report['n_current']})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_json(path: str, payload: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out)


# --------------------------------------------------------------------------- main


def detect(cfg: dict[str, Any], started: float) -> dict[str, Any]:
    numeric, categorical = cfg["numeric_features"], cfg["categorical_features"]
    features = numeric + categorical
    pred_col = cfg["prediction_column"]

    # validate both files before the (slow) alibi-detect import, so bad input fails fast
    has_pred = [check_columns(cfg[side], side, features, pred_col) for side in ("reference", "current")]
    test_pred = pred_col is not None and all(has_pred)
    if pred_col is not None and not test_pred:
        lacking = [
            f"{side} file {cfg[side]}"
            for side, h in zip(("reference", "current"), has_pred, strict=True)
            if not h
        ]
        where = " nor in the ".join(lacking)
        if not features:
            raise InputError(
                f"nothing to test: no features given and prediction column {pred_col!r} "
                f"not found in the {where}"
            )
        print(
            f"drift_detect: warning: prediction column {pred_col!r} not found in the {where}; "
            "not testing the prediction distribution",
            file=sys.stderr,
        )
    columns = features + ([pred_col] if test_pred and pred_col not in features else [])
    num_columns = numeric + ([pred_col] if test_pred else [])

    import numpy as np

    t0 = time.perf_counter()
    ref, dropped_ref = read_side(cfg["reference"], "reference", columns, num_columns)
    cur, dropped_cur = read_side(cfg["current"], "current", columns, num_columns)
    rng = np.random.default_rng(cfg["seed"])
    ref = subsample(ref, cfg["max_rows"], rng)
    cur = subsample(cur, cfg["max_rows"], rng)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "None of PyTorch, TF..." notice
    import alibi_detect

    import_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    results, effective = ({}, None)
    if features:
        results, effective = run_features(ref, cur, numeric, categorical, cfg["p_val"], cfg["correction"])
    prediction = run_prediction(ref[pred_col], cur[pred_col], cfg["p_val"]) if test_pred else None
    detect_s = time.perf_counter() - t0

    drifted = [name for name, r in results.items() if r["drift"]]
    report = {
        "is_drift": bool(drifted) or bool(prediction and prediction["drift"]),
        "drift_score": len(drifted) / len(results) if results else 0.0,
        "threshold": cfg["p_val"],
        "correction": cfg["correction"],
        # per-feature p-value cut-off after the correction (the prediction uses `threshold`)
        "effective_threshold": effective,
        "features": results,
        "prediction": prediction,
        "prediction_column": pred_col if test_pred else None,
        "drifted_features": drifted,
        "n_reference": len(ref),
        "n_current": len(cur),
        "dropped": {"reference": dropped_ref, "current": dropped_cur},
        "detector": f"alibi-detect {alibi_detect.__version__}",
        "timings": {
            "load_s": round(load_s, 3),
            "import_s": round(import_s, 3),
            "detect_s": round(detect_s, 3),
        },
    }
    if cfg["plot"]:
        write_plot(cfg["plot"], report, effective, pred_col)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return report


def summary(report: dict[str, Any]) -> str:
    n = len(report["features"])
    pred = report["prediction"]
    parts = [
        "DRIFT" if report["is_drift"] else "no drift",
        f"{len(report['drifted_features'])}/{n} features drifted"
        + (f" ({', '.join(report['drifted_features'])})" if report["drifted_features"] else ""),
    ]
    if pred is not None:
        parts.append(f"prediction {'drifted' if pred['drift'] else 'stable'} (p={pred['p_val']:.3g})")
    parts.append(f"n_reference={report['n_reference']} n_current={report['n_current']}")
    parts.append(f"{report['correction']} p_val={report['threshold']:g}")
    return "drift_detect: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: drift_detect.py CONFIG_JSON", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg = load_config(argv[0])
        report = detect(cfg, started)
    except InputError as exc:
        print(f"drift_detect: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_json(cfg["output"], report)
    print(f"drift report: {cfg['output']}")
    print(summary(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
