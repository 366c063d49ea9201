"""Entry point of a Horovod training job; runs in the *training* runtime, once per rank.

Started by ``HorovodTrainOperator`` as::

    horovodrun --gloo -np N -H localhost:N python horovod_entry.py config.json

It initialises Horovod, loads the user's training script, calls its ``train(ctx)`` on every
rank, and on rank 0 records everything in MLflow: tags (dag/run/task ids, dataset version),
params, per-epoch metrics, system info and the model (with signature and input example).
Rank 0's run is nested in the DAG run's parent run (``parent_run_id`` of the config) and nests
the runs of this task's earlier tries (``run_tree.py``). It never imports Airflow.

The user's contract (see docs/training.md)::

    def train(ctx) -> dict:
        # ctx.rank, ctx.size, ctx.device, ctx.hvd, ctx.inputs, ctx.hyperparameters
        # ctx.load_checkpoint() -> (state, epoch) | None      (every rank, no communication)
        # ctx.log_metrics({"loss": 0.3}, step=epoch)  (rank 0 logs, others no-op)
        # ctx.save_checkpoint({"model": ..., "optimizer": ...}, epoch)  (rank 0 writes)
        return {"model": torch_module, "metrics": {...}, "input_example": pandas_frame}

Checkpoints are artifacts of the task's MLflow run (``checkpoints/epoch-NNNNN.pt``); the run
is tagged with a key derived from dag id, run id, task id and map index (not the try number),
so the next try of the same task instance finds them by tag and resumes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import metrics as _metrics  # sibling modules in this folder (on sys.path as the script's dir)
import run_tree as _run_tree


@dataclass
class TrainContext:
    """What the user's ``train`` function receives."""

    rank: int
    size: int
    local_rank: int
    device: Any
    hvd: Any
    inputs: dict[str, Any]
    hyperparameters: dict[str, Any]
    _mlflow: Any = field(default=None, repr=False)
    _checkpoints: CheckpointStore | None = field(default=None, repr=False)
    _resume: tuple[dict[str, Any], int] | None = field(default=None, repr=False)
    _resumed_from: dict[str, str] | None = field(default=None, repr=False)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def load_checkpoint(self) -> tuple[dict[str, Any], int] | None:
        """
        The last checkpoint an earlier try of this task saved, as ``(state, epoch)``, or None.

        Same answer on every rank (rank 0 fetched it at start-up and broadcast it); resume at
        ``epoch + 1``. Only the try before a *finished* run is ever resumed from: clearing a task
        that succeeded trains from scratch.
        """
        if self._resume is not None and self.is_chief and self._resumed_from is not None:
            _record_resume(self._mlflow, self._resumed_from)
            self._resumed_from = None  # recorded once, however often the script asks
        return self._resume

    def save_checkpoint(self, state: dict[str, Any], epoch: int) -> None:
        """
        Save ``state`` (tensors, numbers, strings, lists and dicts of them) as the checkpoint of
        ``epoch``. Call it on every rank: rank 0 writes, the others return at once.
        """
        if self.is_chief and self._checkpoints is not None:
            self._checkpoints.save(state, int(epoch))

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """Log metrics to the MLflow run (rank 0 only; other ranks ignore the call)."""
        if self.is_chief and self._mlflow is not None:
            self._mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)
        if self.is_chief:
            print(f"[metrics] step={step} " + " ".join(f"{k}={float(v):.5f}" for k, v in values.items()))

    def allreduce_mean(self, value: float) -> float:
        """Average a number over all ranks."""
        import torch

        return float(self.hvd.allreduce(torch.tensor([float(value)])).item())

    roc_auc = staticmethod(_metrics.roc_auc)
    classification_metrics = staticmethod(_metrics.classification_metrics)


#: what ``MlflowHook.subprocess_env`` hands the job: the MLflow connection, for rank 0 only
MLFLOW_CONNECTION_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)

CHECKPOINT_KEY_TAG = "airflow_mlops.checkpoint_key"
CHECKPOINT_EPOCH_TAG = "airflow_mlops.checkpoint_epoch"
CHECKPOINT_PATH_TAG = "airflow_mlops.checkpoint_path"


