"""Producer-side packing: points in call order → few large stream fragments.

The one packer of every producer that packs points: the Emitter (:func:`pack`) and ``metricrelay
emit`` (:class:`Packer`). The worker's coalescer (relay/batching.py) packs again, on exact
encoded sizes, into PATCH bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from metricrelay.models import MAX_CUSTOM_INFO, MAX_CUSTOM_INFO_BYTES, MAX_METRICS, MAX_TAGS
from metricrelay.producer.points import Labels, format_ns

__all__ = ["Marker", "Metric", "Named", "Packer", "pack"]

# (name, value, step, labels, time): time is time.time_ns() or an already canonical string
Metric = tuple[str, float, int | None, Labels | None, int | str]


@dataclass(frozen=True, slots=True)
class Named:
    """A tag or a customInfo item (upserted by name)."""

    section: str  # "tags" or "customInfo"
    name: str
    value: str

    @property
    def size(self) -> int:
        return len(self.name) + len(self.value) + 24


class Marker:
    """A point in the operation stream: everything before it has been written once it fires."""

    __slots__ = ("callback",)

    def __init__(self, callback: Any) -> None:
        self.callback = callback


def _metric_dict(op: Metric) -> dict[str, Any]:
    name, value, step, labels, moment = op
    item: dict[str, Any] = {
        "name": name,
        "value": value,
        "timestamp": format_ns(moment) if isinstance(moment, int) else moment,
    }
    if step is not None:
        item["step"] = step
    if labels:
        item["labels"] = [{"name": k, "value": v} for k, v in labels]
    return item


class Packer:
    """One execution's items, in the order given → fragments within one PATCH's limits.

    Closed fragments collect in :attr:`fragments` as ``(fragment JSON, number of items in
    it)`` pairs; :meth:`close` ends the open one. Tags and customInfo are last-write-wins by
    name within a fragment, which is what the API does across PATCHes.
    """

    __slots__ = ("_envelope", "_info_bytes", "_metrics", "_named", "fragments", "pending")

    def __init__(self, resource_group: str, execution_id: str) -> None:
        self._envelope = {"resourceGroup": resource_group, "executionId": execution_id}
        self.fragments: list[tuple[bytes, int]] = []
        self.pending = 0  # items given since the last fragment closed
        self._metrics: list[dict[str, Any]] = []
        self._named: dict[str, dict[str, str]] = {"tags": {}, "customInfo": {}}
        self._info_bytes = 0  # estimated (Named.size) bytes of the open fragment's customInfo

    def add_metric(self, item: dict[str, Any]) -> None:
        """A metric as the stream carries it (checked already); a full fragment closes."""
        metrics = self._metrics
        metrics.append(item)
        self.pending += 1
        if len(metrics) >= MAX_METRICS:
            self.close()

    def add_named(self, op: Named) -> None:
        """A tag or customInfo item; the open fragment closes first if it would not fit."""
        items = self._named[op.section]
        custom_info = op.section == "customInfo"
        limit = MAX_CUSTOM_INFO if custom_info else MAX_TAGS
        too_many = op.name not in items and len(items) >= limit
        too_big = custom_info and self._info_bytes + op.size > MAX_CUSTOM_INFO_BYTES
        if too_many or too_big:
            self.close()
            items = self._named[op.section]
        items[op.name] = op.value
        self._info_bytes += op.size if custom_info else 0
        self.pending += 1

    def close(self) -> None:
        """End the open fragment (if it holds anything)."""
        if not self.pending:
            return
        fragment: dict[str, Any] = dict(self._envelope)
        if self._metrics:
            fragment["metrics"] = self._metrics
        for section, items in self._named.items():
            if items:
                fragment[section] = [{"name": k, "value": v} for k, v in items.items()]
        self.fragments.append((orjson.dumps(fragment), self.pending))
        self._metrics, self._named = [], {"tags": {}, "customInfo": {}}
        self._info_bytes = self.pending = 0

    def take(self) -> list[tuple[bytes, int]]:
        """The fragments closed so far; the caller owns them from now on."""
        fragments, self.fragments = self.fragments, []
        return fragments


def pack(
    ops: Iterable[Metric | Named], resource_group: str, execution_id: str
) -> list[tuple[bytes, int]]:
    """Encode ops, in order, into fragments within one PATCH's limits (:class:`Packer`).

    Returns ``(fragment JSON, number of ops in it)`` pairs.
    """
    packer = Packer(resource_group, execution_id)
    add_metric, add_named = packer.add_metric, packer.add_named
    for op in ops:
        if isinstance(op, Named):
            add_named(op)
        else:
            add_metric(_metric_dict(op))
    packer.close()
    return packer.fragments
