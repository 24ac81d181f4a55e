"""The Hugging Face callback on a tiny CPU Trainer run (a one-layer GPT-2 built from a config,
no hub): what the Trainer logs arrives at the reference API, at ``state.global_step``, with the
rank label; hyperparameters as one customInfo item; ``ranks="zero"`` logs from rank 0 alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tests.integrations.readback import custom_info, points
from tests.support.stack import Stack
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from metricrelay.integrations.transformers import MetricRelayCallback

pytestmark = pytest.mark.integration  # Redis, the reference API and a worker

STEPS = 10
EVERY_STEP = {"loss", "grad_norm", "learning_rate", "epoch"}  # what the Trainer logs each step
AT_THE_END = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
AT_THE_END |= {"total_flos", "train_loss", "epoch"}  # the summary logged at the last step


def tiny_trainer(folder: Path, callbacks: list[TrainerCallback]) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64,
            n_positions=16,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (STEPS * 4, 8))]
    args = TrainingArguments(
        output_dir=str(folder / "hf"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],  # no integrations of Transformers' own
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)


def test_trainer_logs_hyperparameters_and_ranks_arrive(
    stack: Stack, read_run: Any, tmp_path: Path
) -> None:
    options: dict[str, Any] = {
        "redis_url": stack.redis.url,
        "wait_delivered": True,
        "delivery_timeout": 60.0,
        "flush_interval": 0.05,
        "handle_sigterm": False,  # the Emitter's SIGTERM handler is for training processes
    }
    every = MetricRelayCallback("run-hf-all", labels={"job": "tiny-gpt2"}, **options)
    zero = MetricRelayCallback("run-hf-zero", ranks="zero", **options)
    tiny_trainer(tmp_path, [every, zero]).train()
    every.close()
    zero.close()

    resource = read_run("run-hf-all")
    found = points(resource)
    assert found[("loss", "0")] == list(range(1, STEPS + 1))
    assert {name for name, rank in found} == EVERY_STEP | AT_THE_END
    assert {rank for _, rank in found} == {"0"}
    assert found[("train_runtime", "0")] == [STEPS]
    assert found[("epoch", "0")] == [*range(1, STEPS + 1), STEPS]  # each step and the summary
    assert every.report is not None and every.report.dead == {}
    assert every.report.accepted == len(resource["metrics"])
    assert all({"name": "job", "value": "tiny-gpt2"} in m["labels"] for m in resource["metrics"])
    params = custom_info(resource)["hyperparameters"]
    assert params["learning_rate"] == 1e-3 and params["max_steps"] == STEPS  # TrainingArguments
    assert params["n_embd"] == 16 and params["model_type"] == "gpt2"  # the model's config

    alone = points(read_run("run-hf-zero"))
    assert {rank for _, rank in alone} == {None}  # rank 0 alone: no rank label
    assert alone[("loss", None)] == list(range(1, STEPS + 1))


def test_other_ranks_log_nothing_under_ranks_zero() -> None:
    class Recorder:
        config = SimpleNamespace(execution_id="run-hf-recorded")

        def __init__(self) -> None:
            self.calls: list[Any] = []

        def log_metrics(self, *args: Any) -> None:
            self.calls.append(args)

        def log_custom_info(self, *args: Any) -> None:
            self.calls.append(args)

    recorder = Recorder()
    callback = MetricRelayCallback(ranks="zero", emitter=recorder)  # type: ignore[arg-type]
    args = SimpleNamespace(process_index=1, to_dict=lambda: {"lr": 1.0})
    state = SimpleNamespace(global_step=3)
    callback.on_train_begin(args, state, None)  # type: ignore[arg-type]
    callback.on_log(args, state, None, logs={"loss": 1.0})  # type: ignore[arg-type]
    assert recorder.calls == []
    args.process_index = 0
    callback.on_log(args, state, None, logs={"loss": 1.0})  # type: ignore[arg-type]
    assert recorder.calls == [({"loss": 1.0}, 3, None)]
