"""Producer-side packing: logged operations in call order → few large stream fragments."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from metricrelay.models import MAX_CUSTOM_INFO, MAX_CUSTOM_INFO_BYTES, MAX_METRICS, MAX_TAGS
from metricrelay.producer.points import Labels, format_ns

__all__ = ["Marker", "Metric", "Named", "pack"]

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


_OVERHEAD: Final = 256  # envelope bytes per fragment, conservatively


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


def pack(
    ops: Iterable[Metric | Named], resource_group: str, execution_id: str
) -> list[tuple[bytes, int]]:
    """Encode ops, in order, into fragments within one PATCH's limits.

    Returns ``(fragment JSON, number of ops in it)`` pairs. Tags and customInfo are
    last-write-wins by name within a fragment, which is what the API does across PATCHes.
    """
    out: list[tuple[bytes, int]] = []
    metrics: list[dict[str, Any]] = []
    named: dict[str, dict[str, str]] = {"tags": {}, "customInfo": {}}
    info_bytes = count = 0

    def close() -> None:
        nonlocal metrics, named, info_bytes, count
        if not count:
            return
        fragment: dict[str, Any] = {"resourceGroup": resource_group, "executionId": execution_id}
        if metrics:
            fragment["metrics"] = metrics
        for section, items in named.items():
            if items:
                fragment[section] = [{"name": k, "value": v} for k, v in items.items()]
        out.append((orjson.dumps(fragment), count))
        metrics, named, info_bytes, count = [], {"tags": {}, "customInfo": {}}, 0, 0

    for op in ops:
        if isinstance(op, Named):
            items = named[op.section]
            limit = MAX_TAGS if op.section == "tags" else MAX_CUSTOM_INFO
            too_many = op.name not in items and len(items) >= limit
            too_big = op.section == "customInfo" and info_bytes + op.size > MAX_CUSTOM_INFO_BYTES
            if too_many or too_big:
                close()
                items = named[op.section]
            items[op.name] = op.value
            info_bytes += op.size if op.section == "customInfo" else 0
        else:
            metrics.append(_metric_dict(op))
            if len(metrics) >= MAX_METRICS:
                count += 1
                close()
                continue
        count += 1
    close()
    return out