class CheckpointStore:
    """
    Rank 0's checkpoints, kept as artifacts of the task's MLflow run.

    Why MLflow's artifact store and not a local folder: a retry may run on another worker (Celery,
    Kubernetes executors) or in another pod (Kubernetes mode), and the artifact store is the one
    place every rank 0 already reaches (the model goes there). So checkpoints work wherever
    logging the model works, and are cleaned up with the run.
    """

    def __init__(self, mlflow: Any, artifact_uri: str) -> None:
        self.mlflow = mlflow
        self.artifact_uri = artifact_uri
        self._previous: str | None = None

    def save(self, state: dict[str, Any], epoch: int) -> None:
        import tempfile

        import torch

        started = time.time()
        name = f"epoch-{epoch:05d}.pt"
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            path = Path(tmp) / name
            torch.save(state, path)
            size = path.stat().st_size
            self.mlflow.log_artifact(str(path), artifact_path="checkpoints")
        # the tags move only once the file is complete: a try killed mid-upload leaves them on
        # the previous, whole checkpoint
        self.mlflow.set_tags({CHECKPOINT_EPOCH_TAG: str(epoch), CHECKPOINT_PATH_TAG: f"checkpoints/{name}"})
        self._delete_previous(f"checkpoints/{name}")
        print(f"[checkpoint] saved epoch {epoch} ({size / 1024:.0f} KiB, {time.time() - started:.2f} s)")

    def _delete_previous(self, current: str) -> None:
        """Keep only the newest checkpoint; best effort (not every artifact store can delete)."""
        previous, self._previous = self._previous, current
        if previous is None or previous == current:
            return
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            get_artifact_repository(self.artifact_uri).delete_artifacts(previous)
        except Exception as err:  # noqa: BLE001 - an old checkpoint left behind is harmless
            print(f"[checkpoint] could not delete {previous}: {err}")


