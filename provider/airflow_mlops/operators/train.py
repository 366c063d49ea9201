"""Distributed PyTorch training with Horovod, tracked in MLflow."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf

from airflow_mlops import storage
from airflow_mlops.hooks.runtime import check_mode, default_mode, runtime_hook
from airflow_mlops.links.mlflow import MlflowParentRunLink, MlflowRunLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.operators.kubernetes_job import KubernetesJobMixin, map_index

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.kubernetes import KubernetesJobHook
    from airflow_mlops.hooks.runtime import RuntimeHook


def _checkpoint(ti: Any) -> dict[str, str]:
    """Where ``horovod_entry.py`` keeps checkpoints: the same key for every try of this task
    instance, so a retry (local or on Kubernetes) resumes from the last saved epoch."""
    from airflow_mlops.training import checkpoint_key

    return {"key": checkpoint_key(ti.dag_id, ti.run_id, ti.task_id, map_index(ti))}


def _input_paths(inputs: dict[str, Any]) -> list[str]:
    """The values of ``inputs`` that are existing files or folders (a container mounts them)."""
    return [v for v in inputs.values() if isinstance(v, str) and v.startswith("/") and Path(v).exists()]


def _local_env(mlflow_hook: Any) -> dict[str, str]:
    """What ``horovodrun`` gets on top of the training runtime's allow-list (``RuntimeHook``): the
    MLflow connection (rank 0 keeps it, the other ranks drop it) and no artifact progress bars in
    the task log (a checkpoint download draws one), unless the worker's environment says otherwise."""
    import os

    progress = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": progress, **mlflow_hook.subprocess_env()}


