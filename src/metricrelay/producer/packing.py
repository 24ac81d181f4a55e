"""Producer-side packing: points in call order → few large stream fragments.

The one packer of every producer that packs points: the Emitter (:func:`pack`) and ``metricrelay
emit`` (:class:`Packer`). The worker's coalescer (relay/batching.py) packs again, on exact
encoded sizes, into PATCH bodies.

The Emitter's points arrive as one tuple per call (:data:`Points`) and are encoded here, in its
writer thread, straight to JSON text: the part the points of a call share (timestamp, step,
labels) once per call, each name's opening once per run, the values by one ``orjson.dumps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from metricrelay.models import MAX_CUSTOM_INFO, MAX_CUSTOM_INFO_BYTES, MAX_METRICS, MAX_TAGS
from metricrelay.producer.points import CACHE_LIMIT, Labels, format_ns

__all__ = ["Marker", "Metric", "Named", "Packer", "Points", "encode_points", "pack"]

# One call's points: (names, values, step, labels, time); time is time.time_ns() or an already
# canonical string; values are checked floats, one per name.
Points = tuple[tuple[str, ...], tuple[float, ...], int | None, Labels | None, int | str]
# One point, the same with a single name and value (what ``pack`` also takes).
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


class _Openings(dict[str, bytes]):
    """``{"name":<name>,"value":`` per metric name, made on first use (bounded)."""

    def __missing__(self, name: str) -> bytes:
        if len(self) >= CACHE_LIMIT:
            self.clear()
        opening = self[name] = b'{"name":' + orjson.dumps(name) + b',"value":'
        return opening


class _LabelTexts(dict[Labels, bytes]):
    """``,"labels":[...]`` per label set, made on first use (bounded)."""

    def __missing__(self, labels: Labels) -> bytes:
        if len(self) >= CACHE_LIMIT:
            self.clear()
        text = b',"labels":' + orjson.dumps([{"name": k, "value": v} for k, v in labels])
        self[labels] = text
        return text


class _Rows(dict[tuple[str, ...], list[bytes]]):
    """Per tuple of names: the pieces of a call's encoding with the openings in place,
    ``[opening, value, ending] * n``, the rest filled per call (bounded)."""

    def __missing__(self, names: tuple[str, ...]) -> list[bytes]:
        if len(self) >= CACHE_LIMIT:
            self.clear()
        row = [b""] * (3 * len(names))
        row[0::3] = [_OPENINGS[name] for name in names]
        self[names] = row
        return row


_OPENINGS: Final = _Openings()
_LABEL_TEXTS: Final = _LabelTexts()
_ROWS: Final = _Rows()


def encode_points(op: Points) -> bytes:
    """One call's points as JSON objects separated by commas, keys in the order the stream has
    always carried them (name, value, timestamp, step, labels). Built from pieces with one join:
    what the points of a call share (timestamp, step, labels) is encoded once per call."""
    names, values, step, labels, moment = op
    if type(moment) is int:  # formatted here: digits, '-', ':', 'T', '.', 'Z' only
        timestamp = b'"%s"' % format_ns(moment).encode()
    else:
        timestamp = orjson.dumps(moment)
    ending = b',"timestamp":%s%s%s}' % (
        timestamp,
        b"" if step is None else b',"step":%d' % step,
        _LABEL_TEXTS[labels] if labels else b"",
    )
    row = _ROWS[names].copy()
    # a list of floats encodes with no comma inside a number: split it back into the values
    row[1::3] = orjson.dumps(values)[1:-1].split(b",")
    row[2::3] = [ending + b","] * len(names)
    row[-1] = ending
    return b"".join(row)


class Packer:
    """One execution's items, in the order given → fragments within one PATCH's limits.

    Closed fragments collect in :attr:`fragments` as ``(fragment JSON, number of items in
    it)`` pairs; :meth:`close` ends the open one. Tags and customInfo are last-write-wins by
    name within a fragment, which is what the API does across PATCHes.
    """

    __slots__ = (
        "_count",
        "_envelope",
        "_info_bytes",
        "_metrics",
        "_named",
        "fragments",
        "pending",
    )

    def __init__(self, resource_group: str, execution_id: str) -> None:
        self._envelope = {"resourceGroup": resource_group, "executionId": execution_id}
        self.fragments: list[tuple[bytes, int]] = []
        self.pending = 0  # items given since the last fragment closed
        self._metrics: list[dict[str, Any] | orjson.Fragment] = []
        self._count = 0  # metrics in the open fragment
        self._named: dict[str, dict[str, str]] = {"tags": {}, "customInfo": {}}
        self._info_bytes = 0  # estimated (Named.size) bytes of the open fragment's customInfo

    def add_metric(self, item: dict[str, Any]) -> None:
        """A metric as the stream carries it (checked already); a full fragment closes."""
        self._metrics.append(item)
        self._count += 1
        self.pending += 1
        if self._count >= MAX_METRICS:
            self.close()

    def add_encoded(self, text: bytes, count: int) -> None:
        """``count`` (≤ 1000) checked metrics already encoded as JSON objects separated by
        commas (:func:`encode_points`); the open fragment closes first if they would not fit."""
        if not 0 < count <= MAX_METRICS:
            raise ValueError(f"encoded metrics come 1-{MAX_METRICS} at a time, not {count}")
        if self._count + count > MAX_METRICS:
            self.close()
        self._metrics.append(orjson.Fragment(text))
        self._count += count
        self.pending += count
        if self._count >= MAX_METRICS:
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
        self._info_bytes = self.pending = self._count = 0

    def take(self) -> list[tuple[bytes, int]]:
        """The fragments closed so far; the caller owns them from now on."""
        fragments, self.fragments = self.fragments, []
        return fragments


def pack(
    ops: Iterable[Points | Metric | Named], resource_group: str, execution_id: str
) -> list[tuple[bytes, int]]:
    """Encode ops, in order, into fragments within one PATCH's limits (:class:`Packer`).

    Returns ``(fragment JSON, number of items in it)`` pairs (a call's points count one each).
    """
    packer = Packer(resource_group, execution_id)
    add_encoded, add_named = packer.add_encoded, packer.add_named
    for op in ops:
        if isinstance(op, Named):
            add_named(op)
            continue
        points = _as_points(op)
        count = len(points[0])
        if 0 < count <= MAX_METRICS:
            add_encoded(encode_points(points), count)
        elif count:
            names, values, step, labels, moment = points
            for start in range(0, count, MAX_METRICS):  # a call of more than 1000 metrics
                end = start + MAX_METRICS
                part = (names[start:end], values[start:end], step, labels, moment)
                add_encoded(encode_points(part), len(part[0]))
    packer.close()
    return packer.fragments


def _as_points(op: Points | Metric) -> Points:
    name, value, step, labels, moment = op
    if isinstance(name, str):  # one point (a Metric)
        return ((name,), (value,), step, labels, moment)  # type: ignore[return-value]
    return op  # type: ignore[return-value]