def _find_checkpoint(client: Any, experiment_id: str, key: str) -> tuple[Any | None, list[Any]]:
    """
    The newest run of an earlier try of this task instance that holds a checkpoint (or None), and
    the runs of earlier tries still marked RUNNING: a killed try never closes its run.

    Walks the runs tagged with ``key`` from the newest; stops at a FINISHED one: its task
    succeeded, so this try is a deliberate re-run (a cleared task), not a retry to resume.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CHECKPOINT_KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    stale = []
    for run in runs:
        if run.info.status == "FINISHED":
            break
        if run.info.status == "RUNNING":
            stale.append(run)
        if CHECKPOINT_PATH_TAG in run.data.tags:
            return run, stale
    return None, stale


def _fetch_checkpoint(mlflow: Any, experiment_id: str, key: str) -> tuple[Any, Any] | None:
    """
    Rank 0: download and load the checkpoint to resume from, as ``(run, (state, epoch))``.

    Earlier tries' runs left RUNNING are marked KILLED on the way, so that each task instance has
    one live run: this try's.
    """
    import tempfile

    import torch

    client = mlflow.MlflowClient()
    run, stale = _find_checkpoint(client, experiment_id, key)
    for old in stale:
        client.set_terminated(old.info.run_id, status="KILLED")
    if run is None:
        return None
    path, epoch = run.data.tags[CHECKPOINT_PATH_TAG], int(run.data.tags[CHECKPOINT_EPOCH_TAG])
    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path, dst_path=tmp)
        # weights_only: a checkpoint is data, never code to run
        state = torch.load(local, map_location="cpu", weights_only=True)
    return run, (state, epoch)


def _record_resume(mlflow: Any, resumed_from: dict[str, str]) -> None:
    if mlflow is not None:
        mlflow.set_tags(resumed_from)
    print(
        f"[checkpoint] resuming from epoch {resumed_from['resumed_from_epoch']} "
        f"of run {resumed_from['resumed_from_run_id']}"
    )


def _load_user_module(path: str):
    # Import under the file's own name so a pickled model refers to ``<stem>.<Class>``,
    # which MLflow can import again from the model's ``code`` folder anywhere.
    script = Path(path).resolve()
    sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "train"):
        raise SystemExit(f"{script} defines no train(ctx) function; see docs/training.md.")
    return module


def _system_info(torch, hvd) -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "horovod_size": str(hvd.size()),
        "cuda": str(torch.cuda.is_available()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "host": platform.node(),
        "cpu_count": str(os.cpu_count()),
    }


def _signature(example, output):
    """Column-based signature built explicitly: ``infer_signature`` needs scipy, which
    mlflow-skinny lacks, and silently falls back to ``Any`` — whose enforcement then mangles
    a DataFrame's columns at predict time."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("double", str(name)) for name in example.columns])
    outputs = Schema([TensorSpec(output.dtype, (-1, *output.shape[1:]))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _log_model(mlflow, torch, result: dict[str, Any], script: str, artifact_path: str) -> str:
    model = result["model"].to("cpu").eval()
    example = result.get("input_example")
    signature = None
    if example is not None:
        with torch.no_grad():
            sample_out = model(torch.tensor(example.to_numpy(dtype="float32"))).numpy()
        signature = _signature(example, sample_out)
    info = mlflow.pytorch.log_model(
        model,
        name=artifact_path,
        # pickle + the training script as code: loadable wherever the script's imports are,
        # without re-tracing the graph (the "pt2" default needs tensor-only inputs)
        serialization_format="pickle",
        code_paths=[script],
        signature=signature,
        input_example=example,
    )
    return info.model_uri


def main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    import horovod.torch as hvd
    import torch

    hvd.init()
    rank = hvd.rank()
    if rank != 0:
        # only rank 0 talks to MLflow: the other ranks (and the user's code there) drop its
        # address and credentials before the training script is even imported
        for name in MLFLOW_CONNECTION_ENV:
            os.environ.pop(name, None)
    use_cuda = torch.cuda.is_available() and cfg.get("use_gpu", True)
    if use_cuda:
        torch.cuda.set_device(hvd.local_rank())
    device = torch.device("cuda", hvd.local_rank()) if use_cuda else torch.device("cpu")
    torch.manual_seed(int(cfg.get("seed", 0)))
    # the cores shared out between the ranks on this host, unless the config fixes a number
    torch.set_num_threads(int(cfg.get("torch_threads") or max(1, (os.cpu_count() or 1) // hvd.size())))

    user = _load_user_module(cfg["script"])
    ctx = TrainContext(
        rank=rank,
        size=hvd.size(),
        local_rank=hvd.local_rank(),
        device=device,
        hvd=hvd,
        inputs=cfg.get("inputs", {}),
        hyperparameters=cfg.get("hyperparameters", {}),
    )
    key = (cfg.get("checkpoint") or {}).get("key")
    if rank != 0:
        if key:
            ctx._resume = hvd.broadcast_object(None, root_rank=0, name="checkpoint")
        user.train(ctx)
        return 0

    import mlflow

    experiment = mlflow.set_experiment(cfg["experiment"])
    found = _fetch_checkpoint(mlflow, experiment.experiment_id, key) if key else None
    tags = {**cfg.get("tags", {}), **({CHECKPOINT_KEY_TAG: key} if key else {})}
    started = time.time()
    # nested in the DAG run's parent run (found or created by the operator)
    parent = cfg.get("parent_run_id")
    with mlflow.start_run(run_name=cfg.get("run_name"), tags=tags, parent_run_id=parent) as run:
        task = _run_tree.TaskRef.from_tags(tags)
        if task is not None:  # earlier tries of this task instance: nested under this run, none RUNNING
            earlier = _run_tree.supersede_earlier_tries(
                mlflow.MlflowClient(), experiment.experiment_id, run.info.run_id, task
            )
            if earlier:
                print(f"[run tree] run {run.info.run_id} supersedes earlier tries' runs {', '.join(earlier)}")
        ctx._mlflow = mlflow
        if key:
            ctx._checkpoints = CheckpointStore(mlflow, run.info.artifact_uri)
            ctx._resume = hvd.broadcast_object(found[1] if found else None, root_rank=0, name="checkpoint")
        if found:
            ctx._resumed_from = {
                "resumed_from_epoch": str(found[1][1]),
                "resumed_from_run_id": found[0].info.run_id,
            }
        mlflow.log_params({k: str(v)[:500] for k, v in ctx.hyperparameters.items()})
        mlflow.log_params({"num_proc": hvd.size(), "device": str(device)})
        mlflow.set_tags({f"system.{k}": v for k, v in _system_info(torch, hvd).items()})
        result = user.train(ctx)
        if ctx._resumed_from is not None:
            print("[checkpoint] a checkpoint existed but train() never called ctx.load_checkpoint()")
        final = {k: float(v) for k, v in (result.get("metrics") or {}).items()}
        mlflow.log_metrics(final)
        mlflow.log_metric("training_seconds", time.time() - started)
        model_uri = _log_model(mlflow, torch, result, cfg["script"], cfg.get("artifact_path", "model"))
        out = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "parent_run_id": parent,
            "model_uri": model_uri,
            "artifact_path": cfg.get("artifact_path", "model"),
            "metrics": final,
            "num_proc": hvd.size(),
            "device": str(device),
            # only when train() took the checkpoint (load_checkpoint() clears _resumed_from)
            "resumed_from_epoch": found[1][1] if found and ctx._resumed_from is None else None,
        }
    Path(cfg["result_path"]).write_text(json.dumps(out))
    print(f"[horovod_entry] MLflow run {out['run_id']} metrics {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
