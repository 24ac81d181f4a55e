"""One rank's part of a run, shared by the framework integrations: which points it logs, with
which labels, through an Emitter created in the rank's own process.

Frameworks hand their loggers whatever was logged — strings, NaN losses, tensors — and expect
logging never to stop training; the API can store none of the first two. So values that are not
finite numbers are dropped here with one warning per metric name (and counted in ``dropped``),
before the Emitter, whose own checks (names, steps) still raise :class:`PointError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from metricrelay.producer.emitter import Emitter, EmitterConfig, SpoolPending
from metricrelay.producer.points import check_labels
from metricrelay.progress import DeliveryReport

__all__ = ["HYPERPARAMETERS", "RankedRun", "Ranks", "as_number", "json_text"]

log = logging.getLogger(__name__)

Ranks = Literal["all", "zero"]
HYPERPARAMETERS: Final = "hyperparameters"  # the customInfo item that holds them, as JSON
# How long the end of training waits for what it logged to reach Redis when it does not wait
# for delivery: with Redis away it is safe in the spool, and training must end all the same.
END_WAIT_S: Final = 10.0


class RankedRun:
    """The emitter of one rank and the rules every integration applies to what it logs.

    ``ranks="all"``: every rank logs, each point labelled ``rank_label`` = its global rank.
    ``ranks="zero"``: only global rank 0 logs, without a rank label (the other ranks' calls do
    nothing). Hyperparameters are run-level, so only rank 0 writes them in either mode.
    ``wait_delivered``: ``finish`` waits until the worker delivered (or dead-lettered) all this
    rank wrote, up to ``delivery_timeout`` seconds, instead of only until it is in Redis.
    ``emitter``: an Emitter of your own (kept open by ``close``); otherwise one is made in the
    rank's process on first use from ``execution_id`` and ``options`` (the Emitter's arguments,
    unset ones from ``METRICRELAY_*`` / ``AICORE_*``), which are checked at once.
    """

    def __init__(
        self,
        execution_id: str | None = None,
        *,
        ranks: Ranks = "all",
        rank_label: str = "rank",
        labels: Mapping[str, str] | None = None,
        wait_delivered: bool = False,
        delivery_timeout: float = 300.0,
        emitter: Emitter | None = None,
        **options: Any,
    ) -> None:
        if ranks not in get_args(Ranks):
            raise ValueError(f"ranks must be 'all' or 'zero', not {ranks!r}")
        self.ranks: Ranks = ranks
        self.rank_label = rank_label
        self.labels = dict(labels or {})
        check_labels({**self.labels, rank_label: "0"})  # a bad label fails here, not mid-run
        self.wait_delivered = wait_delivered
        self.delivery_timeout = delivery_timeout
        self._emitter = emitter
        self._owned = emitter is None
        self._pid = os.getpid()  # the process the Emitter (and its writer thread) belongs to
        self._options = options
        if emitter is not None:
            self.config = emitter.config
        else:
            settings = {k: v for k, v in options.items() if k != "handle_sigterm"}
            self.config = EmitterConfig(execution_id, **settings)
        self.hyperparameters: dict[str, Any] = {}
        self.dropped = 0  # values that were not finite numbers
        self._warned: set[str] = set()

    @property
    def execution_id(self) -> str:
        return self.config.execution_id

    def emitter(self) -> Emitter:
        """This process's Emitter, made on first use (a launcher may pickle or copy the
        integration into each rank: a writer thread and a Redis connection cannot travel; a
        rank forked from a process that had one gets its own, as its writer did not fork)."""
        if self._owned and self._pid != os.getpid():
            self._emitter, self._pid = None, os.getpid()
        if self._emitter is None:
            self._emitter = Emitter(self.config.execution_id, **self._options)
        return self._emitter

    def logs_on(self, rank: int) -> bool:
        return self.ranks == "all" or rank == 0

    def labels_for(self, rank: int) -> dict[str, str]:
        if self.ranks == "all":
            return {**self.labels, self.rank_label: str(rank)}
        return self.labels

    def log_metrics(self, values: Mapping[str, Any], step: int | None, rank: int) -> None:
        """The finite numbers of ``values`` at ``step``, if this rank logs."""
        if not self.logs_on(rank):
            return
        numbers = self.numbers(values)
        if numbers:
            self.emitter().log_metrics(numbers, step, self.labels_for(rank) or None)

    def numbers(self, values: Mapping[str, Any]) -> dict[str, float]:
        kept: dict[str, float] = {}
        for name, value in values.items():
            number = as_number(value)
            if number is not None and math.isfinite(number):
                kept[name] = number
                continue
            self.dropped += 1
            if name not in self._warned:  # a NaN loss would repeat every step
                self._warned.add(name)
                log.warning(
                    "metric %r: %r is not a finite number; the API cannot store it, dropped "
                    "(and its later such values, without another warning)",
                    name,
                    value,
                )
        return kept

    def log_hyperparameters(self, params: Mapping[str, Any], rank: int) -> None:
        """Merged into the one customInfo item ``hyperparameters`` (a JSON object), by rank 0."""
        if rank != 0:
            return
        self.hyperparameters.update(params)
        self.emitter().log_custom_info(HYPERPARAMETERS, json_text(self.hyperparameters))

    def finish(self, *, deliver: bool = True) -> DeliveryReport | None:
        """Everything this rank logged is in Redis — or, with ``wait_delivered`` (and
        ``deliver``), accepted by the API or dead-lettered: TimeoutError after
        ``delivery_timeout`` seconds, what was logged staying in Redis for the worker. Without
        that barrier it never raises: with Redis away, after ``END_WAIT_S`` what is not yet in
        Redis is said and left to the Emitter (its spool, then its close at exit)."""
        if self._emitter is None or (self._owned and self._pid != os.getpid()):
            return None
        if not (self.wait_delivered and deliver):
            try:
                self._emitter.flush(min(self.delivery_timeout, END_WAIT_S))
            except SpoolPending as pending:
                log.warning("the end of training: %s; sent once Redis is back", pending)
            except TimeoutError:
                log.warning("the end of training: not all logged is in Redis yet; still trying")
            return None
        report = self._emitter.flush(self.delivery_timeout, wait_delivered=True)
        if report is not None:
            log.info(
                "execution %s: %d points accepted, dead: %s",
                self.execution_id,
                report.accepted,
                report.dead or "none",
            )
        return report

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the Emitter this run made (one passed in stays open); one a forked
        rank inherited without its writer is only let go."""
        if self._emitter is not None and self._owned:
            if self._pid == os.getpid():
                self._emitter.close(timeout)
            self._emitter = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._owned:
            state["_emitter"] = None
        return state


def as_number(value: Any) -> float | None:
    """A float for numbers, bools and scalar tensors/arrays; None for anything else."""
    if isinstance(value, str | bytes):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of many
        return None


def json_text(params: Mapping[str, Any]) -> str:
    """A JSON object of ``params``; what JSON cannot hold (NaN, objects) becomes text."""
    return json.dumps(_jsonable(params), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)
