"""The framework integrations where training meets trouble: forked ranks, Redis away at the end
of training, SIGTERM during a fit, a dataclass of hyperparameters, one logger per fit.

Tiny CPU models only; the tests that need a real redis-server use the session's private one
(``redis_server``, tests/conftest.py; never 6379). Every Emitter spools into the test's own
folder (``spool_dir``): this folder's conftest clears ``METRICRELAY_SPOOL_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import uuid
from argparse import Namespace
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests.support.streams import stream_steps
from torch.utils.data import DataLoader, TensorDataset

from metricrelay.devtools.embedded import RedisServer
from metricrelay.integrations.lightning import MetricRelayLogger


class Recorder:
    """Stands in for an Emitter: records the calls."""

    def __init__(self) -> None:
        self.config = Namespace(execution_id="run-review-recorded")
        self.calls: list[tuple[Any, ...]] = []

    def log_metrics(self, values: Any, step: Any = None, labels: Any = None) -> None:
        self.calls.append(("metrics", dict(values), step, labels))

    def log_custom_info(self, name: str, value: str) -> None:
        self.calls.append(("customInfo", name, value))


class Tiny(lightning.LightningModule):
    """A Linear layer; ``fail_at`` raises in that batch, ``sigterm_at`` sends SIGTERM to the
    process there. ``completed`` lists the batches whose training_step ran to its end."""

    def __init__(self, fail_at: int | None = None, sigterm_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fail_at = fail_at
        self.sigterm_at = sigterm_at
        self.completed: list[int] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        if batch_idx == self.fail_at:
            raise ValueError("the training step failed")
        if batch_idx == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption, as Kubernetes sends it
        self.completed.append(batch_idx)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(logger: MetricRelayLogger, model: Tiny, root: Path) -> lightning.Trainer:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, data)
    return trainer


def closed_port_url() -> str:
    """A Redis URL nobody listens on (a port the kernel just handed out and took back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- 1. a rank started by fork inherits the parent's Emitter, without its writer thread --------


@pytest.mark.integration
def test_a_forked_rank_gets_an_emitter_of_its_own(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Lightning's ``ddp_fork`` / ``ddp_notebook`` (and accelerate's notebook_launcher) fork
    the ranks: the logger is copied, not pickled. A rank forked after the parent made its
    Emitter (``experiment``, for tags) makes its own, instead of appending to a queue no
    thread writes."""
    execution = unique("run-review-fork")
    logger = MetricRelayLogger(
        execution,
        redis_url=redis_server.url,
        flush_interval=0.05,
        delivery_timeout=5.0,
        spool_dir=str(tmp_path / "spool"),
        handle_sigterm=False,
    )
    parent = logger.experiment
    assert parent is not None
    parent.set_tags({"stage": "dev"})  # before the fit, in the launching process
    parent.flush(10)  # the parent's writer idle before the fork
    pid = os.fork()
    if pid == 0:  # the "rank": never returns into pytest
        code = 1
        try:
            logger.log_metrics({"loss": 0.5}, step=7)
            logger.finalize("success")  # flush: everything of this rank in Redis
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    logger.close(timeout=5)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked rank's finalize failed"
    assert stream_steps(redis_server.url, execution) == [7]


# -- 2. finalize with Redis away: SpoolPending out of trainer.fit --------------------------------


def redis_away_logger(tmp_path: Path) -> MetricRelayLogger:
    return MetricRelayLogger(
        unique("run-review-away"),
        redis_url=closed_port_url(),
        flush_interval=0.05,
        delivery_timeout=1.0,
        spool_dir=str(tmp_path / "spool"),
        handle_sigterm=False,
    )


def test_a_failed_fit_with_redis_away_raises_its_own_error(tmp_path: Path) -> None:
    """finalize("failed") is not held up and raises nothing with Redis away: the training's
    own exception comes out of fit (a SpoolPending once replaced it)."""
    logger = redis_away_logger(tmp_path)
    try:
        with pytest.raises(ValueError, match="the training step failed"):
            fit(logger, Tiny(fail_at=2), tmp_path)
    finally:
        logger.close(timeout=1)


def test_a_finished_fit_with_redis_away_does_not_crash(tmp_path: Path) -> None:
    """A Redis outage does not stop a training run at its end either: fit returns, every point
    safe in the spool (finalize once raised SpoolPending out of fit)."""
    logger = redis_away_logger(tmp_path)
    try:
        fit(logger, Tiny(), tmp_path)  # raises nothing
    finally:
        logger.close(timeout=1)
    assert list((tmp_path / "spool").glob("*.spool")), "the points are safe in the spool"


def test_the_end_of_a_transformers_training_with_redis_away_does_not_crash(
    tmp_path: Path,
) -> None:
    """The same in the Hugging Face callback: ``Trainer.train()`` returns (``on_train_end``
    once raised SpoolPending out of it), every point safe on disk."""
    from metricrelay.integrations.transformers import MetricRelayCallback  # noqa: PLC0415

    callback = MetricRelayCallback(
        unique("run-review-away-hf"),
        redis_url=closed_port_url(),
        flush_interval=0.05,
        delivery_timeout=1.0,
        spool_dir=str(tmp_path / "spool"),
        handle_sigterm=False,
    )
    args: Any = Namespace(process_index=0)
    state: Any = Namespace(global_step=3)
    try:
        callback.on_log(args, state, None, logs={"loss": 0.5})  # type: ignore[arg-type]
        callback.on_train_end(args, state, None)  # type: ignore[arg-type]
    finally:
        callback.close(timeout=1)


# -- 3. the Emitter's SIGTERM handler pre-empts Lightning's own --------------------------------


@pytest.mark.integration
def test_sigterm_during_a_fit_is_left_to_lightning(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The logger's Emitter installs no SIGTERM handler (Lightning reads ``experiment`` before
    it installs its own, and ours, SIGTERM → SystemExit, pre-empted it mid-step): a SIGTERM
    is Lightning's SIGTERMException at a batch boundary, which DDP ranks agree on."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logger = MetricRelayLogger(
        unique("run-review-sigterm"),
        redis_url=redis_server.url,
        flush_interval=0.05,
        spool_dir=str(tmp_path / "spool"),
    )
    model = Tiny(sigterm_at=1)
    try:
        with pytest.raises(BaseException) as raised:  # the type is the finding
            fit(logger, model, tmp_path)
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.close(timeout=5)
    assert type(raised.value) is SIGTERMException, repr(raised.value)
    assert model.completed == [0, 1]  # the step that got the signal ran to its end
    assert after is signal.SIG_DFL  # the process's SIGTERM handling as before the fit


# -- 4. log_hyperparams(dataclass) ------------------------------------------------------------


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    layers: int = 2


def test_log_hyperparams_converts_a_dataclass() -> None:
    """A dataclass of hyperparameters is converted (Lightning's ``_convert_params`` converts
    only a Namespace)."""
    recorder = Recorder()
    logger = MetricRelayLogger(emitter=recorder)  # type: ignore[arg-type]
    logger.log_hyperparams(Config())  # type: ignore[arg-type]
    assert recorder.calls == [("customInfo", "hyperparameters", '{"lr": 0.1, "layers": 2}')]


# -- 5. every logger's Emitter outlives its run ------------------------------------------------


@pytest.mark.integration
def test_a_finished_fit_leaves_no_writer_running(redis_server: RedisServer, tmp_path: Path) -> None:
    """A fresh logger per fit (k-fold, an Optuna trial per Trainer): finalize closes the
    Emitter the logger made — no writer thread, no Redis connection left until interpreter
    exit — and a later stage on the same logger makes another."""

    def writers() -> int:
        return sum(thread.name == "metricrelay-emitter" for thread in threading.enumerate())

    before = writers()
    logger = MetricRelayLogger(
        unique("run-review-leak"),
        redis_url=redis_server.url,
        flush_interval=0.05,
        spool_dir=str(tmp_path / "spool"),
    )
    fit(logger, Tiny(), tmp_path)
    assert logger.run._emitter is None
    assert writers() == before
    logger.log_metrics({"after": 1.0}, step=1)  # a later stage: a new Emitter
    assert writers() == before + 1
    logger.finalize("success")
    assert writers() == before
