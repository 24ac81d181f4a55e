"""Streams of a shard layout nobody reads: entries a misconfigured producer wrote, and waiting.

A producer with another ``METRICRELAY_SHARDS`` than the workers (or one that was not switched
when the count changed and ``METRICRELAY_DRAIN_SHARDS`` was already removed) writes to streams
no worker reads: its points wait there for ever and nothing else would tell. ``status`` and the
worker's ``metricrelay_stray_stream_entries`` gauge find them by a SCAN over the prefix's stream
names (every master of a cluster), keeping the streams that hold entries and are not in play.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from metricrelay.keys import StreamKind, any_layout_match, stream_kind
from metricrelay.replies import as_text

__all__ = ["Stray", "find_stray", "waiting"]

_SCAN_COUNT: Final = 1000


@dataclass(frozen=True, slots=True)
class Stray:
    key: str
    kind: StreamKind
    length: int


async def find_stray(redis: Any, prefix: str, in_play: Iterable[str]) -> list[Stray]:
    """The event and dead-letter streams of ``prefix`` that hold entries, are named as some
    shard layout names them, and are not among ``in_play``; by kind (events first), then key."""
    known = set(in_play)
    found: list[Stray] = []
    kinds: tuple[StreamKind, ...] = ("events", "dead")
    for kind in kinds:
        match = any_layout_match(prefix, kind)
        async for raw in redis.scan_iter(match=match, count=_SCAN_COUNT, _type="stream"):
            key = as_text(raw)
            if key in known or stream_kind(prefix, key) != kind:
                continue
            length = int(await redis.xlen(key))
            if length:
                found.append(Stray(key, kind, length))
    return sorted(found, key=lambda s: (s.kind != "events", s.key))


def waiting(stray: Iterable[Stray]) -> int:
    """Entries in stray event streams: points that nobody will deliver."""
    return sum(one.length for one in stray if one.kind == "events")
