"""A tiny Lightning fit that logs to three executions: through MetricRelayLogger from every
rank (rank-labelled) and from rank 0 alone, and through a plain Emitter of each rank
(``log_metrics`` with its rank label) from the training step. The tests call ``fit`` in their
own process (one device) and start this file with torchrun, 4 processes, DDP over gloo:

    torchrun --nproc-per-node 4 lightning_fit.py EXECUTION REDIS_URL ROOT_DIR

(executions ``EXECUTION-all``, ``EXECUTION-zero``, ``EXECUTION-plain``); each rank prints its
rank and the delivery barriers' accepted counts as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

from metricrelay.integrations.lightning import MetricRelayLogger
from metricrelay.producer.emitter import Emitter

STEPS = 20  # optimizer steps of each rank
BATCH = 4


class Tiny(lightning.LightningModule):
    """A Linear layer learning a sum of random inputs."""

    def __init__(self, lr: float = 0.05, layer: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(8, 1)
        self.plain: Emitter | None = None  # a plain Emitter of this rank, if given

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        if self.plain is not None:
            labels = {"rank": str(self.global_rank)}
            self.plain.log_metrics({"plain_loss": loss.item()}, step=batch_idx, labels=labels)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def fit(
    execution: str,
    redis_url: str,
    devices: int,
    root: Path,
    *,
    plain: Emitter | None = None,
    handle_sigterm: bool = True,
) -> tuple[list[MetricRelayLogger], int]:
    """Both loggers, after the fit (their ``report`` is the delivery barrier's), and the rank.
    ``handle_sigterm=False`` in a test's own process (the Emitter's SIGTERM handler is for
    training processes)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(STEPS * BATCH * devices, 8)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=BATCH)
    options: dict[str, Any] = {
        "redis_url": redis_url,
        "wait_delivered": True,
        "delivery_timeout": 60.0,
        "flush_interval": 0.05,
        "handle_sigterm": handle_sigterm,
    }
    loggers = [
        MetricRelayLogger(f"{execution}-all", **options),
        MetricRelayLogger(f"{execution}-zero", ranks="zero", **options),
    ]
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=devices,
        num_nodes=1,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        logger=loggers,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    model = Tiny(layer={"hidden": 16, "act": "relu"})
    model.plain = plain
    trainer.fit(model, data)
    return loggers, trainer.global_rank


def main(execution: str, redis_url: str, root: Path) -> None:
    with Emitter(f"{execution}-plain", redis_url=redis_url, flush_interval=0.05) as plain:
        loggers, rank = fit(execution, redis_url, 4, root, plain=plain)
        barrier = plain.flush(timeout=60, wait_delivered=True)
    reports = [logger.report for logger in loggers]
    accepted = [r.accepted if r else None for r in [*reports, barrier]]
    print(json.dumps({"rank": rank, "accepted": accepted}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
