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
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_mlops.drift_config import (
    DEFAULT_CORRECTION,
    DEFAULT_MAX_ROWS,
    DEFAULT_P_VAL,
    REPORT_FILE,
    check_settings,
    drift_config,
    write_config,
)

CURSOR_KEY = "drift_cursor"
#: the request column that carries each row's event time (epoch seconds), by convention
EVENT_TIME = "event_time"
#: what the watcher says about itself, in its folder: the MLOps page shows its problems
STATUS_FILE = "status.json"
#: what was tested (or why not) in each window's folder
WINDOW_FILE = "window.json"
#: what a watcher publishes of its folder (its status, each window's report, plot and record) for
#: the MLOps page when ``[mlops] data_dir`` is a store: reports before the records naming them
PUBLISHED_RECORDS = (f"*/{REPORT_FILE}", "*/pvalues.png", f"*/{WINDOW_FILE}", STATUS_FILE)
#: unreadable log files listed in the status record at most (the count goes on)
MAX_LISTED_FILES = 200
#: the exclusive lock of one step of the watch, in its folder (two instances never step at once)
LOCK_FILE = ".watch.lock"


class _Unwatchable(Exception):
    """What keeps the watcher from reading the deployment's traffic now; the message says the fix."""


class _Untestable(Exception):
    """Why one window cannot be tested; the message says the fix."""


