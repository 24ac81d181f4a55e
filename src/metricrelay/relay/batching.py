"""The coalescer: encoded fragments in, PATCH bodies out, every limit of the API held at once.

Pure and synchronous: no I/O and no clock of its own (``now`` is passed in). One open body per
(resourceGroup, executionId); a body closes when the next item would break a limit, when it holds
the maximum number of metrics, when its oldest item has waited ``linger`` seconds, or on flush.
Because an execution only ever has one open body, its bodies come out in stream order.

Acknowledgement bookkeeping lives in the worker's
:class:`~metricrelay.relay.entries.EntryBook`: every holder of a stream entry's items (an open
or in-flight body, a rejected item awaiting its dead-letter write) holds the entry once; the
entry is done when the last holder releases it.

A metric item in a body is usually one encoded point; an entry that travelled the whole-entry
fast path (wholeentry.py) arrives as one *run* of points, placed whole while it fits and cut into
its points only where a body must close inside it — so bodies come out exactly as they would from
single points, with one Python object per entry instead of per point.

Limits learned from 413 answers only shape batching: they make later bodies smaller, and they
grow back towards the configured ones after a quiet period. An item is rejected at intake only by
the API's documented limits; one too large for the configured or learned byte budget travels in
a body of its own, and only the API's 413 to it alone makes it ``too_large``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

import orjson

from metricrelay.codec import EncodedFragment, Section, single_item_resource
from metricrelay.models import MAX_CUSTOM_INFO, MAX_CUSTOM_INFO_BYTES, MAX_METRICS, MAX_TAGS
from metricrelay.relay.entries import EntryBook
from metricrelay.wholeentry import items_of

__all__ = ["Body", "CloseReason", "Coalescer", "Limits", "Rejected"]

DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024
DEFAULT_LINGER: Final = 0.5
# Seconds without a 413 after which learned limits grow one step back (doubling) towards the
# configured ones: a gateway's limit may have been lifted, or the 413 was about something else.
DEFAULT_RECOVER_AFTER: Final = 60.0
_LEARNED_BYTES_FLOOR: Final = 16 * 1024  # below this, splitting each 413 on demand is cheaper

# Body layout: {"executionId":<id>,"metrics":[...],"tags":[...],"customInfo":[...]}, with empty
# sections left out. Each present section costs its key, brackets and one comma per extra item.
_HEAD: Final = b'{"executionId":'
_KEYS: Final[dict[Section, bytes]] = {
    "metrics": b',"metrics":[',
    "tags": b',"tags":[',
    "customInfo": b',"customInfo":[',
}

# (encoded item, id of the stream entry it came from); in Body.metrics also a run of items
Item = tuple[bytes, str]
_METRICS_KEY_COST: Final = len(_KEYS["metrics"]) + 1  # an empty body's growth by its first run


class CloseReason(StrEnum):
    METRICS = "metrics"  # metric count limit reached
    TAGS = "tags"
    CUSTOM_INFO = "custom_info"
    CUSTOM_INFO_BYTES = "custom_info_bytes"
    BYTES = "bytes"  # byte budget of the encoded body
    LINGER = "linger"
    FLUSH = "flush"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one PATCH body may hold; the defaults are the API's documented limits."""

    max_metrics: int = MAX_METRICS
    max_tags: int = MAX_TAGS
    max_custom_info: int = MAX_CUSTOM_INFO
    max_custom_info_bytes: int = MAX_CUSTOM_INFO_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for name in ("max_metrics", "max_tags", "max_custom_info"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_body_bytes < 128:  # room for the envelope and a small item
            raise ValueError("max_body_bytes must be at least 128")


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item that cannot fit in any body on its own; it goes to the dead-letter stream."""

    source: str
    resource_group: str
    execution_id: str
    section: Section
    item: bytes
    reason: str

    def resource(self) -> bytes:
        return single_item_resource(self.resource_group, self.execution_id, self.section, self.item)


@dataclass(slots=True, eq=False)
class Body:
    """One PATCH body in the making (or made). ``size`` is always ``len(self.encode())``."""

    resource_group: str
    execution_id: str
    opened_at: float
    head: bytes  # b'{"executionId":"<id>"'
    metrics: list[Item] = field(default_factory=list)
    tags: dict[str, Item] = field(default_factory=dict)
    custom_info: dict[str, Item] = field(default_factory=dict)
    sources: dict[str, None] = field(default_factory=dict)  # ordered set of stream ids
    metric_count: int = 0  # points in ``metrics`` (more than its length when it holds runs)
    size: int = 0
    custom_info_bytes: int = 0
    close_reason: CloseReason | None = None

    def __post_init__(self) -> None:
        self.size = len(self.head) + 1

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_group, self.execution_id)

    @property
    def item_count(self) -> int:
        return self.metric_count + len(self.tags) + len(self.custom_info)

    def single_metrics(self) -> list[Item]:
        """``metrics`` with every run cut into its points (the list itself when it holds none);
        afterwards ``metrics`` holds single points."""
        if self.metric_count != len(self.metrics):
            runs = self.metrics
            self.metrics = [(one, source) for data, source in runs for one in items_of(data)]
        return self.metrics

    def named(self, section: Section) -> dict[str, Item]:
        return self.tags if section == "tags" else self.custom_info

    def growth(self, section: Section, data: bytes, replaces: bytes | None) -> int:
        """How many bytes the encoded body grows by adding ``data`` (in place of ``replaces``)."""
        if replaces is not None:
            return len(data) - len(replaces)
        count = len(self.metrics) if section == "metrics" else len(self.named(section))
        return len(data) + (1 if count else len(_KEYS[section]) + 1)

    def resource(self) -> bytes:
        """The body as a stream fragment (with its resource group): the dead-letter form."""
        return b'{"resourceGroup":' + orjson.dumps(self.resource_group) + b"," + self.encode()[1:]

    def split(self) -> tuple[Body, Body]:
        """Two bodies with the first and the second half of the items, in order (for 413/400).

        Entries whose only item was superseded (last write wins) stay covered by the first half.
        """
        metrics = self.single_metrics()
        items: list[tuple[Section, str | None, Item]] = [("metrics", None, m) for m in metrics]
        items += [("tags", name, item) for name, item in self.tags.items()]
        items += [("customInfo", name, item) for name, item in self.custom_info.items()]
        if len(items) < 2:
            raise ValueError("a body with fewer than two items cannot be split")
        middle = len(items) // 2
        first, second = self._with(items[:middle]), self._with(items[middle:])
        for source in self.sources:
            if source not in second.sources:
                first.sources.setdefault(source, None)
        return first, second

    def _with(self, items: list[tuple[Section, str | None, Item]]) -> Body:
        body = Body(self.resource_group, self.execution_id, self.opened_at, self.head)
        body.close_reason = self.close_reason
        for section, name, (data, source) in items:
            body.size += body.growth(section, data, None)
            body.sources.setdefault(source, None)
            if name is None:
                body.metrics.append((data, source))
                body.metric_count += 1
            else:
                body.named(section)[name] = (data, source)
                if section == "customInfo":
                    body.custom_info_bytes += len(data)
        return body

    def encode(self) -> bytes:
        parts = [self.head]
        sections: tuple[tuple[Section, Iterable[Item]], ...] = (
            ("metrics", self.metrics),
            ("tags", self.tags.values()),
            ("customInfo", self.custom_info.values()),
        )
        for section, items in sections:
            if items:
                parts += (_KEYS[section], b",".join([data for data, _ in items]), b"]")
        parts.append(b"}")
        return b"".join(parts)


class Coalescer:
    """Packs encoded fragments into PATCH bodies per (resourceGroup, executionId)."""

    def __init__(
        self,
        limits: Limits | None = None,
        linger: float = DEFAULT_LINGER,
        book: EntryBook | None = None,
        *,
        recover_after: float = DEFAULT_RECOVER_AFTER,
    ) -> None:
        self.configured = limits or Limits()
        self.limits = self.configured  # smaller while a learned limit applies
        self.linger = linger
        self.recover_after = recover_after
        self.book = book if book is not None else EntryBook()
        self._learned_at: float | None = None  # when limits were last lowered or probed up
        self._open: dict[tuple[str, str], Body] = {}  # insertion order == opening order
        self._ready: list[Body] = []
        self._rejected: list[Rejected] = []

    @property
    def open_bodies(self) -> int:
        return len(self._open)

    def add(self, source: str, fragment: EncodedFragment, now: float) -> list[str]:
        """Take one entry's valid items. Returns ids done at once (an entry with no items)."""
        key = (fragment.resource_group, fragment.execution_id)
        if fragment.run_count and not (fragment.metrics or fragment.tags or fragment.custom_info):
            # a run alone (most entries): every place it goes holds the entry, so it cannot be
            # done at intake, and the intake hold below would only be taken and given back
            self.add_run(source, key, fragment.run, fragment.run_count, now)
            return []
        self.book.hold(source)  # the intake hold: no release while the entry is half-placed
        if fragment.run_count:
            self.add_run(source, key, fragment.run, fragment.run_count, now)
        for data in fragment.metrics:
            self._place(source, key, "metrics", None, data, now=now)
        for name, data in fragment.tags:
            self._place(source, key, "tags", name, data, now=now)
        for name, data in fragment.custom_info:
            self._place(source, key, "customInfo", name, data, now=now)
        return self.book.release((source,))

    def take_ready(self) -> list[Body]:
        """Closed bodies, oldest first; the caller owns them from now on."""
        ready, self._ready = self._ready, []
        return ready

    def take_rejected(self) -> list[Rejected]:
        rejected, self._rejected = self._rejected, []
        return rejected

    def poll(self, now: float) -> list[Body]:
        """Close bodies whose oldest item has waited ``linger``; return every ready body.
        Also lets learned limits recover after a quiet period."""
        self._recover(now)
        expired = []
        for body in self._open.values():
            if now - body.opened_at < self.linger:
                break  # bodies are in opening order: the rest are younger
            expired.append(body)
        for body in expired:
            self._close(body, CloseReason.LINGER)
        return self.take_ready()

    def flush(self) -> list[Body]:
        """Close every open body; return every ready body."""
        for body in list(self._open.values()):
            self._close(body, CloseReason.FLUSH)
        return self.take_ready()

    def next_deadline(self) -> float | None:
        """When the oldest open body's linger runs out (None when nothing is open)."""
        oldest = next(iter(self._open.values()), None)
        return None if oldest is None else oldest.opened_at + self.linger

    def learn_too_large(self, body: Body, now: float) -> Limits:
        """A body with several items drew 413: later bodies get half its bytes and metrics.

        The server does not say which of its limits the body broke, so both shrink; neither ever
        condemns an item (see the module docstring), and both grow back after a quiet period."""
        metrics = body.metric_count
        self.limits = replace(
            self.limits,
            max_body_bytes=min(
                self.limits.max_body_bytes, max(body.size // 2, _LEARNED_BYTES_FLOOR)
            ),
            max_metrics=min(self.limits.max_metrics, max(1, metrics // 2))
            if metrics > 1
            else self.limits.max_metrics,
        )
        self._learned_at = now
        return self.limits

    def _recover(self, now: float) -> None:
        if self._learned_at is None or now - self._learned_at < self.recover_after:
            return
        top = self.configured
        self.limits = replace(
            self.limits,
            max_body_bytes=min(top.max_body_bytes, self.limits.max_body_bytes * 2),
            max_metrics=min(top.max_metrics, self.limits.max_metrics * 2),
        )
        self._learned_at = None if self.limits == top else now

    def complete(self, body: Body) -> list[str]:
        """The body was delivered or dead-lettered: release its entries; return the done ids."""
        return self.book.release(body.sources)

    def resolve(self, rejected: Rejected) -> list[str]:
        """The rejected item was dead-lettered: release its entry; return the done ids."""
        return self.book.release((rejected.source,))

    def add_run(
        self, source: str, key: tuple[str, str], data: bytes, count: int, now: float
    ) -> None:
        """An entry that is a run of ``count`` points alone (the commonest): placed whole where it
        fits, else point by point. Every place it goes holds the entry, so it is never done at
        once. (``_misfit`` and ``Body.growth`` for a run, inline: this runs once per entry.)"""
        body = self._open.get(key) or self._new_body(key, now)
        limits = self.limits
        grown = len(data) + (1 if body.metrics else _METRICS_KEY_COST)
        if (
            body.metric_count + count > limits.max_metrics
            or body.size + grown > limits.max_body_bytes
        ):
            for one in items_of(data):
                self._place(source, key, "metrics", None, one, now=now)
            return
        sources = body.sources
        if source not in sources:
            sources[source] = None
            self.book.hold(source)
        body.size += grown
        body.metrics.append((data, source))
        body.metric_count += count
        if body.metric_count >= limits.max_metrics:
            self._close(body, CloseReason.METRICS)

    def _place(
        self,
        source: str,
        key: tuple[str, str],
        section: Section,
        name: str | None,
        data: bytes,
        *,
        now: float,
    ) -> None:
        problem = _invalid_alone(section, data)
        if problem is not None:
            self.book.hold(source)
            self._rejected.append(Rejected(source, *key, section, data, problem))
            return
        body = self._open.get(key) or self._new_body(key, now)
        replaced = None if name is None else body.named(section).get(name)
        replaces = None if replaced is None else replaced[0]
        full = self._misfit(body, section, data, replaces)
        if full is not None and body.item_count:
            self._close(body, full)
            body = self._new_body(key, now)
            replaces = None
            full = self._misfit(body, section, data, None)
        if source not in body.sources:
            body.sources[source] = None
            self.book.hold(source)
        body.size += body.growth(section, data, replaces)
        if name is None:
            body.metrics.append((data, source))
            body.metric_count += 1
        else:  # last write wins by name; the earlier entry stays a source of this body (covered)
            body.named(section)[name] = (data, source)
            if section == "customInfo":
                body.custom_info_bytes += len(data) - (0 if replaces is None else len(replaces))
        if full is not None:  # too large for any body under the budget: it travels alone
            self._close(body, full)
        elif name is None and body.metric_count >= self.limits.max_metrics:
            self._close(body, CloseReason.METRICS)

    def _misfit(
        self, body: Body, section: Section, data: bytes, replaces: bytes | None, count: int = 1
    ) -> CloseReason | None:
        """Why ``data`` (``count`` points of a run) does not fit into ``body`` now (None if it
        does)."""
        limits = self.limits
        if replaces is None:
            if section == "metrics" and body.metric_count + count > limits.max_metrics:
                return CloseReason.METRICS
            if section == "tags" and len(body.tags) >= limits.max_tags:
                return CloseReason.TAGS
            if section == "customInfo" and len(body.custom_info) >= limits.max_custom_info:
                return CloseReason.CUSTOM_INFO
        if section == "customInfo":
            grown = body.custom_info_bytes + len(data) - (0 if replaces is None else len(replaces))
            if grown > limits.max_custom_info_bytes:
                return CloseReason.CUSTOM_INFO_BYTES
        if body.size + body.growth(section, data, replaces) > limits.max_body_bytes:
            return CloseReason.BYTES
        return None

    def _new_body(self, key: tuple[str, str], now: float) -> Body:
        body = Body(key[0], key[1], now, _HEAD + orjson.dumps(key[1]))
        self._open[key] = body
        return body

    def _close(self, body: Body, reason: CloseReason) -> None:
        del self._open[body.key]
        body.close_reason = reason
        if body.metrics or body.tags or body.custom_info:
            self._ready.append(body)


def _invalid_alone(section: Section, data: bytes) -> str | None:
    """Why one item breaks a limit the API documents on its own (None if it does not); only
    those make an item ``invalid`` before any request."""
    if section == "customInfo" and len(data) > MAX_CUSTOM_INFO_BYTES:
        return (
            f"customInfo item is {len(data)} bytes encoded; all customInfo of one resource "
            f"may take at most {MAX_CUSTOM_INFO_BYTES}"
        )
    return None
