"""Watch a deployment's inference log and announce drift: the event source of retraining.

Used by an ``AssetWatcher`` so a retraining DAG scheduled on the asset runs within seconds of
drifted traffic, instead of waiting for a cron check::

    from airflow.sdk import Asset, AssetWatcher
    from airflow_mlops.triggers.drift import DriftEventTrigger

    drift = Asset(
        "flights_delay_drift",
        watchers=[AssetWatcher(
            name="flights_delay_serving_drift",
            trigger=DriftEventTrigger(deployment_name="flights-delay", numeric_features=["temp", ...]),
        )],
    )
    with DAG("retrain", schedule=[drift]): ...
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

CURSOR_KEY = "drift_cursor"
#: the request column that carries each row's event time (epoch seconds), by convention
EVENT_TIME = "event_time"


class DriftEventTrigger(BaseEventTrigger):
    """
    Score each new window of served requests against the served version's training data.

    Every ``poll_interval`` seconds it reads the inference log after its cursor (a file and the
    rows of the next file already used); once it holds ``window_rows`` rows of the version now
    serving, exactly those rows — a window may end inside a file — are tested in the
    drift runtime (alibi-detect: Kolmogorov-Smirnov per numeric feature, Chi-squared per
    categorical one, one family corrected for multiple tests; MMD on the joint numeric features
    as an option) against the ``reference_path`` the deployment recorded for that version. The
    report of every window is kept under ``[mlops] data_dir``/drift/watchers/<deployment>/.

    It fires once per drifted window — never twice for one window: the cursor moves past a
    window before its event is yielded and is persisted (in Airflow's asset state store when
    run by the triggerer, else in a file next to the reports) — and not again within
    ``cooldown_seconds`` of its last event, so a retraining under way is not re-triggered by
    the same drift. The event's payload carries ``window`` (the span of ``event_time_column``
    when the requests send one, else when they were served), ``observed`` (when served),
    ``drift_score``, ``drifted_features``, ``p_values``, ``rows``, ``model_name``,
    ``model_version``, ``report``. Windows served during the cooldown are skipped, not tested.
    Each tested window's folder holds ``report.json``, ``pvalues.png`` and ``window.json`` (the
    same fields as the payload, ``is_drift`` too): the MLOps page draws its timeline from them.

    :param deployment_name: the Seldon deployment whose traffic is watched.
    :param numeric_features: inference-log columns tested with Kolmogorov-Smirnov.
    :param categorical_features: columns tested with Chi-squared.
    :param window_rows: rows per tested window.
    :param p_val: significance level of the whole family of tests.
    :param correction: ``bonferroni`` or ``fdr``.
    :param mmd: also run MMD on the joint numeric features.
    :param event_time_column: request column holding each row's event time (epoch seconds);
        the payload's ``window`` then spans the data, which is what a retraining should load.
    :param reference_path: training data to compare with when the deployment recorded none.
    :param cooldown_seconds: no event within this many seconds of the previous one.
    :param poll_interval: seconds between two looks at the log.
    :param max_rows: rows sampled from each side at most.
    :param max_window_age_seconds: rows waiting this long without completing a window are
        dropped (logged), so a window never joins old traffic to new; None keeps them.
    """

    def __init__(
        self,
        deployment_name: str,
        numeric_features: list[str],
        categorical_features: list[str] | None = None,
        window_rows: int = 2000,
        p_val: float = 0.05,
        correction: str = "bonferroni",
        mmd: bool = False,
        event_time_column: str | None = None,
        reference_path: str | None = None,
        cooldown_seconds: float = 600.0,
        poll_interval: float = 5.0,
        max_rows: int = 5000,
        max_window_age_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.deployment_name = deployment_name
        self.numeric_features = list(numeric_features)
        self.categorical_features = list(categorical_features or [])
        self.window_rows = window_rows
        self.p_val = p_val
        self.correction = correction
        self.mmd = mmd
        self.event_time_column = event_time_column
        self.reference_path = reference_path
        self.cooldown_seconds = cooldown_seconds
        self.poll_interval = poll_interval
        self.max_rows = max_rows
        self.max_window_age_seconds = max_window_age_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "deployment_name": self.deployment_name,
                "numeric_features": self.numeric_features,
                "categorical_features": self.categorical_features,
                "window_rows": self.window_rows,
                "p_val": self.p_val,
                "correction": self.correction,
                "mmd": self.mmd,
                "event_time_column": self.event_time_column,
                "reference_path": self.reference_path,
                "cooldown_seconds": self.cooldown_seconds,
                "poll_interval": self.poll_interval,
                "max_rows": self.max_rows,
                "max_window_age_seconds": self.max_window_age_seconds,
            },
        )

    # -- where things are ------------------------------------------------------------------
    @property
    def watch_dir(self) -> Path:
        from airflow_mlops import settings

        return settings.data_dir() / "drift" / "watchers" / self.deployment_name

    # -- the cursor: asset state store in the triggerer, a file otherwise -------------------
    async def _load_cursor(self) -> dict[str, Any]:
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            try:
                return dict(await store.aget(CURSOR_KEY) or {})
            except Exception:
                # the store is Airflow's (3.3+); if it cannot answer, the file keeps the watch going
                self.log.warning(
                    "asset state store unreadable; using %s/cursor.json", self.watch_dir, exc_info=True
                )
                self.asset_state_store = None
        path = self.watch_dir / "cursor.json"
        return json.loads(path.read_text()) if path.exists() else {}

    async def _save_cursor(self, cursor: dict[str, Any]) -> None:
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            try:
                await store.aset(CURSOR_KEY, cursor)
                return
            except Exception:
                self.log.warning(
                    "asset state store not writable; using %s/cursor.json", self.watch_dir, exc_info=True
                )
                self.asset_state_store = None
        path = self.watch_dir / "cursor.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cursor))
        tmp.replace(path)

    # -- one window ------------------------------------------------------------------------
    def _next_window(self, cursor: dict[str, Any]):
        """(exactly ``window_rows`` rows, the cursor after them, served predictor), or Nones when
        there is no full window yet. A window may end inside a log file: the rest starts the next."""
        from airflow_mlops.hooks.seldon import SeldonHook, _main
        from airflow_mlops.inference_log import next_window

        main = _main(SeldonHook.current_state(self.deployment_name))
        if main is None:
            return None, None, None
        found = next_window(
            SeldonHook.inference_log_dir(self.deployment_name),
            rows=self.window_rows,
            after=cursor.get("after"),
            skip=int(cursor.get("skip") or 0),
            model_version=str(main["version"]),
        )
        if found is None:
            return None, None, None
        return found[0], found[1], main

    def _drop_stale(self, cursor: dict[str, Any]) -> bool:
        """Move the cursor past an incomplete window older than ``max_window_age_seconds``."""
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.inference_log import cursor_of, list_files

        if self.max_window_age_seconds is None:
            return False
        log_dir = SeldonHook.inference_log_dir(self.deployment_name)
        if not log_dir.is_dir():
            return False
        files = list_files(log_dir, after=cursor.get("after"))
        if not files or time.time() - files[-1].stat().st_mtime < self.max_window_age_seconds:
            return False
        self.log.info(
            "%s: %d log file(s) older than %.0fs never made a window of %d rows: dropped",
            self.deployment_name,
            len(files),
            self.max_window_age_seconds,
            self.window_rows,
        )
        cursor.update(after=cursor_of(log_dir, files[-1]), skip=0)
        return True

    def _span(self, values) -> dict[str, str]:
        import pandas as pd

        if self.event_time_column:
            ts = pd.to_datetime(values, unit="s", utc=True)
        else:
            ts = pd.to_datetime(values, utc=True)
        return {"start": ts.min().isoformat(), "end": ts.max().isoformat()}

    async def _test(self, df, reference: str, window_id: str) -> dict[str, Any]:
        """Run the drift runtime on one window; its report (a dict)."""
        from airflow_mlops import settings
        from airflow_mlops.hooks.runtime import RuntimeHook

        out = self.watch_dir / window_id
        out.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(df.to_parquet, out / "current.parquet", index=False)
        config = {
            "reference": reference,
            "current": str(out / "current.parquet"),
            "numeric_features": self.numeric_features,
            "categorical_features": self.categorical_features,
            "p_val": self.p_val,
            "correction": self.correction,
            "mmd": self.mmd,
            "max_rows": self.max_rows,
            "seed": 0,
            "output": str(out / "report.json"),
            "plot": str(out / "pvalues.png"),
        }
        (out / "config.json").write_text(json.dumps(config, indent=2))
        runtime = RuntimeHook("drift")
        proc = await asyncio.create_subprocess_exec(
            runtime.python,
            str(settings.runtime_script("drift_detect")),
            str(out / "config.json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=runtime.environ(),
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(
                f"drift check of window {window_id} failed ({proc.returncode}): "
                f"{output.decode(errors='replace')[-2000:]}"
            )
        return json.loads((out / "report.json").read_text())

    def _record(self, window_id: str, summary: dict[str, Any]) -> None:
        """``window.json`` beside the window's report: what was tested, for the MLOps page."""
        path = self.watch_dir / window_id / "window.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(path)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            cursor = await self._load_cursor()
            df, position, main = await asyncio.to_thread(self._next_window, cursor)
            if position is None:
                if await asyncio.to_thread(self._drop_stale, cursor):
                    await self._save_cursor(cursor)
                await asyncio.sleep(self.poll_interval)
                continue
            version = str(main["version"])
            reference = main.get("reference_path") or self.reference_path
            window_id = f"{int(time.time() * 1000)}-v{version}"
            cursor.update(position)
            if not reference:
                self.log.warning(
                    "%s: version %s has no reference data (deploy it with reference_path=): window skipped",
                    self.deployment_name,
                    version,
                )
                await self._save_cursor(cursor)
                continue
            now = time.time()
            if now - float(cursor.get("last_fired") or 0) < self.cooldown_seconds:
                # a retraining is under way: its data is this drift; testing again buys nothing
                self.log.info("%s: window of %d rows skipped (cooling down)", self.deployment_name, len(df))
                await self._save_cursor(cursor)
                continue
            try:
                report = await self._test(df, reference, window_id)
            except Exception:
                # a window that cannot be tested must not stop the watch, nor be retried forever
                self.log.exception(
                    "%s: window %s could not be tested; skipped", self.deployment_name, window_id
                )
                await self._save_cursor(cursor)
                continue
            fire = bool(report["is_drift"])
            self.log.info(
                "%s window %s (%d rows of v%s): drift %s, score %.3f, drifted %s",
                self.deployment_name,
                window_id,
                len(df),
                version,
                report["is_drift"],
                report["drift_score"],
                report["drifted_features"],
            )
            time_column = self.event_time_column if self.event_time_column in df else "ts"
            payload = {
                "deployment": self.deployment_name,
                "model_name": main.get("model_name"),
                "model_version": version,
                "window": self._span(df[time_column]),
                "observed": self._span(df["ts"]) if self.event_time_column else None,
                "rows": len(df),
                "is_drift": fire,
                "drift_score": report["drift_score"],
                "drifted_features": report["drifted_features"],
                "p_values": report.get("p_values"),
                "report": str(self.watch_dir / window_id / "report.json"),
                "window_id": window_id,
                "tested_at": now,
            }
            await asyncio.to_thread(self._record, window_id, payload)
            if fire:
                cursor["last_fired"] = now
            # the cursor moves past the window before its event: one event per window at most
            await self._save_cursor(cursor)
            if fire:
                yield TriggerEvent({**payload, "fired_at": now})
