"""A Hugging Face ``TrainerCallback`` that writes through the Emitter.

``Trainer(..., callbacks=[MetricRelayCallback("my-execution")])`` (with ``report_to=[]`` or
alongside other reporters). What maps to what (README, "Lightning and Hugging Face"):
``on_log`` → the finite numbers of ``logs`` at ``state.global_step``, labelled with the global
rank ``args.process_index`` (or rank 0 only); ``on_train_begin`` → the customInfo item
``hyperparameters``: the model's config overlaid with ``TrainingArguments.to_dict()``, as
Transformers' own W&B and MLflow callbacks combine them; ``on_train_end`` → flush (and,
optionally, the delivery barrier).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from metricrelay.integrations.ranked import END_WAIT_S, RankedRun, Ranks
from metricrelay.producer.emitter import Emitter
from metricrelay.progress import DeliveryReport

__all__ = ["MetricRelayCallback", "hyperparameters"]


def hyperparameters(args: TrainingArguments, model: Any = None) -> dict[str, Any]:
    """The model's config (if it has one) with the training arguments over it."""
    combined: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None:
        combined.update(config if isinstance(config, dict) else config.to_dict())
    combined.update(args.to_dict())  # type: ignore[no-untyped-call]
    return combined


class MetricRelayCallback(TrainerCallback):
    """Trainer logs and hyperparameters → the metricrelay stream; options as
    :class:`~metricrelay.integrations.ranked.RankedRun` (``ranks``, ``rank_label``,
    ``labels``, ``wait_delivered``, ``delivery_timeout``, ``emitter``) and the Emitter's
    (``redis_url``, ``resource_group``, ``prefix``…; unset ones from the environment)."""

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
        self.report: DeliveryReport | None = None  # the barrier's, after on_train_end

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self.run.log_hyperparameters(hyperparameters(args, model), args.process_index)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.run.log_metrics(logs or {}, state.global_step, args.process_index)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        try:
            self.report = self.run.finish()
        finally:  # a later evaluate() on the trainer makes another
            self.run.close(END_WAIT_S)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop this rank's Emitter (it also closes at interpreter exit)."""
        self.run.close(timeout)
