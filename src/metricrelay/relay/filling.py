"""Filling a body that waits for a delivery slot with the bodies of its execution queued behind it.

While the API is the bottleneck (every slot busy, or throttled), an execution's bodies queue up
behind the one in flight, each as small as its linger left it. Sent one by one, each spends one
request of the API's rate; filled up to the limits, the same items go in fewer, fuller requests.
A later body is taken in whole when all of it fits (:func:`absorb`); otherwise its first metrics
are, as many as fit (:func:`top_up`), and the rest stays queued behind. Either way the order of
items holds: metrics follow the earlier body's, a tag or customInfo named in both takes the later
value (last write wins, batching.py), and a later body's tags and customInfo are never sent before
anything that came earlier. Pure and synchronous, like the coalescer.
"""

from __future__ import annotations

from metricrelay.codec import Section
from metricrelay.relay.batching import Body, CloseReason, Coalescer, Limits
from metricrelay.wholeentry import items_of, point_count

__all__ = ["Filler", "absorb", "top_up"]


def absorb(into: Body, other: Body, limits: Limits) -> list[str] | None:
    """Move every item of ``other`` (queued after ``into``) into ``into`` if the result keeps
    every limit; None (and nothing changes) if it would not. Returns the stream entries both
    bodies held: ``into`` now holds each of them twice and must give one hold back."""
    if into.key != other.key:
        raise ValueError("only bodies of one execution can be merged")
    if into.metric_count + other.metric_count > limits.max_metrics:
        return None
    if len(into.tags) + _added(into.tags, other.tags) > limits.max_tags:
        return None
    if len(into.custom_info) + _added(into.custom_info, other.custom_info) > limits.max_custom_info:
        return None
    info_bytes = into.custom_info_bytes + _replacing(into.custom_info, other.custom_info)
    if info_bytes > limits.max_custom_info_bytes:
        return None
    size = into.size + _growth(into, other)
    if size > limits.max_body_bytes:
        return None
    shared = [source for source in other.sources if source in into.sources]
    into.metrics.extend(other.metrics)
    into.metric_count += other.metric_count
    into.tags.update(other.tags)
    into.custom_info.update(other.custom_info)
    for source in other.sources:
        into.sources.setdefault(source, None)
    into.size = size
    into.custom_info_bytes = info_bytes
    # why it can take no more, if it cannot: its last items came from ``other``
    full = into.metric_count >= limits.max_metrics
    into.close_reason = CloseReason.METRICS if full else other.close_reason
    return shared


def top_up(into: Body, other: Body, limits: Limits) -> list[str]:
    """Move the first metrics of ``other`` into ``into``, as many as keep its metric count and
    bytes within ``limits``; ``other`` keeps the rest, its tags and customInfo, and every entry
    it held (as ``Body.split`` does). Returns the entries ``into`` now holds that it did not:
    each needs a hold of its own."""
    if into.key != other.key:
        raise ValueError("only bodies of one execution can be merged")
    room = limits.max_metrics - into.metric_count
    budget = limits.max_body_bytes - into.size
    if not other.tags and not other.custom_info:
        room = min(room, other.metric_count - 1)  # all of it would have been absorbed
    metrics = other.metrics
    counted = other.metric_count != len(metrics)  # it holds runs: count each element's points
    elements = points = used = 0
    while elements < len(metrics) and points < room:
        data = metrics[elements][0]
        count = point_count(data) if counted else 1
        cost = len(data) + (_separators(into, "metrics", 1) if not elements else 1)
        if count <= room - points and used + cost <= budget:
            elements, points, used = elements + 1, points + count, used + cost
        elif count > 1:  # a run that fits only in part: its points one by one from here
            source = metrics[elements][1]
            metrics[elements : elements + 1] = [(one, source) for one in items_of(data)]
        else:
            break
    moved = elements
    if not moved:
        return []
    taken, other.metrics = metrics[:moved], metrics[moved:]
    into.metrics.extend(taken)
    into.metric_count += points
    other.metric_count -= points
    into.size += used
    other.size = len(other.encode())
    gained = [source for _, source in taken if source not in into.sources]
    for source in gained:
        into.sources.setdefault(source, None)
    return list(dict.fromkeys(gained))


class Filler:
    """The scheduler's ``fill``: :func:`absorb`, else :func:`top_up`, within the coalescer's
    current limits (learned 413 limits included), keeping the entries' holds right. True when
    ``other`` was taken in whole (it is gone); False when it stays, perhaps smaller."""

    def __init__(self, coalescer: Coalescer) -> None:
        self.coalescer = coalescer

    def __call__(self, into: Body, other: Body) -> bool:
        limits, book = self.coalescer.limits, self.coalescer.book
        shared = absorb(into, other, limits)
        if shared is None:
            for source in top_up(into, other, limits):
                book.hold(source)
            return False
        if shared and book.release(shared):
            raise RuntimeError("a merged body gave back the last hold of an entry it holds")
        return True


NamedItems = dict[str, tuple[bytes, str]]


def _added(mine: NamedItems, theirs: NamedItems) -> int:
    """How many items of ``theirs`` have names ``mine`` lacks."""
    return sum(1 for name in theirs if name not in mine)


def _replacing(mine: NamedItems, theirs: NamedItems) -> int:
    """Bytes of data ``mine`` grows by taking every item of ``theirs`` (last write wins)."""
    grown = 0
    for name, (data, _) in theirs.items():
        old = mine.get(name)
        grown += len(data) - (0 if old is None else len(old[0]))
    return grown


def _growth(into: Body, other: Body) -> int:
    """Bytes the encoded ``into`` grows by taking every item of ``other``."""
    grown = _separators(into, "metrics", len(other.metrics))  # elements: a run is one
    grown += sum(len(data) for data, _ in other.metrics)
    named: tuple[tuple[Section, NamedItems, NamedItems], ...] = (
        ("tags", into.tags, other.tags),
        ("customInfo", into.custom_info, other.custom_info),
    )
    for section, mine, theirs in named:
        grown += _separators(into, section, _added(mine, theirs)) + _replacing(mine, theirs)
    return grown


def _separators(into: Body, section: Section, added: int) -> int:
    """What ``added`` new items cost beyond their data: a comma each, and the section's key and
    closing bracket instead of the first comma if the section was empty (``Body.growth``)."""
    return into.growth(section, b"", None) + added - 1 if added else 0
