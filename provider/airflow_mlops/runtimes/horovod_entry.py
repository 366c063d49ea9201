"""Entry point of a Horovod training job; runs in the *training* runtime, once per rank.

Started by ``HorovodTrainOperator`` as::

    horovodrun --gloo -np N -H localhost:N python horovod_entry.py config.json

It initialises Horovod, loads the user's training script, calls its ``train(ctx)`` on every
rank, and on rank 0 records everything in MLflow: tags (dag/run/task ids, dataset version),
params, per-epoch metrics, system info and the model (with signature and input example).
It never imports Airflow.

The user's contract (see docs/training.md)::

    def train(ctx) -> dict:
        # ctx.rank, ctx.size, ctx.device, ctx.hvd, ctx.inputs, ctx.hyperparameters
        # ctx.log_metrics({"loss": 0.3}, step=epoch)  (rank 0 logs, others no-op)
        return {"model": torch_module, "metrics": {...}, "input_example": pandas_frame}
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

import metrics as _metrics  # sibling module in this folder (on sys.path as the script's dir)


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

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

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
    use_cuda = torch.cuda.is_available() and cfg.get("use_gpu", True)
    if use_cuda:
        torch.cuda.set_device(hvd.local_rank())
    device = torch.device("cuda", hvd.local_rank()) if use_cuda else torch.device("cpu")
    torch.manual_seed(int(cfg.get("seed", 0)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.size()))

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
    if rank != 0:
        user.train(ctx)
        return 0

    import mlflow

    mlflow.set_experiment(cfg["experiment"])
    started = time.time()
    with mlflow.start_run(run_name=cfg.get("run_name"), tags=cfg.get("tags", {})) as run:
        ctx._mlflow = mlflow
        mlflow.log_params({k: str(v)[:500] for k, v in ctx.hyperparameters.items()})
        mlflow.log_params({"num_proc": hvd.size(), "device": str(device)})
        mlflow.set_tags({f"system.{k}": v for k, v in _system_info(torch, hvd).items()})
        result = user.train(ctx)
        final = {k: float(v) for k, v in (result.get("metrics") or {}).items()}
        mlflow.log_metrics(final)
        mlflow.log_metric("training_seconds", time.time() - started)
        model_uri = _log_model(mlflow, torch, result, cfg["script"], cfg.get("artifact_path", "model"))
        out = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": model_uri,
            "artifact_path": cfg.get("artifact_path", "model"),
            "metrics": final,
            "num_proc": hvd.size(),
            "device": str(device),
        }
    Path(cfg["result_path"]).write_text(json.dumps(out))
    print(f"[horovod_entry] MLflow run {out['run_id']} metrics {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
