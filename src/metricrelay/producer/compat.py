"""Familiar call styles on top of the Emitter, so existing training code ports by an import.

``tracking`` follows SAP Data Intelligence's tracking SDK (``start_run`` … ``end_run``);
``record_metric_value`` / ``record_list_metric_values`` follow Craft AI's SDK. The mapping to
the MetricResource model (README, "Familiar call styles"):

* metrics → metrics (a step when one is given); a list of values → consecutive steps;
* parameters → one customInfo item ``parameters`` holding every parameter as a JSON object;
* tags → tags; run-level labels → tags too (the model's labels belong to single metrics);
* run name / collection → tags ``run_name`` / ``run_collection_name``;
* ``persist_run`` → the end-of-run barrier (accepted by the API or dead-lettered).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from metricrelay.producer.emitter import Emitter
from metricrelay.progress import DeliveryReport

__all__ = ["Tracking", "record_list_metric_values", "record_metric_value", "tracking"]


class Tracking:
    """One run at a time, as in SAP Data Intelligence's ``tracking`` module."""

    def __init__(self) -> None:
        self._emitter: Emitter | None = None
        self._parameters: dict[str, Any] = {}

    @property
    def emitter(self) -> Emitter:
        if self._emitter is None:
            raise RuntimeError("no run started: call tracking.start_run() first")
        return self._emitter

    def start_run(
        self,
        run_name: str | None = None,
        run_collection_name: str | None = None,
        *,
        execution_id: str | None = None,
        **options: Any,
    ) -> str:
        """Start logging to ``execution_id`` (default: the environment's, else ``run_name``)."""
        if self._emitter is not None:
            raise RuntimeError("a run is already started; end_run() it first")
        try:
            emitter = Emitter(execution_id, **options)
        except ValueError:
            if not run_name:
                raise
            emitter = Emitter(run_name, **options)
        self._emitter, self._parameters = emitter, {}
        tags = {"run_name": run_name, "run_collection_name": run_collection_name}
        emitter.set_tags({k: v for k, v in tags.items() if v})
        return emitter.config.execution_id

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.emitter.log_metric(name, value, step)

    def log_metrics(
        self, metrics: Mapping[str, float] | Iterable[Mapping[str, Any]], step: int | None = None
    ) -> None:
        """A mapping name → value, or a list of ``{"name", "value"[, "step"]}`` records."""
        if isinstance(metrics, Mapping):
            self.emitter.log_metrics(metrics, step)
            return
        for record in metrics:
            self.emitter.log_metric(record["name"], record["value"], record.get("step", step))

    def log_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Merged into one customInfo ``parameters``. Values JSON cannot hold as they are
        (numpy scalars, paths, non-text keys) are written as numbers or text, as a lenient
        ``json.dumps`` would; the merge is kept only once written, so one refused call (over
        5 MB, say) leaves the later ones unharmed."""
        merged = {**self._parameters, **parameters}
        text = orjson.dumps(
            merged, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str
        ).decode()
        if self.emitter.log_custom_info("parameters", text):
            self._parameters = merged

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.emitter.set_tags(tags)

    def set_labels(self, labels: Mapping[str, str]) -> None:
        self.emitter.set_tags(labels)

    def persist_run(self, timeout: float | None = 300.0) -> DeliveryReport | None:
        return self.emitter.flush(timeout, wait_delivered=True)

    def end_run(self, timeout: float = 30.0) -> None:
        emitter, self._emitter = self.emitter, None
        emitter.close(timeout)


tracking = Tracking()

_default: Emitter | None = None


def _emitter() -> Emitter:
    global _default  # noqa: PLW0603 - one process-wide emitter, as the SDK's functions imply
    if _default is None:
        _default = Emitter()
    return _default


def record_metric_value(name: str, value: float) -> None:
    """Craft AI style: one value of a metric (stored without a step, at the time of the call)."""
    _emitter().log_metric(name, value)


def record_list_metric_values(name: str, values: Sequence[float]) -> None:
    """Craft AI style: a list of values, stored as consecutive steps from 0."""
    _emitter().log_list_metric(name, values)
