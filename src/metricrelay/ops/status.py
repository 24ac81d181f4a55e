"""What the relay is doing, read from Redis: stream, group lag, consumers, backlog, dead letters.

Every read of entries is bounded: at most ``scan_limit`` pending entries, ``scan_limit``
undelivered entries and ``scan_limit`` dead letters are read, in chunks, and the result says
when a bound was hit (``capped``). Lengths and counts that Redis keeps (XLEN, XPENDING, XINFO)
are always exact. The JSON form (:func:`to_json`, schema 1) is documented in the README.

:func:`gather` reads one event stream and its dead-letter stream; ``status_total`` gathers every
shard in play and adds them up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import orjson
from redis.exceptions import ResponseError

from metricrelay.deadletter import Reason
from metricrelay.keys import ShardKeys
from metricrelay.ops.dead import StreamKeys, inspect_resource
from metricrelay.relay.stray import Stray
from metricrelay.replies import as_text, id_key
from metricrelay.timestamps import format_utc

__all__ = ["SCHEMA_VERSION", "Backlog", "Consumer", "Status", "exceeded", "gather", "to_json"]

SCHEMA_VERSION: Final = 1
_ENTRY_CHUNK: Final = 100
_DEAD_CHUNK: Final = 50
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

LagSource = Literal["redis", "scan", "scan_capped", "no_group"]
ExecutionKey = tuple[str | None, str | None]  # (resource group, execution id); None: unreadable


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    pending: int
    idle_ms: int


@dataclass(slots=True)
class Backlog:
    """Entries of one execution still to deliver: handed to a worker (pending) or not yet."""

    pending: int = 0
    undelivered: int = 0
    points: int = 0


@dataclass(slots=True)
class Status:
    now_ms: int
    events_key: str
    dead_key: str
    group: str
    length: int = 0
    first_id: str | None = None
    last_id: str | None = None
    group_exists: bool = False
    last_delivered_id: str | None = None
    lag: int = 0
    lag_source: LagSource = "no_group"
    pending: int = 0
    oldest_pending_id: str | None = None
    oldest_pending_idle_ms: int | None = None
    consumers: list[Consumer] = field(default_factory=list)
    backlog: dict[ExecutionKey, Backlog] = field(default_factory=dict)
    backlog_scanned: int = 0
    backlog_capped: bool = False
    backlog_missing: int = 0  # pending ids whose entry was deleted from the stream
    dead_length: int = 0
    dead_scanned: int = 0
    dead_capped: bool = False
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    dead_by_execution: Counter[ExecutionKey] = field(default_factory=Counter)
    shard: ShardKeys | None = None  # the one shard read; None for a sum over shards
    owner: str | None = None  # the worker holding the stream's lease (None: nobody works it)

    @property
    def oldest_pending_age_ms(self) -> int | None:
        """How long ago the oldest pending entry was produced (its id is its birth time)."""
        if self.oldest_pending_id is None:
            return None
        return max(0, self.now_ms - id_key(self.oldest_pending_id)[0])


def _execution(resource: bytes | None, default_group: str) -> tuple[ExecutionKey, int]:
    """(resource group, execution id) of an event-stream entry, and its number of points."""
    if resource is None:
        return (None, None), 0
    try:
        document = orjson.loads(resource)
    except orjson.JSONDecodeError:
        return (None, None), 0
    if not isinstance(document, dict) or not isinstance(document.get("executionId"), str):
        return (None, None), 0
    group = document.get("resourceGroup")
    metrics = document.get("metrics")
    return (
        (group if isinstance(group, str) else default_group, document["executionId"]),
        len(metrics) if isinstance(metrics, list) else 0,
    )


async def gather(
    redis: Any,
    keys: StreamKeys,
    *,
    default_resource_group: str,
    scan_limit: int,
    now_ms: int | None = None,
    lag_scan_min: int = 0,
) -> Status:
    """Read the relay's state. ``lag_scan_min``: when Redis cannot tell the lag, scan at least
    that many undelivered entries, so a ``--max-lag`` check never rests on a short count."""
    if now_ms is None:
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
    status = Status(now_ms, keys.events, keys.dead, keys.group)
    status.shard = keys if isinstance(keys, ShardKeys) else keys.shard(0)
    await _stream(redis, keys, status)
    owner = await redis.get(status.shard.lease)  # every stream has one owner at a time
    status.owner = None if owner is None else as_text(owner)
    await _group(redis, keys, status)
    await _pending_backlog(redis, keys, status, default_resource_group, scan_limit)
    budget = scan_limit if status.lag_source == "redis" else max(scan_limit, lag_scan_min)
    await _undelivered_backlog(redis, keys, status, default_resource_group, budget)
    await _dead(redis, keys, status, scan_limit)
    return status


async def _stream(redis: Any, keys: StreamKeys, status: Status) -> None:
    status.length = int(await redis.xlen(keys.events))
    if status.length:
        first = await redis.xrange(keys.events, "-", "+", count=1)
        last = await redis.xrevrange(keys.events, "+", "-", count=1)
        status.first_id = as_text(first[0][0]) if first else None
        status.last_id = as_text(last[0][0]) if last else None


async def _group(redis: Any, keys: StreamKeys, status: Status) -> None:
    try:
        groups = await redis.xinfo_groups(keys.events)
    except ResponseError:  # no stream yet: no worker ever ran and no producer wrote
        groups = []
    info = next((g for g in groups if as_text(g["name"]) == keys.group), None)
    if info is None:
        # the worker creates the group from the stream's start: all of it is undelivered
        status.lag, status.lag_source = status.length, "no_group"
        return
    status.group_exists = True
    status.last_delivered_id = as_text(info["last-delivered-id"])
    status.pending = int(info["pending"])
    lag = info.get("lag")  # absent before Redis 7; None after deletions it cannot count past
    if lag is not None:
        status.lag, status.lag_source = int(lag), "redis"
    else:
        status.lag_source = "scan"
    rows = await redis.xinfo_consumers(keys.events, keys.group)
    status.consumers = [
        Consumer(as_text(row["name"]), int(row["pending"]), int(row["idle"])) for row in rows
    ]
    if status.pending:
        summary = await redis.xpending(keys.events, keys.group)
        status.oldest_pending_id = as_text(summary["min"])


async def _pending_backlog(
    redis: Any, keys: StreamKeys, status: Status, default_group: str, limit: int
) -> None:
    """Tally the oldest ``limit`` pending entries per execution."""
    start, read = "-", 0
    while read < min(limit, status.pending):
        count = min(_ENTRY_CHUNK, limit - read)
        rows = await redis.xpending_range(keys.events, keys.group, start, "+", count)
        if not rows:
            break
        if status.oldest_pending_idle_ms is None:
            status.oldest_pending_idle_ms = int(rows[0]["time_since_delivered"])
        ids = [as_text(row["message_id"]) for row in rows]
        pipe = redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(keys.events, entry_id, entry_id, count=1)
        for found in await pipe.execute():
            if not found:
                status.backlog_missing += 1
                continue
            key, points = _execution(found[0][1].get(b"resource"), default_group)
            tally = status.backlog.setdefault(key, Backlog())
            tally.pending += 1
            tally.points += points
        read += len(ids)
        start = "(" + ids[-1]
    status.backlog_scanned += read
    status.backlog_capped = status.pending > read


async def _undelivered_backlog(
    redis: Any, keys: StreamKeys, status: Status, default_group: str, limit: int
) -> None:
    """Tally up to ``limit`` entries not yet delivered; count the lag when Redis could not."""
    last = status.last_delivered_id
    start = "-" if last in (None, "0-0") else "(" + str(last)
    read, more = 0, True
    while more and read < limit:
        count = min(_ENTRY_CHUNK, limit - read)
        rows = await redis.xrange(keys.events, start, "+", count=count)
        for _, fields in rows:
            key, points = _execution(fields.get(b"resource"), default_group)
            tally = status.backlog.setdefault(key, Backlog())
            tally.undelivered += 1
            tally.points += points
        read += len(rows)
        more = len(rows) == count
        if rows:
            start = "(" + as_text(rows[-1][0])
    if more:  # the budget ran out: a one-entry read tells whether anything is left
        more = bool(await redis.xrange(keys.events, start, "+", count=1))
    status.backlog_scanned += read
    status.backlog_capped = status.backlog_capped or more
    if status.lag_source == "no_group" or _redis_agrees(status.lag_source, status.lag, read, more):
        return
    # Redis could not count (None), or its count contradicts the scan: Redis 7.0 was seen to
    # report a lag of 14 with no entry after the group's last-delivered id, after slot
    # migrations and a failover on a cluster.
    status.lag = read
    status.lag_source = "scan_capped" if more else "scan"  # capped: a lower bound


def _redis_agrees(source: LagSource, lag: int, read: int, more: bool) -> bool:
    """Whether XINFO's lag fits the scan that read ``read`` undelivered entries (``more``:
    it stopped at its budget with entries left)."""
    return source == "redis" and (lag >= read if more else lag == read)


async def _dead(redis: Any, keys: StreamKeys, status: Status, limit: int) -> None:
    """Count the newest ``limit`` dead letters by reason and by execution."""
    status.dead_length = int(await redis.xlen(keys.dead))
    end, read = "+", 0
    while read < min(limit, status.dead_length):
        count = min(_DEAD_CHUNK, limit - read)
        rows = await redis.xrevrange(keys.dead, end, "-", count=count)
        for _, fields in rows:
            status.dead_by_reason[as_text(fields.get(b"reason", b"?"))] += 1
            info = inspect_resource(fields.get(b"resource", b""))
            status.dead_by_execution[(info.resource_group, info.execution_id)] += 1
        read += len(rows)
        if len(rows) < count:
            break
        end = "(" + as_text(rows[-1][0])
    status.dead_scanned = read
    status.dead_capped = read < status.dead_length


def exceeded(status: Status, *, max_lag: int | None, max_pending: int | None) -> list[str]:
    """Which thresholds are exceeded (strictly above): ``lag``, ``pending``."""
    out = []
    if max_lag is not None and status.lag > max_lag:
        out.append("lag")
    if max_pending is not None and status.pending > max_pending:
        out.append("pending")
    return out


def _iso(ms: int) -> str:
    return format_utc(_EPOCH + timedelta(milliseconds=ms))


def _backlog_rows(status: Status) -> list[dict[str, Any]]:
    ordered = sorted(
        status.backlog.items(),
        key=lambda kv: (-(kv[1].pending + kv[1].undelivered), kv[0][0] or "", kv[0][1] or ""),
    )
    return [
        {
            "resource_group": group,
            "execution_id": execution,
            "pending": tally.pending,
            "undelivered": tally.undelivered,
            "points": tally.points,
        }
        for (group, execution), tally in ordered
    ]


def _group_json(status: Status) -> dict[str, Any]:
    return {
        "name": status.group,
        "exists": status.group_exists,
        "last_delivered_id": status.last_delivered_id,
        "lag": status.lag,
        "lag_source": status.lag_source,
        "pending": status.pending,
        "oldest_pending_id": status.oldest_pending_id,
        "oldest_pending_age_ms": status.oldest_pending_age_ms,
        "oldest_pending_idle_ms": status.oldest_pending_idle_ms,
        "consumers": [
            {"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms} for c in status.consumers
        ],
    }


def _dead_json(status: Status) -> dict[str, Any]:
    by_reason = {reason.value: 0 for reason in Reason} | dict(status.dead_by_reason)
    by_execution = sorted(status.dead_by_execution.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return {
        "key": status.dead_key,
        "length": status.dead_length,
        "scanned": status.dead_scanned,
        "capped": status.dead_capped,
        "by_reason": by_reason,
        "by_execution": [
            {"resource_group": group, "execution_id": execution, "count": count}
            for (group, execution), count in by_execution
        ],
    }


def _shard_json(status: Status) -> dict[str, Any]:
    shard = status.shard
    return {
        "name": shard.name if shard is not None else "events",
        "index": shard.index if shard is not None else 0,
        "count": shard.count if shard is not None else 1,
        "events": status.events_key,
        "dead_key": status.dead_key,
        "length": status.length,
        "first_id": status.first_id,
        "last_id": status.last_id,
        "group_exists": status.group_exists,
        "last_delivered_id": status.last_delivered_id,
        "lag": status.lag,
        "lag_source": status.lag_source,
        "pending": status.pending,
        "oldest_pending_id": status.oldest_pending_id,
        "oldest_pending_age_ms": status.oldest_pending_age_ms,
        "dead": status.dead_length,
        "owner": status.owner,
        "consumers": [
            {"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms} for c in status.consumers
        ],
    }


async def redis_memory(redis: Any) -> dict[str, Any]:
    """Used memory against ``maxmemory``; ``full`` when writes would be refused (OOM): a
    limit is set, the policy evicts nothing, and it is reached. On a cluster, the fullest
    master's figures."""
    info = await redis.info("memory")
    rows = list(info.values()) if info and isinstance(next(iter(info.values())), dict) else [info]
    worst: dict[str, Any] = {"used": 0, "maxmemory": 0, "policy": "", "full": False}
    for row in rows:
        used, limit = int(row.get("used_memory", 0)), int(row.get("maxmemory", 0))
        policy = as_text(row.get("maxmemory_policy", ""))
        full = bool(limit) and policy == "noeviction" and used >= limit
        if full or (not worst["full"] and used > worst["used"]):
            worst = {"used": used, "maxmemory": limit, "policy": policy, "full": full}
    return worst


