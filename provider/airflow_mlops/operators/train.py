"""Distributed PyTorch training with Horovod, tracked in MLflow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.links.mlflow import MlflowRunLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.hooks.runtime import RuntimeHook


class HorovodTrainOperator(MlopsBaseOperator):
    """
    Train a model with ``horovodrun --gloo -np N`` in the training runtime and log it to MLflow.

    The user's code is a plain Python file defining ``train(ctx)`` (see docs/training.md): it
    receives ``inputs`` and ``hyperparameters``, trains on its shard, logs per-epoch metrics
    and returns the model, which rank 0 logs to MLflow with its signature. The MLflow run is
    tagged with the Airflow dag/run/task ids and try number, plus ``tags`` (e.g. the dataset
    version). CUDA is used when the runtime sees a GPU.

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
    """

    template_fields: Sequence[str] = (
        "training_script",
        "inputs",
        "hyperparameters",
        "tags",
        "experiment_name",
    )
    operator_extra_links = (MlflowRunLink(),)
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {num_proc}")
        self.training_script = training_script
        self.inputs = inputs or {}
        self.hyperparameters = hyperparameters or {}
        self.num_proc = num_proc
        self.experiment_name = experiment_name
        self.tags = tags or {}
        self.mlflow_conn_id = mlflow_conn_id
        self.runtimes_dir = runtimes_dir
        self.seed = seed
        self._runtime: RuntimeHook | None = None

    def _run_tags(self, context: Context) -> dict[str, str]:
        ti = context["ti"]
        tags = {
            "airflow.dag_id": ti.dag_id,
            "airflow.run_id": ti.run_id,
            "airflow.task_id": ti.task_id,
            "airflow.try_number": str(ti.try_number),
        }
        tags.update({k: str(v) for k, v in self.tags.items()})
        return tags

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops import settings
        from airflow_mlops.hooks.mlflow import MlflowHook
        from airflow_mlops.hooks.runtime import RuntimeHook

        script = Path(self.training_script)
        if not script.is_file():
            raise FileNotFoundError(f"Training script {script} does not exist.")
        mlflow_hook = MlflowHook(self.mlflow_conn_id)
        experiment = self.experiment_name or mlflow_hook.default_experiment or context["dag"].dag_id
        self._runtime = runtime = RuntimeHook("training", self.runtimes_dir)
        with tempfile.TemporaryDirectory(prefix="horovod-") as work:
            config = {
                "script": str(script.resolve()),
                "inputs": self.inputs,
                "hyperparameters": self.hyperparameters,
                "experiment": experiment,
                "run_name": f"{context['ti'].task_id}-{context['ti'].run_id}"[:250],
                "tags": self._run_tags(context),
                "seed": self.seed,
                "result_path": str(Path(work) / "result.json"),
            }
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
                    str(settings.runtime_script("horovod_entry")),
                    str(config_path),
                ],
                env=mlflow_hook.subprocess_env(),
                cwd=work,
            )
            result = json.loads((Path(work) / "result.json").read_text())
        MlflowRunLink.persist(context, mlflow_hook.run_url(result["run_id"], result["experiment_id"]))
        self.log.info("MLflow run %s: %s", result["run_id"], result["metrics"])
        return result

    def on_kill(self) -> None:
        if self._runtime is not None:
            self._runtime.terminate()
