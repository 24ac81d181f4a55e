"""The body of the Lightning logger, shared by ``lightning`` and the standalone
``pytorch_lightning`` package: each names its own ``Logger`` base class and Fabric utilities.

What maps to what (README, "Lightning and Hugging Face"): ``log_metrics(metrics, step)`` →
metrics at the trainer's step, labelled with the global rank (or rank 0 only);
``log_hyperparams`` → the customInfo item ``hyperparameters``, converted and flattened with
Lightning's own helpers (as its MLflow logger does); ``finalize`` → flush (and, optionally, the
delivery barrier). Nothing touches the network in the training step: the Emitter does that.
"""

from __future__ import annotations

import dataclasses
import importlib
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, ClassVar

from metricrelay.integrations.ranked import END_WAIT_S, RankedRun, Ranks
from metricrelay.producer.emitter import Emitter
from metricrelay.progress import DeliveryReport

__all__ = ["LoggerMethods"]


class LoggerMethods:
    """Lightning's ``Logger`` API on a :class:`RankedRun`; mixed in before the base class."""

    fabric: ClassVar[str] = "lightning.fabric"  # where Lightning's parameter helpers live

    def __init__(
        self,
        execution_id: str | None = None,
        *,
        ranks: Ranks = "all",
        rank_label: str = "rank",
        labels: Mapping[str, str] | None = None,
        metric_prefix: str = "",
        wait_delivered: bool = False,
        delivery_timeout: float = 300.0,
        name: str = "metricrelay",
        emitter: Emitter | None = None,
        **options: Any,
    ) -> None:
        """``options`` are the Emitter's (``redis_url``, ``resource_group``, ``prefix``…);
        the rest is :class:`RankedRun`'s. ``metric_prefix`` is put before every metric name,
        joined by ``-`` (Lightning's ``prefix``: the Emitter's ``prefix`` is the Redis one)."""
        super().__init__()
        # Lightning handles SIGTERM itself (it stops at a batch boundary, and all DDP ranks
        # together); the Emitter's handler, made inside fit, would pre-empt it mid-step.
        options.setdefault("handle_sigterm", False)
        self.run = RankedRun(
            execution_id,
            ranks=ranks,
            rank_label=rank_label,
            labels=labels,
            wait_delivered=wait_delivered,
            delivery_timeout=delivery_timeout,
            emitter=emitter,
            **options,
        )
        self.metric_prefix = metric_prefix
        self._name = name
        self.report: DeliveryReport | None = None  # the barrier's, after a finalize that waited

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        """The execution id (checkpoints go to ``<root>/<name>/<execution id>``)."""
        return self.run.execution_id

    @property
    def experiment(self) -> Emitter | None:
        """This rank's Emitter, for logging what Lightning does not (tags, figures); None on a
        rank that does not log (``ranks="zero"``)."""
        return self.run.emitter() if self.run.logs_on(self.global_rank()) else None

    def _utilities(self) -> Any:
        return importlib.import_module(f"{self.fabric}.utilities.logger")

    def global_rank(self) -> int:
        """The process's global rank as Lightning's strategy set it (``rank_zero_only.rank``),
        read at each call: the logger is built before the launcher starts the ranks."""
        rank_zero = importlib.import_module(f"{self.fabric}.utilities.rank_zero")
        return int(getattr(rank_zero.rank_zero_only, "rank", 0) or 0)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.metric_prefix:
            metrics = self._utilities()._add_prefix(dict(metrics), self.metric_prefix, "-")
        self.run.log_metrics(metrics, step, self.global_rank())

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any
    ) -> None:
        """Namespace, dict or dataclass: converted, callables named, nested keys joined by
        ``/`` (Lightning's helpers), then written by rank 0 as one JSON object."""
        helpers = self._utilities()
        if dataclasses.is_dataclass(params) and not isinstance(params, type):
            params = dataclasses.asdict(params)  # Lightning converts only a Namespace
        converted = helpers._sanitize_callable_params(helpers._convert_params(params))
        flat = helpers._flatten_dict(converted)
        self.run.log_hyperparameters(flat, self.global_rank())

    def finalize(self, status: str) -> None:
        """Flush; the delivery barrier too (``wait_delivered``) when the run succeeded — a
        failed run is not held up, and what it logged stays in Redis for the worker. Then the
        Emitter this logger made is closed (a later stage on the logger makes another)."""
        try:
            self.report = self.run.finish(deliver=status == "success")
        finally:
            self.run.close(END_WAIT_S)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop this rank's Emitter (it also closes at interpreter exit)."""
        self.run.close(timeout)
