"""Training code for the flight-delay example; runs in the training runtime on every Horovod rank.

The contract (docs/training.md): define ``train(ctx)`` and return the model and its metrics.
Keep heavy or runtime-only imports (horovod) out of the module's top level: MLflow imports
this file again wherever the model is loaded (serving, evaluation), through ``ctx.hvd`` only.

It checkpoints the model and optimizer after every epoch (``ctx.save_checkpoint``) and, on a
retry of the task, resumes after the last checkpointed epoch (``ctx.load_checkpoint``). Each
epoch's shuffle depends only on (epoch, rank), so a resumed run sees the batches an
uninterrupted one would have.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = [
    "hour",
    "day_of_week",
    "distance",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "precip",
    "pressure",
    "visib",
    # the carrier's statistics of the previous day (from the carrier_daily feature view)
    "carrier_flights",
    "carrier_dep_delay_mean",
    "carrier_delayed_share",
]
LABEL = "delayed"


class FlightDelayNet(nn.Module):
    """MLP on raw feature values: fills missing values and standardises inside the model."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(len(mean), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.mean, x)
        # clip standardised values: months unlike the training one must not saturate the output
        return self.net(torch.clamp((x - self.mean) / self.std, -5.0, 5.0)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (n, 1) probabilities that the flight arrives more than 15 minutes late
        return torch.sigmoid(self.logits(x)).unsqueeze(-1)


def _xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df[FEATURES].to_numpy(dtype=np.float32), df[LABEL].to_numpy(dtype=np.float32)


def _resume(ctx, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the last checkpoint of an earlier try, if any; return the first epoch to run."""
    checkpoint = ctx.load_checkpoint()
    if checkpoint is None:
        return 0
    state, epoch = checkpoint
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return epoch + 1


def train(ctx) -> dict:
    hp = {"epochs": 8, "batch_size": 256, "lr": 2e-3, "hidden": 32, **ctx.hyperparameters}
    train_df = pd.read_parquet(ctx.inputs["train"], columns=[*FEATURES, LABEL])
    x_all, _ = _xy(train_df)
    mean = np.nanmean(x_all, axis=0)
    std = np.nanstd(x_all, axis=0) + 1e-6
    shard = train_df.iloc[ctx.rank :: ctx.size]  # each rank trains on its own slice
    x, y = (torch.from_numpy(a) for a in _xy(shard))

    model = FlightDelayNet(mean, std, int(hp["hidden"])).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["lr"]) * ctx.size)
    start_epoch = _resume(ctx, model, optimizer)
    optimizer = ctx.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    ctx.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    ctx.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    loss_fn = nn.BCEWithLogitsLoss()
    batch = int(hp["batch_size"])
    steps = max(1, len(x) // batch)

    loop_seconds = 0.0  # time in the batch loop only: start-up, evaluation, checkpoints excluded
    for epoch in range(start_epoch, int(hp["epochs"])):
        model.train()
        generator = torch.Generator().manual_seed(10_000 * epoch + ctx.rank)
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        started = time.perf_counter()
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = x[idx].to(ctx.device), y[idx].to(ctx.device)
            optimizer.zero_grad()
            loss = loss_fn(model.logits(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
        loop_seconds += time.perf_counter() - started
        ctx.log_metrics({"train_loss": ctx.allreduce_mean(total / steps)}, step=epoch)
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, epoch)

    metrics: dict = {}
    if ctx.is_chief and ctx.inputs.get("holdout"):
        holdout = pd.read_parquet(ctx.inputs["holdout"], columns=[*FEATURES, LABEL])
        hx, hy = _xy(holdout)
        model.eval()
        with torch.no_grad():
            prob = model(torch.from_numpy(hx).to(ctx.device)).squeeze(-1).cpu().numpy()
        metrics = {f"holdout_{k}": v for k, v in ctx.classification_metrics(hy, prob).items()}
        metrics["holdout_rows"] = len(holdout)
    epochs_run = int(hp["epochs"]) - start_epoch
    if epochs_run > 0 and loop_seconds > 0:
        # samples of all ranks per second of the batch loop (each rank's rate, summed)
        rate = ctx.allreduce_mean(steps * batch * epochs_run / loop_seconds) * ctx.size
        metrics["train_samples_per_second"] = rate
    metrics["epochs_run"] = epochs_run
    # complete rows make the clearest example (and valid JSON: no NaN)
    complete = train_df[FEATURES].dropna()
    example = (complete if len(complete) else train_df[FEATURES]).head(5).astype("float64")
    return {"model": model, "metrics": metrics, "input_example": example}
