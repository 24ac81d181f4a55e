"""The rules every integration applies, without servers: which ranks log, with which labels,
which values are kept, how hyperparameters become one JSON object."""

from __future__ import annotations

import json
import logging
import math
import pickle
from argparse import Namespace
from typing import Any

import pytest
import torch

from metricrelay.integrations.ranked import RankedRun, as_number, json_text


class Recorder:
    """Stands in for an Emitter: records the calls."""

    def __init__(self) -> None:
        self.config = Namespace(execution_id="run-recorded")
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False

    def log_metrics(self, values: Any, step: Any = None, labels: Any = None) -> None:
        self.calls.append(("metrics", dict(values), step, labels))

    def log_custom_info(self, name: str, value: str) -> None:
        self.calls.append(("customInfo", name, json.loads(value)))

    def flush(self, timeout: Any = None, *, wait_delivered: bool = False) -> None:
        self.calls.append(("flush", wait_delivered))

    def close(self, timeout: float = 30.0) -> None:
        self.closed = True


def test_all_ranks_log_with_their_rank_label_and_rank_zero_alone_with_none() -> None:
    every = RankedRun(ranks="all", labels={"job": "a"}, emitter=Recorder())  # type: ignore[arg-type]
    every.log_metrics({"loss": 1.0}, 3, rank=2)
    assert every.emitter().calls == [("metrics", {"loss": 1.0}, 3, {"job": "a", "rank": "2"})]  # type: ignore[attr-defined]
    zero = RankedRun(ranks="zero", rank_label="gpu", emitter=Recorder())  # type: ignore[arg-type]
    zero.log_metrics({"loss": 1.0}, 3, rank=1)
    zero.log_hyperparameters({"lr": 0.1}, rank=1)
    zero.log_metrics({"loss": 2.0}, 4, rank=0)
    assert zero.emitter().calls == [("metrics", {"loss": 2.0}, 4, None)]  # type: ignore[attr-defined]


def test_only_finite_numbers_are_kept_and_each_bad_name_is_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = RankedRun(emitter=Recorder())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            run.log_metrics(
                {"loss": math.nan, "acc": torch.tensor(0.5), "name": "x", "flag": True},
                step,
                rank=0,
            )
    assert run.emitter().calls[0] == ("metrics", {"acc": 0.5, "flag": 1.0}, 0, {"rank": "0"})  # type: ignore[attr-defined]
    assert run.dropped == 6
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "'loss'" in warned[0] and "'name'" in warned[1]


def test_hyperparameters_merge_into_one_json_object_written_by_rank_zero() -> None:
    run = RankedRun(emitter=Recorder())  # type: ignore[arg-type]
    run.log_hyperparameters({"lr": 0.1, "layers": (1, 2)}, rank=1)  # not rank 0: nothing
    run.log_hyperparameters({"lr": 0.1, "layers": (1, 2)}, rank=0)
    run.log_hyperparameters({"decay": math.inf, "opt": torch.optim.SGD}, rank=0)
    calls = run.emitter().calls  # type: ignore[attr-defined]
    assert len(calls) == 2
    assert calls[-1] == (
        "customInfo",
        "hyperparameters",
        {"lr": 0.1, "layers": [1, 2], "decay": "inf", "opt": str(torch.optim.SGD)},
    )
    assert json.loads(json_text({"nested": {"a": math.nan}})) == {"nested": {"a": "nan"}}


def test_bad_options_fail_when_the_integration_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="ranks"):
        RankedRun("run-options", ranks="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        RankedRun("run-options", labels={"job": ""})
    with pytest.raises(ValueError, match="execution id"):
        RankedRun()  # none given, none in the environment (conftest clears it)
    monkeypatch.setenv("AICORE_EXECUTION_ID", "run-from-env")  # the Emitter's settings
    run = RankedRun(redis_url="redis://127.0.0.1:1/0", resource_group="team-a")
    assert (run.execution_id, run.config.resource_group) == ("run-from-env", "team-a")


def test_an_emitter_of_its_own_is_made_lazily_and_not_pickled() -> None:
    run = RankedRun("run-lazy-1", redis_url="redis://127.0.0.1:1/0", handle_sigterm=False)
    assert run._emitter is None
    copy = pickle.loads(pickle.dumps(run))
    assert copy.execution_id == "run-lazy-1" and copy._emitter is None
    live = run.emitter()  # a writer thread and a (not yet connected) client: not picklable
    assert pickle.loads(pickle.dumps(run))._emitter is None
    run.close(timeout=1)
    assert run._emitter is None and live._closed
    given = Recorder()
    shared = RankedRun(emitter=given)  # type: ignore[arg-type]
    shared.close()
    assert not given.closed  # an emitter passed in belongs to the caller


def test_as_number() -> None:
    assert as_number(3) == 3.0
    assert as_number(torch.tensor([1.0, 2.0])) is None
    assert as_number("1.0") is None
    assert as_number(None) is None
