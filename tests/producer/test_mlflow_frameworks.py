"""Lightning's ``MLFlowLogger`` and the HF Trainer's ``MLflowCallback``, unmodified, logging to AI
Core through ``metricrelay ingest``: tiny CPU runs of a few steps, no downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.support.mlflow import by_name, ingest_process, relay

from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer

pytestmark = pytest.mark.integration  # redis-server, the reference API, the ingest


STEPS = 6


def test_lightning_mlflow_logger_logs_through_ingest(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
    mlflow_env: Callable[[str], Any],
    tmp_path: Path,
) -> None:
    import lightning as L  # noqa: PLC0415, N812
    import torch  # noqa: PLC0415
    from lightning.pytorch.loggers import MLFlowLogger  # noqa: PLC0415

    class Tiny(L.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
            )

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(STEPS * 4, 4), torch.randn(STEPS * 4, 1))
    with ingest_process(private_redis.url) as ingest:
        mlflow_env(ingest.url)
        logger = MLFlowLogger(
            experiment_name="lightning-exp", run_name="lit-run", tracking_uri=ingest.url
        )
        trainer = L.Trainer(
            max_steps=STEPS, logger=logger, log_every_n_steps=1, accelerator="cpu",
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
        run_id = logger.run_id
        assert run_id is not None
    resource = relay(private_redis.url, api, start_worker, run_id)
    steps = sorted(m["step"] for m in resource["metrics"] if m["name"] == "train_loss")
    assert steps == list(range(STEPS))  # Lightning logs step n-1 after n optimizer steps
    params = orjson.loads(by_name(resource, "customInfo")["parameters"])
    assert params == {"hidden": "8", "lr": "0.05"}
    assert by_name(resource, "tags") == {"run_name": "lit-run", "experiment": "lightning-exp"}


def test_hf_trainer_mlflow_callback_logs_through_ingest(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
    mlflow_env: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import torch  # noqa: PLC0415
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: PLC0415

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-exp")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    tokens = torch.randint(0, 32, (STEPS * 2, 8))
    data = [{"input_ids": row, "labels": row} for row in tokens]
    with ingest_process(private_redis.url) as ingest:
        mlflow = mlflow_env(ingest.url)
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2,
            logging_steps=1, report_to=["mlflow"], run_name="hf-run", save_strategy="no",
            use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=data)
        trainer.train()
        run = mlflow.last_active_run()
        assert run is not None and run.info.status == "FINISHED"
    resource = relay(private_redis.url, api, start_worker, run.info.run_id)
    steps = sorted(m["step"] for m in resource["metrics"] if m["name"] == "loss")
    assert steps == list(range(1, STEPS + 1))
    params = orjson.loads(by_name(resource, "customInfo")["parameters"])
    assert params["n_layer"] == "2" and params["max_steps"] == str(STEPS)
    tags = by_name(resource, "tags")
    assert tags["run_name"] == "hf-run" and tags["experiment"] == "hf-exp"