def to_json(
    status: Status,
    *,
    redis: str,
    max_lag: int | None,
    max_pending: int | None,
    shards: list[Status] | None = None,
    stray: list[Stray] | None = None,
) -> dict[str, Any]:
    """The ``status --json`` document (schema 1): stable keys, ids as strings, times in ms.

    ``status`` holds the totals; ``shards`` the per-shard statuses they were added up from
    (default: ``status`` is the one shard); ``stray`` the streams of other layouts that hold
    entries (entries in a stray event stream are an alert: ``exceeded`` has ``stray``).
    """
    stray = stray or []
    alerts = exceeded(status, max_lag=max_lag, max_pending=max_pending)
    if any(one.kind == "events" for one in stray):
        alerts.append("stray")
    return {
        "schema": SCHEMA_VERSION,
        "now": _iso(status.now_ms),
        "redis": redis,
        "stream": {
            "key": status.events_key,
            "length": status.length,
            "first_id": status.first_id,
            "last_id": status.last_id,
        },
        "group": _group_json(status),
        "backlog": {
            "scanned": status.backlog_scanned,
            "capped": status.backlog_capped,
            "missing": status.backlog_missing,
            "executions": _backlog_rows(status),
        },
        "dead": _dead_json(status),
        "shards": [_shard_json(one) for one in (shards if shards is not None else [status])],
        "stray": [{"key": one.key, "kind": one.kind, "length": one.length} for one in stray],
        "thresholds": {"max_lag": max_lag, "max_pending": max_pending, "exceeded": alerts},
    }
