"""The event stream as a consumer group: read, acknowledge, reclaim, trim. Knows nothing of HTTP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as redis_asyncio
from redis.exceptions import ResponseError

from metricrelay.keys import Keys, ShardKeys
from metricrelay.replies import as_text, id_key

__all__ = ["Entry", "EventStream", "GroupInfo", "read_group_info"]

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: its __init__ runs once per entry read, frozen costs 2x
class Entry:
    """One stream entry: its id, its ``resource`` bytes (None if the field is missing)."""

    id: str
    resource: bytes | None
    size: int  # bytes it takes in the worker's memory budget

    @property
    def ms(self) -> int:
        """The id's milliseconds (Redis gives only well-formed ids: no check, see id_key)."""
        return int(self.id.partition("-")[0])


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The consumer group as XINFO GROUPS tells it."""

    pending: int  # delivered, not yet acknowledged
    lag: int | None  # not yet delivered; None where Redis cannot tell (before 7.0, after XDEL)
    last_delivered: str = "0-0"  # the newest id given to a consumer (for one stream)


async def read_group_info(redis: Any, keys: Keys | ShardKeys) -> GroupInfo | None:
    """The consumer group on ``keys.events`` as XINFO GROUPS tells it (one O(groups) call);
    None if the stream or the group is missing."""
    try:
        groups = await redis.xinfo_groups(keys.events)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    for group in groups:
        if as_text(group["name"]) == keys.group:
            lag = group.get("lag")
            return GroupInfo(
                int(group["pending"]),
                None if lag is None else int(lag),
                as_text(group["last-delivered-id"]),
            )
    return None


def _raw_entries(rows: Sequence[Any], deleted: list[str]) -> list[Entry]:
    """Entries from XREADGROUP's unconverted reply: ``[id, [field, value, ...] | None]`` rows;
    the ids of entries deleted while pending are added to ``deleted``."""
    out = []
    for entry_id, fields in rows:
        if fields is None:  # deleted while pending (Redis < 7 reports such ids this way)
            deleted.append(as_text(entry_id))
            continue
        if isinstance(fields, dict):  # converted (the cluster client): see EventStream.__init__
            return _entries(rows, deleted)
        if len(fields) == 2 and fields[0] == b"resource":  # what producers write
            value = fields[1]
            out.append(Entry(entry_id.decode(), value, 8 + len(value)))
            continue
        resource = None
        size = 0
        for index in range(0, len(fields), 2):
            name, value = fields[index], fields[index + 1]
            size += len(name) + len(value)
            if name == b"resource":
                resource = value
        out.append(Entry(entry_id.decode(), resource, size))
    return out


def _entries(rows: Sequence[Any], deleted: list[str]) -> list[Entry]:
    out = []
    for entry_id, fields in rows:
        if fields is None:  # deleted while pending (Redis < 7 reports such ids this way)
            deleted.append(as_text(entry_id))
            continue
        resource = fields.get(b"resource")
        size = sum(len(k) + len(v) for k, v in fields.items())
        out.append(Entry(entry_id.decode(), resource, size))
    return out


class EventStream:
    """One consumer of the group on one event stream (a shard)."""

    def __init__(self, redis: Any, keys: Keys | ShardKeys, consumer: str) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self._reclaim_cursor = "0-0"
        # Reads go through a second client on the same connection pool whose XREADGROUP replies
        # are left as hiredis parsed them: redis-py's per-entry conversion to tuples and dicts
        # was about a tenth of the worker's CPU per single-point entry (bench/worker.py).
        # A client of its own, so that nobody else sharing ``redis`` gets raw replies. A cluster
        # client has a pool per node and no such twin: it reads converted replies.
        pool = getattr(redis, "connection_pool", None)
        self._reader = redis
        if pool is not None:
            self._reader = redis_asyncio.Redis(connection_pool=pool)
            self._reader.set_response_callback("XREADGROUP", _unconverted)

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing, from the stream's first entry: what
        producers wrote before any worker ever ran is delivered too.

        Looks first (a read): a full Redis refuses XGROUP CREATE even when the group exists, and
        a worker must start then — it is what frees the memory."""
        if await read_group_info(self.redis, self.keys) is not None:
            return
        try:
            await self.redis.xgroup_create(self.keys.events, self.keys.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.keys.group, self.keys.events)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, block_ms: int | None, after: str = ">") -> list[Entry]:
        """New entries for this consumer; ``block_ms`` None returns at once. With ``after`` an
        id, this consumer's own pending entries after that id instead (its history)."""
        try:
            reply = await self._reader.xreadgroup(
                self.keys.group,
                self.consumer,
                {self.keys.events: after},
                count=count,
                block=block_ms if after == ">" else None,
            )
        except ResponseError as exc:
            # Redis Cluster moved the stream to another node while this read was blocked on it
            # (resharding): nothing was read; the next read goes where the slot lives now.
            if str(exc).startswith("UNBLOCKED"):
                return []
            raise
        if not reply:
            return []
        # RESP3 answers a map {stream: rows}, RESP2 a list [[stream, rows]]; one stream was read
        rows = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        deleted: list[str] = []
        entries = _raw_entries(rows, deleted)
        await self._forget(deleted)
        if not entries and deleted and after != ">":  # a page of deleted ones: read on
            return await self.read(count, block_ms, deleted[-1])
        return entries

    async def _forget(self, deleted: list[str]) -> None:
        """Acknowledge entries deleted while pending (XDEL, a producer's MAXLEN): nothing is
        left to deliver, and Redis 6.2 would keep them pending for ever, holding up a new
        owner that waits for the previous one's entries."""
        if deleted:
            log.warning("%d pending entries were deleted from %s: acknowledged", len(deleted),
                        self.keys.events)  # fmt: skip
            await self.ack(deleted)

    async def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        acked: int = await self.redis.xack(self.keys.events, self.keys.group, *ids)
        return acked

    async def touch(self, ids: Sequence[str], chunk: int = 5000) -> None:
        """Reset the idle time of entries this consumer still works on (a heartbeat), so no other
        worker reclaims them while they wait for a slot, a split or a retry. JUSTID: the
        delivery counter is not raised."""
        for start in range(0, len(ids), chunk):
            await self.redis.xclaim(
                self.keys.events,
                self.keys.group,
                self.consumer,
                0,
                list(ids[start : start + chunk]),
                justid=True,
            )

    async def claim_oldest(self, min_idle_ms: int, count: int) -> list[tuple[Entry, int]]:
        """Take over, in stream order, other consumers' oldest pending entries: those idle at
        least ``min_idle_ms`` up to the first that is not (a previous owner's entries, at a
        hand-over, must be finished in order; XAUTOCLAIM's cursor would skip one not yet idle
        enough for younger ones). This consumer's own entries are passed over, not claimed."""
        chosen = await self._idle_prefix(min_idle_ms, count)
        if not chosen:
            return []
        rows = await self.redis.xclaim(
            self.keys.events, self.keys.group, self.consumer, min_idle_ms, chosen
        )
        return await self._with_counts(rows)

    async def _idle_prefix(self, min_idle_ms: int, count: int) -> list[str]:
        """Up to ``count`` ids of other consumers' pending entries, oldest first, idle at least
        ``min_idle_ms``, ending before the first of theirs that is not."""
        chosen: list[str] = []
        start = "-"
        while True:
            rows = await self.redis.xpending_range(
                self.keys.events, self.keys.group, start, "+", count
            )
            for row in rows:
                if as_text(row["consumer"]) == self.consumer:
                    continue
                if int(row["time_since_delivered"]) < min_idle_ms or len(chosen) == count:
                    return chosen
                chosen.append(as_text(row["message_id"]))
            if len(rows) < count or len(chosen) == count:  # the end of the list, or enough
                return chosen
            start = "(" + as_text(rows[-1]["message_id"])

    async def _with_counts(self, rows: Sequence[Any]) -> list[tuple[Entry, int]]:
        """Claimed rows as entries, each with how many times it has now been delivered (poison
        detection); the ids of entries deleted meanwhile are acknowledged."""
        deleted: list[str] = []
        entries = _entries(rows, deleted)
        await self._forget(deleted)
        if not entries:
            return []
        counts = await self.delivery_counts([entry.id for entry in entries])
        return [(entry, counts.get(entry.id, 1)) for entry in entries]

    async def reclaim(self, min_idle_ms: int, count: int) -> list[tuple[Entry, int]]:
        """Take over entries other consumers left pending longer than ``min_idle_ms``.

        Returns each entry with how many times it has now been delivered (poison detection).
        """
        reply = await self.redis.xautoclaim(
            self.keys.events,
            self.keys.group,
            self.consumer,
            min_idle_time=min_idle_ms,
            start_id=self._reclaim_cursor,
            count=count,
        )
        cursor, rows = reply[0], reply[1]
        self._reclaim_cursor = as_text(cursor)
        return await self._with_counts(rows)

    async def delivery_counts(self, ids: Sequence[str]) -> dict[str, int]:
        """How many times each id was delivered, exactly: one XPENDING per id (a range query
        with a count is cut short by other pending entries inside the range)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.keys.events, self.keys.group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                counts[as_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def let_go(self, deliveries: dict[str, int]) -> int:
        """Entries this consumer stops working on without a fault of theirs (a lost lease, the
        drain deadline, refused credentials): set their delivery counts back to what they were
        before it got them, so that moving work between workers never makes an entry poison.
        Entries another consumer has claimed meanwhile are left alone; idle times are kept, so
        the next owner's wait is not prolonged. Returns how many were set back."""
        args: list[str | int] = [self.keys.group, self.consumer]
        for entry_id, count in deliveries.items():
            args += [entry_id, max(0, count - 1)]
        if len(args) == 2:
            return 0
        return int(await self.redis.eval(_LET_GO, 1, self.keys.events, *args))

    async def prune_consumers(self, min_idle_ms: int) -> list[str]:
        """Forget consumers (crashed or stopped replicas) with nothing pending, idle that long;
        each restart adds a name (host + pid), and the group should not grow forever."""
        gone = []
        for consumer in await self.redis.xinfo_consumers(self.keys.events, self.keys.group):
            name = as_text(consumer["name"])
            if name != self.consumer and not consumer["pending"] and consumer["idle"] > min_idle_ms:
                await self.redis.xgroup_delconsumer(self.keys.events, self.keys.group, name)
                gone.append(name)
        return gone

    async def group_info(self) -> GroupInfo | None:
        """Lag and pending count of this group; None if it is missing."""
        return await read_group_info(self.redis, self.keys)

    async def pending_count(self) -> int:
        summary = await self.redis.xpending(self.keys.events, self.keys.group)
        return int(summary["pending"])

    async def pending_by_owner(self) -> tuple[int, int]:
        """Entries pending under this consumer, and under every other one."""
        summary = await self.redis.xpending(self.keys.events, self.keys.group)
        mine = others = 0
        for consumer in summary.get("consumers") or ():
            count = int(consumer["pending"])
            if as_text(consumer["name"]) == self.consumer:
                mine += count
            else:
                others += count
        return mine, others

    async def trim(self) -> int:
        """Delete acknowledged entries: everything older than the oldest entry any group still
        needs (its oldest pending one, or the first it has not been given yet)."""
        keep_from: str | None = None
        for group in await self.redis.xinfo_groups(self.keys.events):
            name = as_text(group["name"])
            needed = as_text(group["last-delivered-id"])
            if int(group["pending"]):
                summary = await self.redis.xpending(self.keys.events, name)
                # acknowledged in between: nothing pending any more, no oldest one to keep
                if summary["min"] is not None:
                    needed = min(needed, as_text(summary["min"]), key=id_key)
            keep_from = needed if keep_from is None else min(keep_from, needed, key=id_key)
        if keep_from is None or keep_from == "0-0":
            return 0
        trimmed: int = await self.redis.xtrim(self.keys.events, minid=keep_from, approximate=False)
        return trimmed


# KEYS: the stream. ARGV: group, consumer, then (id, delivery count) pairs.
_LET_GO: Final = """
local reset = 0
for i = 3, #ARGV, 2 do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
               'IDLE', row[3], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    reset = reset + 1
  end
end
return reset
"""


def _unconverted(response: Any, **options: Any) -> Any:
    return response
