"""The Lightning logger: a tiny CPU fit read back from the reference API, and the Logger API's
mapping (hyperparameters, prefix, ranks, finalize) checked against a recording emitter."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only
from tests.integrations.readback import custom_info, points
from tests.support.stack import Stack

from metricrelay.integrations.lightning import MetricRelayLogger

SCRIPT = Path(__file__).parent / "scripts" / "lightning_fit.py"
STEPS = list(range(20))


def fit_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_fit", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Stands in for an Emitter: records the calls."""

    def __init__(self) -> None:
        self.config = Namespace(execution_id="run-pl-recorded")
        self.calls: list[tuple[Any, ...]] = []

    def log_metrics(self, values: Any, step: Any = None, labels: Any = None) -> None:
        self.calls.append(("metrics", dict(values), step, labels))

    def log_custom_info(self, name: str, value: str) -> None:
        self.calls.append(("customInfo", name, json.loads(value)))

    def flush(self, timeout: Any = None, *, wait_delivered: bool = False) -> None:
        self.calls.append(("flush", wait_delivered))


@pytest.mark.integration
def test_a_fit_arrives_with_steps_hyperparameters_and_rank(
    stack: Stack, read_run: Any, tmp_path: Path
) -> None:
    loggers, rank = fit_script().fit("run-pl", stack.redis.url, 1, tmp_path, handle_sigterm=False)
    for logger in loggers:
        logger.close()
    assert rank == 0
    every, zero = read_run("run-pl-all"), read_run("run-pl-zero")
    assert points(every) == {("train_loss", "0"): STEPS, ("epoch", "0"): STEPS}
    assert points(zero) == {("train_loss", None): STEPS, ("epoch", None): STEPS}
    params = {"lr": 0.05, "layer/hidden": 16, "layer/act": "relu"}
    assert custom_info(every) == custom_info(zero) == {"hyperparameters": params}
    # finalize ran the delivery barrier: by then the worker had accepted every point
    assert [(log.report.accepted, log.report.dead) for log in loggers] == [(40, {}), (40, {})]
    assert (loggers[0].name, loggers[0].version) == ("metricrelay", "run-pl-all")


def test_the_logger_api_maps_onto_the_emitter() -> None:
    recorder = Recorder()
    logger = MetricRelayLogger(emitter=recorder, metric_prefix="fold1", wait_delivered=True)  # type: ignore[arg-type]
    logger.log_hyperparams(Namespace(lr=0.1, optim={"name": "sgd", "momentum": 0.9}, act=abs))
    logger.log_metrics({"loss": 0.5, "bad": float("nan")}, step=7)
    logger.finalize("failed")  # a failed run is not held up by the delivery barrier
    logger.finalize("success")
    assert recorder.calls == [
        (
            "customInfo",
            "hyperparameters",
            {"lr": 0.1, "optim/name": "sgd", "optim/momentum": 0.9, "act": "abs"},
        ),
        ("metrics", {"fold1-loss": 0.5}, 7, {"rank": "0"}),
        ("flush", False),
        ("flush", True),
    ]
    experiment: Any = logger.experiment
    assert experiment is recorder and logger.version == "run-pl-recorded"
    assert logger.run.dropped == 1


def test_under_ranks_zero_another_rank_logs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    logger = MetricRelayLogger(ranks="zero", emitter=recorder)  # type: ignore[arg-type]
    monkeypatch.setattr(rank_zero_only, "rank", 2)  # as Lightning's DDP strategy sets it
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 0.5}, step=1)
    assert logger.experiment is None and recorder.calls == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"loss": 0.5}, step=1)
    assert recorder.calls == [("metrics", {"loss": 0.5}, 1, None)]


def test_the_standalone_pytorch_lightning_package_gets_the_same_logger() -> None:
    from pytorch_lightning.loggers import Logger  # noqa: PLC0415 - only this test needs it

    from metricrelay.integrations.pytorch_lightning import MetricRelayLogger as Standalone  # noqa: PLC0415

    recorder = Recorder()
    logger = Standalone(emitter=recorder)  # type: ignore[arg-type]
    assert isinstance(logger, Logger)
    logger.log_hyperparams({"model": {"width": 8}})
    assert recorder.calls == [("customInfo", "hyperparameters", {"model/width": 8})]