class DriftEventTrigger(BaseEventTrigger):
    """
    Score each new window of served requests against the served version's training data.

    Every ``poll_interval`` seconds it reads the inference log after its cursor (a file and the
    rows of the next file already used); once it holds ``window_rows`` rows of the version now
    serving, exactly those rows — a window may end inside a file — are tested in the
    drift runtime (alibi-detect: Kolmogorov-Smirnov per numeric feature, Chi-squared per
    categorical one, one family corrected for multiple tests; MMD on the joint numeric features
    as an option) against the ``reference_path`` the deployment recorded for that version. The
    report of every window is kept under ``[mlops] data_dir``/drift/watchers/<deployment>/ (the
    triggerer host's folder, ``[mlops] local_data_dir``, when ``data_dir`` is an object store).

    With ``data_dir`` in an object store the model servers may run on another host: the routing
    and the inference log are then read from where the deployment's supervisor publishes them
    (``<data_dir>/deployments/<deployment>/``, :mod:`airflow_mlops.serving.publish`), and the log
    files after the cursor are copied into the watcher's folder first (removed once passed).

    It fires once per drifted window — never twice for one window: the cursor moves past a
    window before its event is yielded and is persisted (in Airflow's asset state store when
    run by the triggerer, else in a file next to the reports) — and not again within
    ``cooldown_seconds`` of its last event, so a retraining under way is not re-triggered by
    the same drift. The event's payload carries ``window`` (the span of ``event_time_column``
    when the requests send one, else when they were served), ``observed`` (when served),
    ``drift_score``, ``drifted_features``, ``p_values``, ``rows``, ``model_name``,
    ``model_version``, ``report``, ``window_id``, ``fired_at``. Each tested window's folder
    holds ``report.json``, ``pvalues.png`` and ``window.json`` (the same fields as the payload,
    ``is_drift`` too): the MLOps page draws its timeline from them.

    Windows served during the cooldown are tested and recorded too (``window.json`` has
    ``cooldown``: ``{"until", "state"}``); a drifted one is *held*, not dropped. When the cooldown
    ends, the newest held window fires (once, ``state: "fired"``) if its version still serves;
    the older held ones are ``superseded`` (a retraining loads the newest drift), and a held
    window of a version no longer served is ``superseded`` too (the drift was of a model that
    has since been replaced). The status record says ``cooldown_until`` and ``held_window``.

    It survives restarts, and Airflow running it twice (a triggerer failover): a window's id
    is derived from where it starts in the log and from the test settings, never from the
    clock, so every instance computes the same window the same way; one step (read the cursor,
    test the next window, record it, move the cursor) runs under an exclusive lock on the
    watcher's folder (``.watch.lock``: released by the kernel when a process dies), and a
    window whose ``window.json`` exists was decided already: it is passed, never tested or
    fired again. A triggerer killed during a check leaves no record: the restarted watcher
    tests that window again from the cursor. Its folder must be on a file system shared by
    every triggerer that may run it (local disk for one machine).

    Nothing goes wrong silently, and nothing stops the watch: a deployment it cannot read (not
    deployed here — a misspelled name, a Kubernetes deployment — or an unreadable state), an
    inference-log file it cannot read (skipped; the files after it are read), a window it cannot
    test (no reference data, a feature the requests do not carry, the check failing) — each is
    logged at WARNING or ERROR with what to fix, and recorded for the MLOps page: the watcher's
    ``status.json`` (``error``, ``unreadable_files``, ``windows_not_tested``) and, for a window,
    its ``window.json`` with ``error`` instead of a report. The cursor moves past a window that
    cannot be tested, as past a tested one.

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
    :param min_effect_size: for dependent data (hourly weather, anything seasonal): flag a
        feature only when its change is also at least this large — the Kolmogorov-Smirnov
        distance D (0..1) for numeric features and the prediction, the total variation distance
        of the category shares for categorical ones. With thousands of rows that are not
        independent draws, p-values alone flag adjacent fortnights of one month; None (the
        default) tests p-values only. docs/monitoring.md shows false-alarm and detection rates.
    :param max_window_age_seconds: rows waiting this long without completing a window are
        dropped (logged), so a window never joins old traffic to new; None keeps them.
    """

    def __init__(
        self,
        deployment_name: str,
        numeric_features: list[str],
        categorical_features: list[str] | None = None,
        window_rows: int = 2000,
        p_val: float = DEFAULT_P_VAL,
        correction: str = DEFAULT_CORRECTION,
        mmd: bool = False,
        event_time_column: str | None = None,
        reference_path: str | None = None,
        cooldown_seconds: float = 600.0,
        poll_interval: float = 5.0,
        max_rows: int = DEFAULT_MAX_ROWS,
        min_effect_size: float | None = None,
        max_window_age_seconds: float | None = None,
    ) -> None:
        super().__init__()
        check_settings(correction, p_val, max_rows, min_effect_size)
        if window_rows < 1:
            raise ValueError(f"window_rows must be at least 1, got {window_rows!r}")
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
        self.min_effect_size = min_effect_size
        #: the status record as last written (not an argument: run() reads it from its file)
        self._status: dict[str, Any] | None = None
        #: the problem this run has logged last (each is logged once per run of the trigger)
        self._said: str | None = None
        #: run()'s start of the drift worker (a reference, so the task is not collected)
        self._warm_up: asyncio.Future | None = None
        #: the records' copy in the store (``data_dir`` a store); whether a record was written
        #: since it was last synced (so an idle poll lists nothing), and whether publishing fails now
        self._mirror: Any = None
        self._unpublished = True
        self._publish_failing = False

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
                "min_effect_size": self.min_effect_size,
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
        if not path.exists():
            return {}
        try:
            cursor = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise _Unwatchable(
                f"cannot read the watcher's cursor {path}: {err}. Repair it or delete it (the watch then "
                "starts again from the beginning of the inference log)."
            ) from err
        return cursor if isinstance(cursor, dict) else {}

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
        _write_json(self.watch_dir / "cursor.json", cursor)

    # -- what is served, and the next window of it -------------------------------------------
    @staticmethod
    def _published() -> bool:
        """Whether deployments are read from the object store (``[mlops] data_dir`` is one), where
        their supervisors publish them (:mod:`airflow_mlops.serving.publish`): the model servers
        may run on another host than this triggerer."""
        from airflow_mlops import storage

        return storage.data_root_is_remote()

    def _publication(self) -> Any:
        """The deployment's folder in the object store (built in a thread: the amazon provider's
        file system runs an event loop of its own)."""
        from airflow_mlops.serving.publish import published_dir

        return published_dir(self.deployment_name)

    def _log_dir(self) -> Path:
        """The inference log read here: the deployment's own folder, or this watcher's copy of
        what was published to the object store (:meth:`_copy_published_log`)."""
        from airflow_mlops.hooks.seldon import SeldonHook

        if self._published():
            return self.watch_dir / "inference_log"
        return SeldonHook.inference_log_dir(self.deployment_name)

    def _state_file(self) -> Any:
        """The deployment's routing (``current.json``): its own, or the one published to the store."""
        from airflow_mlops.hooks.seldon import SeldonHook
        from airflow_mlops.serving.state import CURRENT

        if self._published():
            return self._publication() / CURRENT
        return SeldonHook.store(self.deployment_name).current_path

    @staticmethod
    def _read_state(state_file: Any):
        """The deployment's state, None when never deployed. :raises ValueError: unreadable."""
        from airflow_mlops.serving.publish import read_published
        from airflow_mlops.serving.state import DeploymentStore

        if isinstance(state_file, Path):
            return DeploymentStore.for_state_file(state_file).read()
        return read_published(state_file)

    def _copy_published_log(self, cursor: dict[str, Any]) -> None:
        """
        Download the published log files after the cursor that this watcher has not copied yet
        into :meth:`_log_dir` (each whole: a download lands under a hidden name first), and
        remove the copies the cursor has passed. The log's order and cursors are the same there.
        """
        from airflow_mlops import storage
        from airflow_mlops.inference_log import list_files

        copies = self._log_dir()
        after = cursor.get("after")
        unused = set(list_files(copies, after=after))
        for path in list_files(copies):
            if path not in unused:
                path.unlink(missing_ok=True)  # used up
        for stored in list_files(self._publication() / "inference_log", after=after):
            partition = stored.parent.name
            if not (copies / partition / stored.name).exists():  # same relative path: cursors hold
                storage.fetch(stored, copies / partition)

    def _served(self) -> dict[str, Any]:
        """The predictor the deployment serves now (``version``, ``reference_path``...).

        :raises _Unwatchable: saying why there is nothing to watch and what to fix.
        """
        from airflow_mlops import storage

        state_file = self._state_file()
        try:
            state = self._read_state(state_file)
        except (OSError, ValueError) as err:  # CorruptState is a ValueError
            raise _Unwatchable(
                f"cannot read the state of deployment {self.deployment_name!r} "
                f"({storage.location(state_file)}): {err}"
            ) from err
        if state is None:
            raise _Unwatchable(self._not_deployed(state_file))
        main = state.main
        if main is None or main.get("version") is None:
            raise _Unwatchable(
                f"deployment {self.deployment_name!r} serves no model version ({state_file} names no main "
                "predictor): nothing to watch until a version is deployed."
            )
        return main

    def _not_deployed(self, state_file: Any) -> str:
        """Why a deployment name has no local state, with the names that do and a guess."""
        import difflib

        from airflow_mlops import storage
        from airflow_mlops.serving.state import CURRENT, deployment_names

        if isinstance(state_file, Path):
            names = deployment_names(state_file.parent.parent.parent)
        else:  # published: every deployment folder in the store with a routing
            names = sorted(p.parent.name for p in state_file.parent.parent.glob(f"*/{CURRENT}"))
        close = difflib.get_close_matches(self.deployment_name, names, n=1)
        guess = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"no local deployment {self.deployment_name!r}: {storage.location(state_file)} does not exist, "
            f"so there is no inference log to watch.{guess} "
            f"Local deployments: {', '.join(names) or 'none yet'}. Fix "
            "DriftEventTrigger(deployment_name=...) if the name is misspelled. A deployment on Kubernetes "
            "(SeldonDeployment) cannot be watched: its traffic is not in a local inference log (see "
            "docs/monitoring.md). A deployment not made yet: the watch starts when it is."
        )

    def _next_window(self, cursor: dict[str, Any], version: str, unreadable: list[tuple[Path, str]]):
        """(exactly ``window_rows`` rows of ``version``, the cursor after them), or None when there
        is no full window yet. A window may end inside a log file: the rest starts the next.
        Unreadable files are skipped and added to ``unreadable``."""
        from airflow_mlops.inference_log import next_window

        if self._published():
            self._copy_published_log(cursor)
        return next_window(
            self._log_dir(),
            rows=self.window_rows,
            after=cursor.get("after"),
            skip=int(cursor.get("skip") or 0),
            model_version=version,
            unreadable=unreadable,
        )

    def _drop_stale(self, cursor: dict[str, Any]) -> bool:
        """Move the cursor past an incomplete window older than ``max_window_age_seconds``."""
        from airflow_mlops.inference_log import cursor_of, list_files

        if self.max_window_age_seconds is None:
            return False
        log_dir = self._log_dir()
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

    def _spans(self, df) -> dict[str, Any]:
        """``window`` (of ``event_time_column`` when the requests carry it, else of serving time)
        and ``observed`` (of serving time, when ``event_time_column`` is set)."""
        served = self._span(df["ts"])
        if not self.event_time_column:
            return {"window": served, "observed": None}
        if self.event_time_column in df:
            try:
                return {"window": self._span(df[self.event_time_column]), "observed": served}
            except (TypeError, ValueError, OverflowError) as err:
                self.log.warning(
                    "%s: column %r holds no epoch seconds (%s): the window spans serving time",
                    self.deployment_name,
                    self.event_time_column,
                    err,
                )
        return {"window": served, "observed": served}

    # -- testing one window -------------------------------------------------------------------
    def _local_reference(self, reference: str | None) -> str | None:
        """
        The reference as a local file: one in an object store is downloaded once per location
        into the watch folder (versions' training data are written once, never changed).
        """
        from airflow_mlops import storage

        if not reference or not storage.is_url(reference):
            return reference
        folder = self.watch_dir / "references" / hashlib.sha256(reference.encode()).hexdigest()[:16]
        cached = folder / storage.as_path(reference).name
        if cached.exists():
            return str(cached)
        try:
            return str(storage.fetch(reference, folder))
        except FileNotFoundError as missing:
            raise _Untestable(
                f"the reference data {reference} is not in the object store ({missing}): restore it, "
                "or redeploy the version with a reference_path that exists"
            ) from None

    def _check_testable(self, df, reference: str | None, version: str) -> None:
        """Raise :class:`_Untestable` when the window cannot be tested, before running the check."""
        from airflow_mlops.inference_log import LOG_COLUMNS

        if not reference:
            raise _Untestable(
                f"version {version} has no reference data to compare with: deploy it with "
                "SeldonDeployOperator(reference_path=...), or give DriftEventTrigger(reference_path=...)"
            )
        if not Path(reference).exists():
            raise _Untestable(
                f"the reference data of version {version}, {reference}, does not exist (moved or deleted?): "
                "restore it, or redeploy the version with a reference_path that exists"
            )
        missing = [c for c in [*self.numeric_features, *self.categorical_features] if c not in df.columns]
        if missing:
            carried = [c for c in df.columns if c not in LOG_COLUMNS and c != EVENT_TIME]
            raise _Untestable(
                f"the requests of version {version} carry no column {', '.join(map(repr, missing))}: fix "
                f"DriftEventTrigger's numeric_features / categorical_features, which name request columns; "
                f"the requests carry {carried}"
            )

    async def _test(self, df, reference: str, window_id: str) -> dict[str, Any]:
        """Run the drift runtime on one window; its report (a dict).

        :raises _Untestable: with the check's own message when it fails.
        """
        from airflow_mlops.drift_worker import DriftWorker, failure_said

        out = self.watch_dir / window_id
        out.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(df.to_parquet, out / "current.parquet", index=False)
        config = drift_config(
            reference=reference,
            current=out / "current.parquet",
            out_dir=out,
            numeric_features=self.numeric_features,
            categorical_features=self.categorical_features,
            p_val=self.p_val,
            correction=self.correction,
            mmd=self.mmd,
            max_rows=self.max_rows,
            min_effect_size=self.min_effect_size,
        )
        config_path = write_config(config)
        try:
            mode = await asyncio.to_thread(_check_mode)
        except ValueError as err:
            raise _Untestable(str(err)) from None
        # the long-lived worker first: alibi-detect imported once, not once per window (local mode)
        local = mode == "local" and not self.mmd
        answer = await asyncio.to_thread(DriftWorker().check, config_path) if local else None
        if answer is not None:
            code, text = answer
        else:
            runtime = await asyncio.to_thread(self._check_runtime, mode, window_id, config_path, reference)
            code, text = await self._test_in_a_process(runtime, config_path)
        if code != 0:
            raise _Untestable(f"the drift check failed (exit code {code}): {failure_said(text)}")
        return json.loads((out / REPORT_FILE).read_text())

    def _check_runtime(self, mode: str, window_id: str, config_path: Path, reference: str):
        """
        Where a window's check runs: the drift runtime (local mode), or, with ``[mlops]
        execution_mode = docker``, a container of the drift image per window (the triggerer of a
        containerised Airflow has no drift runtime of its own).
        """
        from airflow_mlops.hooks.docker import container_name
        from airflow_mlops.hooks.runtime import runtime_hook

        return runtime_hook(
            "drift",
            mode,
            name=container_name("drift", f"watch-{self.deployment_name}", window_id, "check"),
            mounts=[config_path.parent],
            read_only_mounts=[reference],
        )

    async def _test_in_a_process(self, runtime, config_path: Path) -> tuple[int, str]:
        """``drift_detect.py`` as a process of its own (or its container): exit code and output."""
        try:
            args = [runtime.python, runtime.script("drift_detect"), str(config_path)]
            argv = await asyncio.to_thread(runtime.command, args)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=runtime.environ(),
            )
        except Exception as err:  # no drift runtime (or image, or Docker API) here, or it cannot start
            raise _Untestable(f"the drift runtime could not run: {type(err).__name__}: {err}") from err
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:  # the triggerer stops the watch: the check stops with it
            if proc.returncode is None:
                # SIGTERM first: a container's runner stops and removes its container on it
                proc.terminate()
                try:
                    await asyncio.shield(asyncio.wait_for(proc.wait(), 15))
                except TimeoutError:
                    proc.kill()
                    await asyncio.shield(proc.wait())
            raise
        return int(proc.returncode or 0), output.decode(errors="replace")

    def _record(self, window_id: str, summary: dict[str, Any]) -> None:
        """``window.json`` in the window's folder: what was tested, or why it was not, for the MLOps page."""
        _write_json(self.watch_dir / window_id / WINDOW_FILE, summary)
        self._unpublished = True

    # -- the status record: what the watcher has to say --------------------------------------
    def _load_status(self) -> dict[str, Any]:
        fresh = {
            "deployment": self.deployment_name,
            "error": None,
            "error_since": None,
            "unreadable_files": [],
            "unreadable_file_count": 0,
            "windows_not_tested": 0,
            "last_not_tested": None,
            # the cooldown: until when, the drifted window held to fire when it ends, how many held
            "cooldown_until": None,
            "held_window": None,
            "windows_held": 0,
            "updated_at": None,
        }
        try:
            stored = json.loads((self.watch_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            stored = {}
        return {**fresh, **(stored if isinstance(stored, dict) else {})}

    def _write_status(self) -> None:
        assert self._status is not None
        self._status["updated_at"] = time.time()
        _write_json(self.watch_dir / STATUS_FILE, self._status)
        self._unpublished = True

    async def _set_error(self, message: str | None, exc_info: bool = False) -> None:
        """The watcher's current problem (None: there is none): logged once per run of the trigger
        (a restarted triggerer says it again), recorded in the status record when it changes."""
        status = self._status
        if status is None:
            return
        if message is None:
            if status["error"] is not None:
                self.log.info("%s: watching again (was: %s)", self.deployment_name, status["error"])
        elif message != self._said:
            self.log.warning(
                "%s: drift watcher cannot watch: %s", self.deployment_name, message, exc_info=exc_info
            )
        self._said = message
        if status["error"] != message:
            status.update(error=message, error_since=None if message is None else time.time())
            await asyncio.to_thread(self._write_status)

    async def _note_unreadable(self, files: list[tuple[Path, str]]) -> None:
        """Report each unreadable log file once (logged, counted, listed in the status record)."""
        from airflow_mlops.inference_log import cursor_of

        status = self._status
        if status is None or not files:
            return
        log_dir = self._log_dir()
        known = {entry.get("file") for entry in status["unreadable_files"]}
        new = False
        for path, reason in files:
            name = cursor_of(log_dir, path)
            if name in known:
                continue
            known.add(name)
            new = True
            self.log.warning(
                "%s: inference-log file %s is unreadable and skipped, its rows are not tested (%s). "
                "Replace or remove it; the files after it are read.",
                self.deployment_name,
                path,
                reason,
            )
            status["unreadable_file_count"] += 1
            if len(status["unreadable_files"]) < MAX_LISTED_FILES:
                status["unreadable_files"].append(
                    {"file": name, "error": reason[:500], "seen_at": time.time()}
                )
        if new:
            await asyncio.to_thread(self._write_status)

    async def _not_tested(self, window_id: str, summary: dict[str, Any], problem: str) -> None:
        self.log.error(
            "%s: window %s (%d rows of v%s) NOT tested: %s",
            self.deployment_name,
            window_id,
            summary["rows"],
            summary["model_version"],
            problem,
        )
        await asyncio.to_thread(self._record, window_id, {**summary, "is_drift": None, "error": problem})
        if self._status is not None:
            self._status["windows_not_tested"] += 1
            self._status["last_not_tested"] = {
                "window_id": window_id,
                "error": problem,
                "at": summary["tested_at"],
            }
            await asyncio.to_thread(self._write_status)

    # -- one instance steps at a time; a window is decided once -------------------------------
    def _try_lock(self) -> int | None:
        """The descriptor holding the watcher's exclusive lock, or None while another instance
        (another triggerer running the same watcher during a failover) holds it."""
        import fcntl

        self.watch_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.watch_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _window_id(self, df, start: dict[str, Any], version: str) -> str:
        """The same for every instance of this watcher: when the window's first row was served,
        then a digest of where it starts in the log, the version and the test settings."""
        import hashlib

        import pandas as pd

        try:
            first = int(pd.to_datetime(df["ts"], utc=True).min().timestamp() * 1000)
        except (KeyError, TypeError, ValueError, OverflowError):
            first = 0
        settings = [self.numeric_features, self.categorical_features, self.window_rows, self.p_val]
        settings += [self.correction, self.mmd, self.max_rows, self.event_time_column, self.reference_path]
        if self.min_effect_size is not None:  # only then: the ids of windows seen before it stay
            settings.append(self.min_effect_size)
        key = json.dumps([start.get("after"), int(start.get("skip") or 0), version, settings], default=str)
        return f"{first}-{hashlib.sha256(key.encode()).hexdigest()[:12]}-v{version}"

    def _read_window(self, window_id: str) -> dict[str, Any] | None:
        """The window's record when it was decided already (tested, or found untestable)."""
        try:
            record = json.loads((self.watch_dir / window_id / WINDOW_FILE).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    async def _write_status_now(self, **fields: Any) -> None:
        if self._status is not None:
            self._status.update(fields)
            await asyncio.to_thread(self._write_status)

    async def _release_held(self, cursor: dict[str, Any], version: str, now: float):
        """When the cooldown is over, the held window: its payload to fire (its version still
        serves), True when it was passed (superseded), None when there is none to release."""
        held_id = cursor.get("held")
        if not held_id or now - float(cursor.get("last_fired") or 0) < self.cooldown_seconds:
            return None
        del cursor["held"]
        record = await asyncio.to_thread(self._read_window, held_id)
        if record is None:
            self.log.error(
                "%s: held window %s has no readable record: not fired", self.deployment_name, held_id
            )
            await self._save_cursor(cursor)
            await self._write_status_now(held_window=None, cooldown_until=None)
            return True
        cooldown = dict(record.get("cooldown") or {})
        if str(record.get("model_version")) != version:
            cooldown.update(state="superseded", reason=f"version {version} serves now")
            self.log.info(
                "%s: cooldown over; held window %s of v%s not fired: version %s serves now",
                self.deployment_name,
                held_id,
                record.get("model_version"),
                version,
            )
            await self._save_cursor(cursor)
            await asyncio.to_thread(self._record, held_id, {**record, "cooldown": cooldown})
            await self._write_status_now(held_window=None, cooldown_until=None)
            return True
        cursor["last_fired"] = now
        cooldown.update(state="fired", fired_at=now)
        payload = {**record, "cooldown": cooldown, "fired_at": now}
        await self._save_cursor(cursor)
        await self._write_status_now(held_window=None, cooldown_until=now + self.cooldown_seconds)
        self.log.warning(
            "%s: cooldown over: firing held drifted window %s (%d rows of v%s, score %.3f)",
            self.deployment_name,
            held_id,
            int(record.get("rows") or 0),
            version,
            float(record.get("drift_score") or 0),
        )
        self._record(held_id, payload)  # no await between the record and the event
        return payload

    async def _hold(self, cursor: dict[str, Any], payload: dict[str, Any], until: float) -> None:
        """Record a window tested during the cooldown; a drifted one is held (the newest wins)."""
        window_id = payload["window_id"]
        if not payload["is_drift"]:
            payload["cooldown"] = {"until": until, "state": "no drift"}
            await self._save_cursor(cursor)
            await asyncio.to_thread(self._record, window_id, payload)
            return
        payload["cooldown"] = {"until": until, "state": "held"}
        previous = cursor.get("held")
        cursor["held"] = window_id
        await self._save_cursor(cursor)
        await asyncio.to_thread(self._record, window_id, payload)
        if previous and previous != window_id:
            older = await asyncio.to_thread(self._read_window, previous)
            if older is not None:
                cooldown = {**(older.get("cooldown") or {}), "state": "superseded", "by": window_id}
                await asyncio.to_thread(self._record, previous, {**older, "cooldown": cooldown})
        assert self._status is not None
        await self._write_status_now(
            cooldown_until=until, held_window=window_id, windows_held=int(self._status["windows_held"]) + 1
        )
        self.log.warning(
            "%s: drifted window %s (%d rows of v%s, score %.3f) seen during the cooldown: held, "
            "it fires when the cooldown ends at %s unless a newer drifted window replaces it",
            self.deployment_name,
            window_id,
            payload["rows"],
            payload["model_version"],
            payload["drift_score"],
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
        )

    # -- the watch -----------------------------------------------------------------------------
    async def _step(self) -> dict[str, Any] | bool:
        """One look at the log: the payload of a drifted window to announce, True when a window
        was used up (look again at once), False when there is nothing to do before the next poll
        (or another instance of this watcher is stepping now)."""
        # not in a thread: a cancellation while a thread took the lock would leak it, held
        fd = self._try_lock()  # non-blocking, microseconds
        if fd is None:
            return False
        try:
            return await self._locked_step()
        finally:
            os.close(fd)  # releases the lock

    async def _locked_step(self) -> dict[str, Any] | bool:
        # another instance may have written it since: read it afresh under the lock
        self._status = await asyncio.to_thread(self._load_status)
        try:
            main = await asyncio.to_thread(self._served)
            cursor = await self._load_cursor()
        except _Unwatchable as problem:
            await self._set_error(str(problem))
            return False
        version = str(main["version"])
        released = await self._release_held(cursor, version, time.time())
        if released is not None:
            return released
        unreadable: list[tuple[Path, str]] = []
        found = await asyncio.to_thread(self._next_window, cursor, version, unreadable)
        await self._note_unreadable(unreadable)
        await self._set_error(None)
        if found is None:
            if await asyncio.to_thread(self._drop_stale, cursor):
                await self._save_cursor(cursor)
            return False
        df, position = found
        reference = main.get("reference_path") or self.reference_path
        window_id = self._window_id(df, cursor, version)
        cursor.update(position)
        decided = await asyncio.to_thread(self._read_window, window_id)
        if decided is not None:
            # decided by another instance, or by this watcher before its cursor was saved: passed
            self.log.info("%s: window %s was decided already: passed", self.deployment_name, window_id)
            if decided.get("fired_at"):
                cursor["last_fired"] = max(float(cursor.get("last_fired") or 0), float(decided["fired_at"]))
            await self._save_cursor(cursor)
            return True
        now = time.time()
        summary = {
            "deployment": self.deployment_name,
            "model_name": main.get("model_name"),
            "model_version": version,
            **self._spans(df),
            "rows": len(df),
            "window_id": window_id,
            "tested_at": now,
        }
        try:
            reference = await asyncio.to_thread(self._local_reference, reference)
            self._check_testable(df, reference, version)
        except _Untestable as problem:
            # passed, then recorded: a window that cannot be tested must not stop the watch
            await self._save_cursor(cursor)
            await self._not_tested(window_id, summary, str(problem))
            return True
        try:
            report = await self._test(df, reference, window_id)
        except _Untestable as problem:
            await self._save_cursor(cursor)
            await self._not_tested(window_id, summary, str(problem))
            return True
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
        payload = {
            **summary,
            "is_drift": fire,
            "drift_score": report["drift_score"],
            "drifted_features": report["drifted_features"],
            "p_values": report.get("p_values"),
            "report": str(self.watch_dir / window_id / REPORT_FILE),
        }
        last_fired = float(cursor.get("last_fired") or 0)
        now = time.time()
        if now - last_fired < self.cooldown_seconds:
            # a retraining is under way: recorded (a drifted window is held for the cooldown's end)
            await self._hold(cursor, payload, last_fired + self.cooldown_seconds)
            return True
        if not fire:
            await self._save_cursor(cursor)
            await asyncio.to_thread(self._record, window_id, payload)
            return True
        cursor["last_fired"] = now
        payload["fired_at"] = now
        # the cursor moves past the window before its event: one event per window at most; the
        # record (which other instances read as "decided") is written with no await before the event
        await self._save_cursor(cursor)
        await self._write_status_now(cooldown_until=now + self.cooldown_seconds)
        self._record(window_id, payload)
        return payload

    def _sync_records(self) -> int:
        """Upload this watcher's new or changed records (:data:`PUBLISHED_RECORDS`) to
        ``<data_dir>/drift/watchers/<deployment>/`` in the store, where the MLOps page reads them
        (the api-server may run on another host). Builds an ``ObjectStoragePath``: call it in a thread."""
        from airflow_mlops import storage

        if self._mirror is None:
            dest = storage.data_root() / "drift" / "watchers" / self.deployment_name
            self._mirror = storage.Mirror(self.watch_dir, dest, PUBLISHED_RECORDS)
        return self._mirror.sync()

    async def _publish_records(self) -> None:
        """With ``[mlops] data_dir`` a store, publish the records written since the last time (all
        of them once per run); a failure is logged once and retried on the next poll (the watch
        goes on, the records are kept here)."""
        if not self._unpublished or not self._published():
            return
        # cleared before the sync: a record written while it runs is synced on the next poll
        self._unpublished = False
        try:
            await asyncio.to_thread(self._sync_records)
        except Exception as err:
            self._unpublished = True
            if not self._publish_failing:
                self.log.warning(
                    "%s: publishing the watcher's records to the store failed (retried): %s",
                    self.deployment_name,
                    err,
                )
            self._publish_failing = True
        else:
            if self._publish_failing:
                self.log.info("%s: the watcher's records are published again", self.deployment_name)
            self._publish_failing = False

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._status = await asyncio.to_thread(self._load_status)
        self._said = None
        self._unpublished = True  # the records an earlier run of this watcher wrote: synced once
        if not self.mmd and await asyncio.to_thread(_local_mode):
            # the drift worker imports alibi-detect now, not when the first window waits for it
            self._warm_up = asyncio.ensure_future(asyncio.to_thread(_start_drift_worker))
        while True:
            try:
                outcome = await self._step()
            except Exception as err:
                # never out of run(): the watch goes on, and says what went wrong
                message = f"unexpected {type(err).__name__}: {err}"
                try:
                    await self._set_error(message, exc_info=True)
                except Exception:
                    self.log.exception(
                        "%s: %s (and the status record is not writable)", self.deployment_name, message
                    )
                outcome = False
            await self._publish_records()  # before an event: the page shows the window that fired
            if isinstance(outcome, dict):
                yield TriggerEvent(outcome)
            elif not outcome:
                await asyncio.sleep(self.poll_interval)


def _check_mode() -> str:
    """Where the checks run: ``docker`` (a container per window) with ``[mlops] execution_mode =
    docker``, else ``local`` (the drift runtime); ValueError naming the option for a bad one."""
    from airflow_mlops.hooks.runtime import default_mode

    return "docker" if default_mode() == "docker" else "local"


def _local_mode() -> bool:
    """The checks run in the drift runtime here (not in containers); a bad mode: its window says."""
    try:
        return _check_mode() == "local"
    except ValueError:
        return False


def _start_drift_worker() -> None:
    """Make the first window as fast as the next: the drift worker started, and what this
    process needs to cut and write a window (pandas, pyarrow) imported, off the event loop."""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from airflow_mlops.drift_worker import DriftWorker

    try:
        DriftWorker().ensure()
    except Exception:  # the first check starts it (or runs on its own) and says what is wrong
        logging.getLogger(__name__).warning(
            "The drift worker could not be started ahead of the first window", exc_info=True
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` whole or not at all; two watchers writing at once leave one whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
