"""The drift test's configuration, built in one place for every caller of the drift runtime.

``DriftDetectOperator`` (a window checked in a DAG run) and ``DriftEventTrigger`` (windows of
served traffic) run the same test — ``runtimes/drift_detect.py`` in the drift runtime, on a
``config.json`` — with the same settings and defaults; :func:`drift_config` writes that file's
content for both, and :func:`write_config` stores it beside the report.

Only the standard library here: the trigger module imports this in the triggerer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the corrections of the family of tests the runtime knows
CORRECTIONS = ("bonferroni", "fdr")
#: the defaults of both callers' arguments
DEFAULT_P_VAL = 0.05
DEFAULT_CORRECTION = "bonferroni"
DEFAULT_MAX_ROWS = 5000
#: the sampling seed: a window checked twice gets the same verdict
SEED = 0
#: the files of one check, in its output folder
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
PLOT_FILE = "pvalues.png"


def check_settings(
    correction: str, p_val: float, max_rows: int | None, min_effect_size: float | None = None
) -> None:
    """Refuse settings the runtime would refuse, when the DAG is parsed rather than at each check.

    :raises ValueError: naming the argument.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be 'bonferroni' or 'fdr', got {correction!r}")
    if not 0 < p_val < 1:
        raise ValueError(f"p_val must be between 0 and 1, got {p_val!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1 (or None: no cap), got {max_rows!r}")
    if min_effect_size is not None and not 0 <= min_effect_size < 1:
        raise ValueError(
            f"min_effect_size must be in [0, 1) (a KS or total variation distance; None: off), "
            f"got {min_effect_size!r}"
        )


def drift_config(
    *,
    reference: str | Path,
    current: str | Path,
    out_dir: str | Path,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str] = (),
    prediction_column: str | None = None,
    p_val: float = DEFAULT_P_VAL,
    correction: str = DEFAULT_CORRECTION,
    mmd: bool = False,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    min_effect_size: float | None = None,
) -> dict[str, Any]:
    """The drift runtime's config: test ``current`` against ``reference``; report and plot in ``out_dir``."""
    out = Path(out_dir)
    return {
        "reference": str(reference),
        "current": str(current),
        "numeric_features": list(numeric_features),
        "categorical_features": list(categorical_features),
        "prediction_column": prediction_column,
        "p_val": p_val,
        "correction": correction,
        "mmd": mmd,
        "max_rows": max_rows,
        "min_effect_size": min_effect_size,
        "seed": SEED,
        "output": str(out / REPORT_FILE),
        "plot": str(out / PLOT_FILE),
    }


def write_config(config: dict[str, Any]) -> Path:
    """Store ``config`` as ``config.json`` beside its report; its path (the runtime's argument)."""
    path = Path(config["output"]).with_name(CONFIG_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path
