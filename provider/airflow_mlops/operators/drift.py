"""Detect data drift with alibi-detect (in the drift runtime) and announce it as an Asset event."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import Asset

from airflow_mlops import storage
from airflow_mlops.assets import emit_through_aliases
from airflow_mlops.drift_config import (
    DEFAULT_CORRECTION,
    DEFAULT_MAX_ROWS,
    DEFAULT_P_VAL,
    PLOT_FILE,
    REPORT_FILE,
    check_settings,
    drift_config,
    write_config,
)
from airflow_mlops.hooks.runtime import check_mode, default_mode, runtime_hook
from airflow_mlops.links.drift import DriftReportLink, drift_report_url
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.operators.kubernetes_job import KubernetesJobMixin
from airflow_mlops.triggers.drift import EVENT_TIME

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context


class DriftDetectOperator(KubernetesJobMixin, MlopsBaseOperator):
    """
    Compare a window of recent data with the training reference and report drift.

    When ``endpoint`` is set, the window's rows are first scored through the deployed model
    (every request lands in the deployment's inference log), and so is a sample of the
    reference rows (unless the reference file carries a ``prediction`` column already; those
    requests are tagged not to be logged: they are not served traffic), so the distribution of
    the model's scores is tested too — prediction drift, one more test of the corrected family.
    The test itself — Kolmogorov-Smirnov per numeric feature, Chi-squared per categorical one,
    corrected for multiple tests — runs in the isolated drift runtime (alibi-detect cannot
    live beside Airflow). The JSON report and a p-value plot are stored under ``report_dir``:
    by default the task instance's own folder (:func:`airflow_mlops.task_outputs.task_output_dir`),
    so two drift tasks of one run, or the instances of a mapped one, never share a file. With an
    object-store ``data_dir`` the runtime works in that folder of this host's data dir and the
    report, the plot and the scored windows are uploaded to the same place in the store, where
    the MLOps page and a retry on another worker find them.

    When drift is found and ``drift_asset`` is given, an event for it is emitted through the
    task's ``AssetAlias`` outlets with the score, window and drifted features as extra; a DAG
    scheduled on ``drift_asset`` (retraining) then runs. No drift, no event.

    :param reference_path: Parquet file the model was trained on (templated).
    :param current_path: Parquet file of the window to check (templated).
    :param numeric_features: columns tested with Kolmogorov-Smirnov.
    :param categorical_features: columns tested with Chi-squared.
    :param endpoint: Seldon endpoint (``http://127.0.0.1:PORT``) to score the window through (templated).
    :param model_features: columns sent to the endpoint; defaults to ``numeric_features``.
    :param event_time_column: timestamp column of ``current_path`` sent along with the features
        (as ``event_time``, epoch seconds; the model server ignores it), so the deployment's
        :class:`~airflow_mlops.triggers.drift.DriftEventTrigger` reports when the data is from.
    :param p_val: significance level, before correction.
    :param correction: ``bonferroni`` or ``fdr``.
    :param mmd: also test the joint distribution of the numeric features with MMD (PyTorch
        backend in the drift runtime; 10-20 s on 2,000 rows per side on a laptop).
    :param max_rows: rows sampled from each side at most (KS flags tiny shifts on huge samples).
    :param min_effect_size: for dependent data (hourly weather, anything seasonal): flag a
        feature only when its change is also at least this large — the Kolmogorov-Smirnov
        distance D (0..1) for numeric features and the prediction, the total variation distance
        of the category shares for categorical ones. With thousands of rows that are not
        independent draws, p-values alone flag adjacent fortnights of one month; None (the
        default) tests p-values only. docs/monitoring.md shows false-alarm and detection rates.
    :param window: ``{"start", "end"}`` of the checked window, carried in the event (templated).
    :param drift_asset: the Asset announced on drift (through AssetAlias outlets).
    :param report_dir: where the report goes; defaults to the task instance's folder,
        ``[mlops] data_dir``/drift/<dag>/<run>/<task>[/map_index=<n>]. A folder (or object-store
        URL) given here is used as is, except by the instances of a mapped task, which each write
        in ``map_index=<n>/`` below it.
    :param runtimes_dir: where the ``drift`` runtime environment lives (local mode; default: config).
    :param seldon_conn_id: the ``seldon`` connection used to score through ``endpoint``.
    :param mode: ``local`` (a subprocess of the drift runtime environment), ``docker``
        (the ``docker/drift/`` image on this worker through the Docker API; docs/runtimes.md
        "Execution modes") or ``kubernetes`` (a ``batch/v1`` Job running that image; see
        docs/monitoring.md "Kubernetes mode"). Default: ``[mlops] execution_mode`` (``local``).
    :param image: the drift image built from ``docker/drift/Dockerfile`` (templated); Docker mode
        defaults to ``localhost/airflow-mlops-drift:latest`` (``make images``). The parameters
        below apply to Kubernetes mode only.
    :param shared_volume_claim: PersistentVolumeClaim the pod mounts at ``shared_volume_path``; the
        reference, the window and ``report_dir`` must lie under that path, which Airflow's workers
        mount too (a ReadWriteMany volume). Inputs in an object store are fetched there first,
        into the instance's folder of ``[mlops] local_data_dir``.
    :param shared_volume_path: where both sides mount the volume; defaults to ``[mlops] data_dir``
        (``local_data_dir`` when that is an object store).
    :param kubernetes_conn_id: the cncf-kubernetes ``kubernetes`` connection.
    :param namespace: namespace of the job; None takes the connection's, else ``default`` (templated).
    :param container_resources: requests/limits of the pod, default ``{"cpu": "1", "memory": "2Gi"}``
        (templated).
    :param deferrable: wait for the job in the triggerer instead of a worker slot.
        Default: ``[operators] default_deferrable`` (False).
    :param poll_interval: seconds between two status checks of the job.
    :param service_account: service account of the pod (None: the namespace's default).
    :param image_pull_policy: e.g. ``IfNotPresent``; None leaves the cluster's default.
    """

    template_fields: Sequence[str] = (
        "reference_path",
        "current_path",
        "endpoint",
        "window",
        "report_dir",
        "namespace",
        "image",
        "container_resources",
    )
    ui_color = "#fdecea"
    operator_extra_links = (DriftReportLink(),)

    def __init__(
        self,
        *,
        reference_path: str,
        current_path: str,
        numeric_features: list[str],
        categorical_features: list[str] | None = None,
        endpoint: str | None = None,
        model_features: list[str] | None = None,
        event_time_column: str | None = None,
        p_val: float = DEFAULT_P_VAL,
        correction: str = DEFAULT_CORRECTION,
        mmd: bool = False,
        max_rows: int = DEFAULT_MAX_ROWS,
        min_effect_size: float | None = None,
        window: dict[str, str] | None = None,
        drift_asset: Asset | None = None,
        report_dir: str | None = None,
        runtimes_dir: str | None = None,
        seldon_conn_id: str = "seldon_default",
        mode: str | None = None,
        shared_volume_claim: str | None = None,
        shared_volume_path: str | None = None,
        kubernetes_conn_id: str = "kubernetes_default",
        namespace: str | None = None,
        image: str | None = None,
        container_resources: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10.0,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_settings(correction, p_val, max_rows, min_effect_size)
        mode = check_mode(mode or default_mode())
        if mode == "kubernetes" and not shared_volume_claim:
            raise ValueError(
                "mode='kubernetes' needs shared_volume_claim: the PersistentVolumeClaim holding the "
                "reference, the window and the report, which Airflow's workers and the drift pod both "
                "mount at shared_volume_path."
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.reference_path = reference_path
        self.current_path = current_path
        self.numeric_features = list(numeric_features)
        self.categorical_features = list(categorical_features or [])
        self.endpoint = endpoint
        self.model_features = model_features
        self.event_time_column = event_time_column
        self.p_val = p_val
        self.correction = correction
        self.mmd = mmd
        self.max_rows = max_rows
        self.window = window or {}
        self.min_effect_size = min_effect_size
        self.drift_asset = drift_asset
        self.report_dir = report_dir
        self.runtimes_dir = runtimes_dir
        self.seldon_conn_id = seldon_conn_id
        self.mode = mode
        self.shared_volume_claim = shared_volume_claim
        self.shared_volume_path = shared_volume_path
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.image = image
        self.container_resources = container_resources or {}
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.service_account = service_account
        self.image_pull_policy = image_pull_policy
        self._runtime = None

    job_name_prefix = "drift"

    @property
    def job_kind(self) -> str:
        from airflow_mlops.kubernetes.drift import KIND

        return KIND

    def _report_location(self, context: Context) -> storage.StorePath:
        """Where this task instance's report is kept, no one else's: ``report_dir`` (one folder
        per map index) or ``[mlops] data_dir``/drift/<instance>, a folder or a store's prefix."""
        from airflow_mlops.task_outputs import MAP_INDEX_PREFIX, instance_folder, map_index

        ti = context["ti"]
        index = map_index(ti)
        if not self.report_dir:
            return (
                storage.data_root() / "drift" / str(instance_folder(ti.dag_id, ti.run_id, ti.task_id, index))
            )
        # one report_dir for every instance of a mapped task: each its own folder below it
        base = storage.as_path(self.report_dir)
        return base / f"{MAP_INDEX_PREFIX}{index}" if index >= 0 else base

    def _report_dir(self, context: Context) -> Path:
        """This task instance's local folder: its config, report, plot and scored files. The
        report's own folder when that is local; with an object store, the instance's folder in this
        host's data dir, whose report, plot and scored files are uploaded (:meth:`_keep`)."""
        from airflow_mlops.task_outputs import task_output_dir

        kept = self._report_location(context)
        return kept if isinstance(kept, Path) else task_output_dir(context["ti"], "drift")

    def _keep(self, context: Context, path: Path) -> str:
        """Upload ``path`` (a file of :meth:`_report_dir`) beside the report in the store, when
        that is one; the location of the kept file."""
        kept = self._report_location(context)
        if isinstance(kept, Path):
            return str(path)
        target = kept / path.name
        storage.upload(path, target)
        return storage.location(target)

    def _scored(
        self, context: Context, df: pd.DataFrame, request: pd.DataFrame, path: Path, what: str, log: bool
    ) -> Path:
        """``df`` with the endpoint's scores of ``request`` as ``prediction``, written to ``path``.

        A file left by an earlier try of this task instance is kept: scoring again would log the
        window's requests into the inference log a second time. With an object store the file is
        kept there too, for a retry that runs on another worker.
        """
        from airflow_mlops.hooks.seldon import SeldonHook

        kept = self._report_location(context)
        if not path.is_file() and not isinstance(kept, Path) and (kept / path.name).is_file():
            storage.fetch(kept / path.name, path.parent)
        if path.is_file():
            self.log.info("Using the %s scored by an earlier try: %s", what, path)
            return path
        df["prediction"] = SeldonHook(self.seldon_conn_id).predict(self.endpoint, request, log=log)
        self.log.info(
            "Scored %d %s through %s%s (mean score %.4f)",
            len(df),
            what,
            self.endpoint,
            "" if log else ", not logged",
            float(df["prediction"].mean()),
        )
        partial = path.with_name(f".{path.name}.partial")
        df.to_parquet(partial, index=False)
        partial.replace(path)  # whole or absent: a killed try leaves no half-written file to reuse
        self._keep(context, path)
        return path

    def _score_through_endpoint(self, context: Context, current: Path, out_dir: Path) -> Path:
        """The window's rows scored by the deployment, as served traffic (logged, with event times)."""
        import pandas as pd

        df = pd.read_parquet(current)
        request = df[self.model_features or self.numeric_features].copy()
        if self.event_time_column:
            request[EVENT_TIME] = df[self.event_time_column].astype("int64") // 10**9
        return self._scored(context, df, request, out_dir / "current_scored.parquet", "rows", log=True)

    def _score_reference(self, context: Context, reference: Path, out_dir: Path) -> Path:
        """
        The deployed model's scores on (a sample of ``max_rows``) reference rows, not logged: the
        baseline of the prediction test. A reference that carries ``prediction`` is used as is.
        """
        import pandas as pd

        df = pd.read_parquet(reference)
        if "prediction" in df.columns:
            return reference
        df = df.sample(n=min(len(df), self.max_rows), random_state=0).reset_index(drop=True)
        request = df[self.model_features or self.numeric_features]
        path = out_dir / "reference_scored.parquet"
        return self._scored(context, df, request, path, "reference rows", log=False)

    def _config(self, context: Context) -> dict[str, Any]:
        """``drift_detect.py``'s config (the window and reference scored first when ``endpoint`` is set)."""
        out_dir = self._report_dir(context)
        out_dir.mkdir(parents=True, exist_ok=True)
        # an object store's files come down into this instance's folder first: the drift runtime
        # (and its container) reads local files
        current, reference = (
            storage.fetch(path, out_dir / "inputs" / name)
            for name, path in (("current", self.current_path), ("reference", self.reference_path))
        )
        if self.endpoint:
            current = self._score_through_endpoint(context, current, out_dir)
            reference = self._score_reference(context, reference, out_dir)
        return drift_config(
            reference=reference,
            current=current,
            out_dir=out_dir,
            numeric_features=self.numeric_features,
            categorical_features=self.categorical_features,
            prediction_column="prediction" if self.endpoint else None,
            p_val=self.p_val,
            correction=self.correction,
            mmd=self.mmd,
            max_rows=self.max_rows,
            min_effect_size=self.min_effect_size,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        if self.mode == "kubernetes":
            return self._execute_kubernetes(context)
        from airflow_mlops.drift_worker import DriftWorker, failure_said
        from airflow_mlops.hooks.runtime import RuntimeCommandError

        config = self._config(context)
        config_path = write_config(config)
        self._runtime = runtime = runtime_hook(
            "drift",
            self.mode,
            context["ti"],
            runtimes_dir=self.runtimes_dir,
            image=self.image,
            mounts=[config_path.parent],
            read_only_mounts=[config["reference"], config["current"]],
        )
        # a drift worker the watcher keeps running answers at once; a task never starts one
        worker = DriftWorker(runtimes_dir=self.runtimes_dir)
        answer = None if self.mmd or self.mode != "local" else worker.check(config_path, start=False)
        if answer is None:
            runtime.run([runtime.python, runtime.script("drift_detect"), str(config_path)])
        else:
            code, output = answer
            for line in output.splitlines():
                self.log.info("%s", line)
            if code != 0:
                raise RuntimeCommandError(
                    f"drift_detect.py in the drift worker exited with status {code}: {failure_said(output)}"
                )
        return self._summarise(context)

    def _summarise(self, context: Context) -> dict[str, Any]:
        """Read the report, link it from the task, and announce drift on ``drift_asset``."""
        from airflow_mlops.task_outputs import map_index

        out_dir = self._report_dir(context)
        report = json.loads((out_dir / REPORT_FILE).read_text())
        # the report and its plot where every host (and the MLOps page) reads them
        plot = self._keep(context, out_dir / PLOT_FILE) if (out_dir / PLOT_FILE).is_file() else None
        kept = self._keep(context, out_dir / REPORT_FILE)
        ti = context["ti"]
        DriftReportLink.persist(context, drift_report_url(ti.dag_id, ti.run_id, ti.task_id, map_index(ti)))
        summary = {
            "is_drift": bool(report["is_drift"]),
            "drift_score": report["drift_score"],
            "drifted_features": report["drifted_features"],
            "window": self.window,
            # the deployment scored (the MLOps page puts the check with that deployment's model)
            "endpoint": self.endpoint,
            "report": kept,
            "plot": plot,
        }
        self.log.info(
            "Drift %s: score %.3f, drifted %s (report %s)",
            "FOUND" if summary["is_drift"] else "not found",
            summary["drift_score"],
            summary["drifted_features"],
            summary["report"],
        )
        if summary["is_drift"] and self.drift_asset is not None:
            if not emit_through_aliases(context, self.outlets, self.drift_asset, summary):
                self.log.warning("Drift found but the task has no AssetAlias outlet: no event emitted.")
        return summary

    # --- OpenLineage ----------------------------------------------------------------------

    def openlineage(self, stage: str) -> Any:
        """
        The reference (training data) and the checked window in, and the deployment scored
        through ``endpoint``; the deployment's drift verdict out (the dataset of the drift Asset,
        ``x-mlops://drift/<deployment>``), with score, drifted features and window once checked
        (``airflowMlops_drift``).
        """
        from airflow_mlops import lineage

        inputs = [lineage.file_input(self.reference_path), lineage.file_input(self.current_path)]
        deployment = lineage.local_deployment_for_endpoint(self.endpoint)
        if deployment:
            inputs.append(lineage.input_dataset(lineage.deployment_dataset(deployment)))
        elif self.endpoint:  # a deployment this host does not record (a cluster's): by its address
            inputs.append(lineage.input_dataset(lineage.path_dataset(self.endpoint, logical=False)))
        asset_uri = getattr(self.drift_asset, "uri", None)
        result = self._lineage_result if stage == "complete" else None
        result = result if isinstance(result, dict) else None
        if deployment or asset_uri:
            verdict = lineage.drift_dataset(deployment or "", asset_uri)
        elif result:  # no deployment, no Asset: the verdict is the report file
            verdict = lineage.path_dataset(result["report"], logical=False)
        else:
            return lineage.operator_lineage(inputs)
        facets = {}
        if result:
            report = self._read_report(result.get("report"))
            window = result.get("window") or {}
            key, facet = lineage.custom_facet(
                "DriftDatasetFacet",
                deployment=deployment,
                isDrift=bool(result["is_drift"]),
                driftScore=result.get("drift_score"),
                driftedFeatures=list(result.get("drifted_features") or []),
                windowStart=window.get("start"),
                windowEnd=window.get("end"),
                pValue=report.get("threshold", self.p_val),
                correction=report.get("correction", self.correction),
                tests=report.get("tests"),
                report=result.get("report"),
            )
            facets[key] = facet
        return lineage.operator_lineage(inputs, [lineage.output_dataset(verdict, facets)])

    @staticmethod
    def _read_report(path: str | None) -> dict[str, Any]:
        try:
            return json.loads(storage.as_path(path).read_text()) if path else {}
        except (OSError, ValueError):
            return {}

    # --- Kubernetes mode (job naming, reattaching and waiting: KubernetesJobMixin) ------

    def _execute_kubernetes(self, context: Context) -> dict[str, Any]:
        hook = self._job_hook()
        name = self._job_name(context)
        self._start_job(hook, name, lambda: self._manifests(context, name, hook.namespace))
        return self._finish(context, hook, name, self._wait_for_job(hook, name))

    def _mount_path(self) -> str:
        """Where Airflow's workers and the pod both mount the shared volume."""
        from airflow_mlops import settings

        return self.shared_volume_path or str(settings.data_dir())

    def _manifests(self, context: Context, name: str, namespace: str) -> list[dict[str, Any]]:
        from airflow_mlops.kubernetes import drift

        mount = self._mount_path()
        # inputs in an object store are fetched by _config into the instance's folder (report_dir's
        # local side), which must be on the volume too: the pod reads those copies
        inputs = {"reference_path": self.reference_path, "current_path": self.current_path}
        paths = {what: path for what, path in inputs.items() if not storage.is_url(path)}
        drift.check_on_volume({**paths, "report_dir": str(self._report_dir(context))}, mount)
        config = self._config(context)
        volume, volume_mount = drift.shared_volume(self.shared_volume_claim, mount)
        spec = self._job_spec(
            context,
            name,
            namespace,
            image=self.image or drift.DEFAULT_IMAGE,
            num_proc=1,
            files={},
            volumes=[volume],
            volume_mounts=[volume_mount],
        )
        return drift.render(spec, config)

    def _finish(self, context: Context, hook: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        """After the job (waited for here or by the trigger): read the pod's report, or fail with
        the job's reason."""
        from airflow_mlops.exceptions import MlopsError

        self._raise_unless_succeeded(hook, name, event)
        report = self._report_dir(context) / REPORT_FILE
        if not report.is_file():
            raise MlopsError(
                f"Job {hook.namespace}/{name} succeeded but {report} is not there: "
                f"is the PersistentVolumeClaim {self.shared_volume_claim!r} the volume this worker mounts at "
                f"{self._mount_path()}?"
            )
        return self._summarise(context)

    def on_kill(self) -> None:
        if self._runtime is not None:
            self._runtime.terminate()
        self._kill_job()
