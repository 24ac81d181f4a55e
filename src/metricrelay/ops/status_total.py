"""The relay's state over every shard in play: one :class:`Status` per shard, and their sum.

The sum keeps the meaning of every one-stream field: lengths, lags, pending counts and dead
letters add up; the oldest pending entry is the oldest of any shard; consumers are merged by name
(a worker that owns several shards is one consumer with all its pending entries).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metricrelay.keys import ShardKeys
from metricrelay.ops.status import Backlog, Consumer, LagSource, Status, gather
from metricrelay.replies import id_key

__all__ = ["Overview", "combine", "gather_all"]


@dataclass(frozen=True, slots=True)
class Overview:
    total: Status
    shards: list[Status]


async def gather_all(
    redis: Any,
    shards: Sequence[ShardKeys],
    *,
    events_key: str,
    dead_key: str,
    default_resource_group: str,
    scan_limit: int,
    now_ms: int | None = None,
    lag_scan_min: int = 0,
) -> Overview:
    """Every shard read at the same ``now_ms``. ``scan_limit`` is shared out evenly (rounded up)
    so that status reads about as much with 64 shards as with one; ``lag_scan_min`` is not: a
    ``--max-lag`` check needs each shard counted far enough (one shard above it is enough)."""
    if now_ms is None:
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
    per_shard = math.ceil(scan_limit / len(shards))
    statuses = [
        await gather(
            redis,
            shard,
            default_resource_group=default_resource_group,
            scan_limit=per_shard,
            now_ms=now_ms,
            lag_scan_min=lag_scan_min,
        )
        for shard in shards
    ]
    if len(statuses) == 1:
        return Overview(statuses[0], statuses)
    return Overview(combine(statuses, events_key=events_key, dead_key=dead_key), statuses)


def _lag_source(statuses: Sequence[Status]) -> LagSource:
    """The weakest claim of any shard: a lower bound anywhere makes the sum a lower bound."""
    sources = {status.lag_source for status in statuses}
    for weakest in ("scan_capped", "scan"):
        if weakest in sources:
            return weakest
    return "no_group" if sources == {"no_group"} else "redis"


def _oldest(statuses: Sequence[Status]) -> Status | None:
    with_pending = [s for s in statuses if s.oldest_pending_id is not None]
    return min(with_pending, key=lambda s: id_key(str(s.oldest_pending_id)), default=None)


def _consumers(statuses: Sequence[Status]) -> list[Consumer]:
    merged: dict[str, Consumer] = {}
    for status in statuses:
        for one in status.consumers:
            seen = merged.get(one.name)
            merged[one.name] = (
                one
                if seen is None
                else Consumer(one.name, seen.pending + one.pending, min(seen.idle_ms, one.idle_ms))
            )
    return sorted(merged.values(), key=lambda c: c.name)


def _ids(statuses: Sequence[Status]) -> tuple[str | None, str | None]:
    firsts = [s.first_id for s in statuses if s.first_id is not None]
    lasts = [s.last_id for s in statuses if s.last_id is not None]
    return min(firsts, key=id_key, default=None), max(lasts, key=id_key, default=None)


def _backlog(total: Status, statuses: Sequence[Status]) -> None:
    for status in statuses:
        for key, tally in status.backlog.items():
            into = total.backlog.setdefault(key, Backlog())
            into.pending += tally.pending
            into.undelivered += tally.undelivered
            into.points += tally.points
    total.backlog_scanned = sum(s.backlog_scanned for s in statuses)
    total.backlog_capped = any(s.backlog_capped for s in statuses)
    total.backlog_missing = sum(s.backlog_missing for s in statuses)


def _dead(total: Status, statuses: Sequence[Status]) -> None:
    total.dead_length = sum(s.dead_length for s in statuses)
    total.dead_scanned = sum(s.dead_scanned for s in statuses)
    total.dead_capped = any(s.dead_capped for s in statuses)
    total.dead_by_reason = sum((s.dead_by_reason for s in statuses), Counter())
    total.dead_by_execution = sum((s.dead_by_execution for s in statuses), Counter())


def combine(statuses: Sequence[Status], *, events_key: str, dead_key: str) -> Status:
    """The totals of several shards' statuses (``events_key``/``dead_key`` name them all)."""
    first = statuses[0]
    total = Status(first.now_ms, events_key, dead_key, first.group)
    total.length = sum(s.length for s in statuses)
    total.first_id, total.last_id = _ids(statuses)
    total.group_exists = any(s.group_exists for s in statuses)
    # one stream's last delivered id says nothing about another's: no total for it
    total.last_delivered_id = None
    total.lag = sum(s.lag for s in statuses)
    total.lag_source = _lag_source(statuses)
    total.pending = sum(s.pending for s in statuses)
    oldest = _oldest(statuses)
    if oldest is not None:
        total.oldest_pending_id = oldest.oldest_pending_id
        total.oldest_pending_idle_ms = oldest.oldest_pending_idle_ms
    total.consumers = _consumers(statuses)
    _backlog(total, statuses)
    _dead(total, statuses)
    return total