class HorovodTrainOperator(KubernetesJobMixin, MlopsBaseOperator):
    """
    Train a model with ``horovodrun --gloo -np N`` in the training runtime and log it to MLflow.

    The user's code is a plain Python file defining ``train(ctx)`` (see docs/training.md): it
    receives ``inputs`` and ``hyperparameters``, trains on its shard, logs per-epoch metrics
    and returns the model, which rank 0 logs to MLflow with its signature. The MLflow run is
    tagged with the Airflow dag/run/task ids and try number, plus ``tags`` (e.g. the dataset
    version). CUDA is used when the runtime sees a GPU. A script that checkpoints
    (``ctx.save_checkpoint``) resumes on the task's next try after the last saved epoch; a
    search maps the task over ``hyperparameters`` (``airflow_mlops.training.param_grid``).

    :param training_script: path of the user's training file (templated).
    :param inputs: JSON-serialisable references handed to ``train`` (templated), e.g. paths of
        the training and held-out Parquet files.
    :param hyperparameters: logged as MLflow params and handed to ``train`` (templated).
    :param num_proc: number of Horovod processes.
    :param experiment_name: MLflow experiment; defaults to the connection's, then the dag id.
    :param tags: extra MLflow run tags (templated), e.g. ``{"dataset_version": ...}``.
    :param mlflow_conn_id: the ``mlflow`` connection.
    :param runtimes_dir: where the ``training`` runtime environment lives (default: config).
    :param execution_timeout: as for any operator; the job is killed when it is exceeded.
    :param seed: random seed handed to the training script.
    :param mode: ``local`` (``horovodrun`` subprocess in the training runtime),
        ``docker`` (``horovodrun`` in the training image on this worker, through the Docker API:
        docs/runtimes.md "Execution modes") or ``kubernetes`` (one pod per rank on a cluster, see
        docs/training.md "Kubernetes mode"). Default: ``[mlops] execution_mode`` (``local``).
    :param image: the training image built from ``docker/training/Dockerfile`` (templated);
        Docker mode defaults to ``localhost/airflow-mlops-training:latest`` (``make images``).
        The parameters below apply to Kubernetes mode only.
    :param kubernetes_conn_id: the cncf-kubernetes ``kubernetes`` connection.
    :param namespace: namespace of the job; None takes the connection's, else ``default`` (templated).
    :param container_resources: requests/limits of each rank's pod, e.g. ``{"cpu": "2", "memory":
        "4Gi", "gpu": 1}``; ``gpu`` becomes ``nvidia.com/gpu`` (templated). Not ``resources``:
        that is ``BaseOperator``'s own argument (executor resources), as in ``KubernetesPodOperator``.
    :param kind: ``MPIJob`` (Kubeflow mpi-operator, kubeflow.org/v2beta1) or ``IndexedJob`` (a
        ``batch/v1`` indexed Job + headless Service, when the cluster has no MPI operator).
    :param deferrable: wait for the job in the triggerer instead of a worker slot.
        Default: ``[operators] default_deferrable`` (False).
    :param poll_interval: seconds between two status checks of the job.
    :param wait_for_completion: False returns as soon as the job exists (no MLflow result).
    :param mlflow_secret_name: Secret in the job's namespace with the MLflow credentials
        (keys ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``);
        required when the MLflow connection has credentials, which never go into a manifest.
    :param service_account: service account of the pods (None: the namespace's default).
    :param image_pull_policy: e.g. ``IfNotPresent``; None leaves the cluster's default.
    """

    template_fields: Sequence[str] = (
        "training_script",
        "inputs",
        "hyperparameters",
        "tags",
        "experiment_name",
        "namespace",
        "image",
        "container_resources",
    )
    operator_extra_links = (MlflowRunLink(), MlflowParentRunLink())
    ui_color = "#fff4d6"

    def __init__(
        self,
        *,
        training_script: str,
        inputs: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        num_proc: int = 2,
        experiment_name: str | None = None,
        tags: dict[str, Any] | None = None,
        mlflow_conn_id: str = "mlflow_default",
        runtimes_dir: str | None = None,
        seed: int = 0,
        mode: str | None = None,
        kubernetes_conn_id: str = "kubernetes_default",
        namespace: str | None = None,
        image: str | None = None,
        container_resources: dict[str, Any] | None = None,
        kind: str = "MPIJob",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        wait_for_completion: bool = True,
        mlflow_secret_name: str | None = None,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {num_proc}")
        mode = check_mode(mode or default_mode())
        if kind not in ("MPIJob", "IndexedJob"):
            raise ValueError(f"kind must be 'MPIJob' or 'IndexedJob', got {kind!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.training_script = training_script
        self.inputs = inputs or {}
        self.hyperparameters = hyperparameters or {}
        self.num_proc = num_proc
        self.experiment_name = experiment_name
        self.tags = tags or {}
        self.mlflow_conn_id = mlflow_conn_id
        self.runtimes_dir = runtimes_dir
        self.seed = seed
        self.mode = mode
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.image = image
        self.container_resources = container_resources or {}
        self.kind = kind
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_for_completion = wait_for_completion
        self.mlflow_secret_name = mlflow_secret_name
        self.service_account = service_account
        self.image_pull_policy = image_pull_policy
        self._runtime: RuntimeHook | None = None

    def _run_tags(self, context: Context) -> dict[str, str]:
        ti = context["ti"]
        tags = {
            "airflow.dag_id": ti.dag_id,
            "airflow.run_id": ti.run_id,
            "airflow.task_id": ti.task_id,
            "airflow.try_number": str(ti.try_number),
            "airflow.map_index": str(map_index(ti)),
        }
        tags.update({k: str(v) for k, v in self.tags.items()})
        return tags

    def _parent_run(self, context: Context, mlflow_hook: Any, experiment: str) -> str:
        """The parent run of this DAG run in ``experiment`` (created on first use), linked from the task."""
        from airflow_mlops.runtimes.run_tree import TaskRef

        # before anything is launched: an MLflow that does not answer fails the task clearly
        with mlflow_hook.unreachable_as_error(f"{self.task_id} (train)"):
            experiment_id = mlflow_hook.experiment_id(experiment)
            parent = mlflow_hook.dag_run_parent(experiment_id, TaskRef.from_ti(context["ti"]))
        MlflowParentRunLink.persist(context, mlflow_hook.run_url(parent, experiment_id))
        return parent

    def execute(self, context: Context) -> dict[str, Any]:
        if self.mode == "kubernetes":
            return self._execute_kubernetes(context)
        return self._execute_here(context)

    def _execute_here(self, context: Context) -> dict[str, Any]:
        """Local and Docker mode: ``horovodrun`` on this worker, in the runtime's venv or image."""
        from airflow_mlops.hooks.mlflow import MlflowHook

        script = Path(self.training_script)
        if not script.is_file():
            raise FileNotFoundError(f"Training script {script} does not exist.")
        mlflow_hook = MlflowHook(self.mlflow_conn_id)
        experiment = self.experiment_name or mlflow_hook.default_experiment or context["dag"].dag_id
        # the DAG run's parent run: rank 0's run is nested in it
        parent = self._parent_run(context, mlflow_hook, experiment)
        # rank 0 writes the model (and checkpoints) straight into a local artifact root: a
        # container mounts it (local mode mounts nothing, so it makes no MLflow call for it)
        artifact_root = mlflow_hook.local_artifact_root(experiment) if self.mode == "docker" else None
        self._runtime = runtime = runtime_hook(
            "training",
            self.mode,
            context["ti"],
            runtimes_dir=self.runtimes_dir,
            image=self.image,
            mounts=[artifact_root] if artifact_root else [],
            read_only_mounts=[script.resolve().parent, *_input_paths(self.inputs)],
        )
        with (
            mlflow_hook.parent_running(parent),
            tempfile.TemporaryDirectory(prefix="horovod-", dir=self._work_root()) as work,
            # rank 0 logs to MLflow all along: a server gone mid-training is named as the cause
            # (the retry resumes from the last checkpoint)
            mlflow_hook.unreachable_as_error(f"{self.task_id} (train)", naming_server=True),
        ):
            # an object store's inputs come down into the work folder: horovod's ranks (and the
            # training container, which mounts the data dir holding it) read local files
            inputs = storage.fetch_all(self.inputs, Path(work) / "inputs")
            config = self._local_config(
                context, script, inputs, experiment, Path(work) / "result.json", parent
            )
            config_path = Path(work) / "config.json"
            config_path.write_text(json.dumps(config))
            runtime.run(
                [
                    runtime.bin("horovodrun"),
                    "--gloo",
                    "-np",
                    str(self.num_proc),
                    "-H",
                    f"localhost:{self.num_proc}",
                    runtime.python,
                    runtime.script("horovod_entry"),
                    str(config_path),
                ],
                env=_local_env(mlflow_hook),
                cwd=work,
            )
            result = json.loads((Path(work) / "result.json").read_text())
        result["parent_run_id"] = parent
        url = mlflow_hook.run_url(result["run_id"], result["experiment_id"])
        MlflowRunLink.persist(context, url)
        resumed = result.get("resumed_from_epoch")
        # what the task did, after the training's own output (streamed above as it came)
        self.log.info(
            "Trained %s on %d process(es) (%s)%s: MLflow run %s, metrics %s",
            script.name,
            result.get("num_proc", self.num_proc),
            result.get("device", "?"),
            f", resumed after epoch {resumed} of an earlier try" if resumed is not None else "",
            result["run_id"],
            result["metrics"],
        )
        self.log.info("MLflow run: %s", url)
        return result

    def _work_root(self) -> str | None:
        """
        Where the run's work folder goes: the system's temporary folder, or in Docker mode the
        data dir's ``tmp/`` — a path the Docker daemon sees too when the worker itself runs in a
        container with the data dir mounted at the same path (its own ``/tmp`` is not the host's).
        """
        if self.mode != "docker":
            return None
        from airflow_mlops import settings

        root = settings.data_dir() / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    def _local_config(
        self,
        context: Context,
        script: Path,
        inputs: dict[str, Any],
        experiment: str,
        result_path: Path,
        parent_run_id: str,
    ) -> dict[str, Any]:
        """``config.json`` of ``horovod_entry.py`` in local and Docker mode."""
        from airflow_mlops.runtimes.run_tree import task_run_name

        ti = context["ti"]
        return {
            "script": str(script.resolve()),
            "inputs": inputs,
            "hyperparameters": self.hyperparameters,
            "experiment": experiment,
            # a mapped instance (hyperparameter search) gets its own run name and tag
            "run_name": task_run_name(ti.task_id, ti.run_id, map_index(ti)),
            "tags": self._run_tags(context),
            "parent_run_id": parent_run_id,
            "seed": self.seed,
            "result_path": str(result_path),
            "checkpoint": _checkpoint(ti),
            "try_number": ti.try_number,
        }

    def on_kill(self) -> None:
        if self._runtime is not None:
            self._runtime.terminate()
        self._kill_job()

    # --- Kubernetes mode (job naming, reattaching and waiting: KubernetesJobMixin) ------

    job_name_prefix = "hvd"  # NAME_PREFIXES["training"] in airflow_mlops.kubernetes.jobs
    job_component = "training"

    def _execute_kubernetes(self, context: Context) -> dict[str, Any]:
        hook = self._job_hook()
        name = self._job_name(context)
        self._start_job(hook, name, lambda: self._manifests(context, name, hook.namespace))
        if not self.wait_for_completion:
            return {"job_name": name, "namespace": hook.namespace, "kind": self.kind}
        return self._finish(context, hook, name, self._wait_for_job(hook, name))

    def _manifests(self, context: Context, name: str, namespace: str) -> list[dict[str, Any]]:
        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.kubernetes import training
        from airflow_mlops.runtimes.run_tree import task_run_name

        script = Path(self.training_script)
        if not script.is_file():
            raise FileNotFoundError(f"Training script {script} does not exist.")
        ti = context["ti"]
        mlflow_hook = MlflowHook(self.mlflow_conn_id)
        experiment = self.experiment_name or mlflow_hook.default_experiment or context["dag"].dag_id
        # the DAG run's parent run, found or created here: rank 0 in the pod nests its run in it
        parent = self._parent_run(context, mlflow_hook, experiment)
        mlflow_hook.set_parent_status(parent, "RUNNING")
        nonce = uuid.uuid4().hex
        config = training.entry_config(
            script.name,
            inputs=self.inputs,
            hyperparameters=self.hyperparameters,
            experiment=experiment,
            run_name=task_run_name(ti.task_id, ti.run_id, map_index(ti)),
            parent_run_id=parent,
            # the nonce finds this job's MLflow run again, from any later try
            tags={**self._run_tags(context), "airflow_mlops.k8s_job": name, "airflow_mlops.k8s_nonce": nonce},
            seed=self.seed,
            checkpoint=_checkpoint(ti),
            try_number=ti.try_number,
        )
        files = {"config.json": json.dumps(config, indent=2), script.name: script.read_text()}
        if sum(len(v.encode()) for v in files.values()) > 900_000:
            raise ValueError(
                f"{script} and its config exceed the ~1 MiB a ConfigMap can hold; ship the script in the "
                "training image instead."
            )
        spec = self._job_spec(
            context,
            name,
            namespace,
            annotations={
                f"{training.LABEL_DOMAIN}/experiment": experiment,
                f"{training.LABEL_DOMAIN}/nonce": nonce,
            },
            image=self.image or training.DEFAULT_IMAGE,
            num_proc=self.num_proc,
            files=files,
            env=training.mlflow_env(mlflow_hook.subprocess_env(), self.mlflow_secret_name),
        )
        return training.render(spec, self.kind)

    def _finish(
        self, context: Context, hook: KubernetesJobHook, name: str, event: dict[str, Any]
    ) -> dict[str, Any]:
        """After the job (waited for here or by the trigger): collect the MLflow result, or fail
        with the job's reason."""
        self._raise_unless_succeeded(hook, name, event)
        return self._collect_result(context, hook, name)

    def _collect_result(self, context: Context, hook: KubernetesJobHook, name: str) -> dict[str, Any]:
        """The MLflow run the job's rank 0 logged, found by the nonce tag written at creation."""
        from airflow_mlops.exceptions import MlopsError
        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.kubernetes.training import LABEL_DOMAIN

        job = hook.get_job(self.kind, name) or {}
        annotations = job.get("metadata", {}).get("annotations") or {}
        nonce, experiment = (
            annotations.get(f"{LABEL_DOMAIN}/nonce"),
            annotations.get(f"{LABEL_DOMAIN}/experiment"),
        )
        mlflow_hook = MlflowHook(self.mlflow_conn_id)
        exp = mlflow_hook.client.get_experiment_by_name(experiment) if experiment else None
        runs = (
            mlflow_hook.client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`airflow_mlops.k8s_nonce` = '{nonce}'",
                max_results=1,
            )
            if exp is not None and nonce
            else []
        )
        if not runs:
            raise MlopsError(
                f"{self.kind} {hook.namespace}/{name} succeeded but no MLflow run tagged with its nonce was "
                f"found in experiment {experiment!r}: can the pods reach {mlflow_hook.tracking_uri}?"
            )
        run = runs[0]
        parent = run.data.tags.get("mlflow.parentRunId")
        result = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": f"runs:/{run.info.run_id}/model",
            "artifact_path": "model",
            "metrics": dict(run.data.metrics),
            "num_proc": self.num_proc,
            "job_name": name,
            "namespace": hook.namespace,
            "kind": self.kind,
            "parent_run_id": parent,
        }
        MlflowRunLink.persist(context, mlflow_hook.run_url(result["run_id"], result["experiment_id"]))
        if parent:  # this try may have reattached to the job of an earlier try, in another worker
            MlflowParentRunLink.persist(context, mlflow_hook.run_url(parent, result["experiment_id"]))
            mlflow_hook.set_parent_status(parent, "FINISHED")
        self.log.info("MLflow run %s: %s", result["run_id"], result["metrics"])
        return result

    # --- OpenLineage ------------------------------------------------------------------------

    def openlineage(self, stage: str) -> Any:
        """
        The files among ``inputs`` in (schema; a snapshot's version), the model the run logged
        out: a dataset of type MODEL named by the tracking server and the run, with the run's
        metrics and hyperparameters (``airflowMlops_trainingRun``).
        """
        from airflow_mlops import lineage

        inputs = [lineage.file_input(path) for path in lineage.paths_in(self.inputs)]
        result = self._lineage_result if stage == "complete" else None
        outputs = []
        if isinstance(result, dict) and result.get("run_id"):
            outputs.append(lineage.run_model_output(self.mlflow_conn_id, result, self.hyperparameters))
        return lineage.operator_lineage(inputs, outputs)
