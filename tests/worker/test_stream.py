"""The consumer-group wrapper against a real redis-server: read, ack, reclaim, trim."""

from __future__ import annotations

import pytest
import redis.asyncio as redis_asyncio

from metricrelay.keys import Keys
from metricrelay.relay.stream import EventStream

pytestmark = pytest.mark.integration  # a real redis-server

KEYS = Keys()


async def add(client: redis_asyncio.Redis, count: int) -> list[str]:
    return [
        (await client.xadd(KEYS.events, {"resource": f'{{"n":{n}}}'.encode()})).decode()
        for n in range(count)
    ]


async def test_group_sees_what_was_written_before_it_existed(
    redis_client: redis_asyncio.Redis,
) -> None:
    ids = await add(redis_client, 3)
    stream = EventStream(redis_client, KEYS, "c1")
    await stream.ensure_group()
    await stream.ensure_group()  # idempotent
    entries = await stream.read(10, None)
    assert [e.id for e in entries] == ids
    assert entries[0].resource == b'{"n":0}'
    assert entries[0].ms == int(ids[0].split("-")[0])
    assert await stream.pending_count() == 3
    assert await stream.ack(ids[:2]) == 2
    assert await stream.pending_count() == 1


async def test_trim_never_removes_a_pending_or_undelivered_entry(
    redis_client: redis_asyncio.Redis,
) -> None:
    stream = EventStream(redis_client, KEYS, "c1")
    await stream.ensure_group()
    ids = await add(redis_client, 10)
    taken = await stream.read(6, None)  # ids[0:6] delivered, ids[6:] not yet
    await stream.ack([e.id for e in taken if e.id != ids[3]])  # ids[3] stays pending
    await stream.trim()
    left = [i.decode() for i, _ in await redis_client.xrange(KEYS.events)]
    assert ids[3] in left and all(i in left for i in ids[6:])
    assert ids[0] not in left  # acknowledged and older than anything needed: trimmed
    await stream.ack([ids[3]])
    rest = await stream.read(10, None)
    await stream.ack([e.id for e in rest])
    await stream.trim()
    assert await redis_client.xlen(KEYS.events) <= 1  # the last delivered one may stay


async def test_reclaim_takes_over_idle_entries_and_counts_deliveries(
    redis_client: redis_asyncio.Redis,
) -> None:
    dead = EventStream(redis_client, KEYS, "dead-consumer")
    await dead.ensure_group()
    ids = await add(redis_client, 4)
    await dead.read(10, None)
    alive = EventStream(redis_client, KEYS, "alive")
    assert await alive.reclaim(min_idle_ms=60_000, count=10) == []  # not idle long enough
    claimed = await alive.reclaim(min_idle_ms=0, count=10)
    assert [(e.id, n) for e, n in claimed] == [(i, 2) for i in ids]


async def test_idle_consumers_with_nothing_pending_are_forgotten(
    redis_client: redis_asyncio.Redis,
) -> None:
    old = EventStream(redis_client, KEYS, "old-replica")
    await old.ensure_group()
    busy = EventStream(redis_client, KEYS, "busy-replica")
    await add(redis_client, 1)
    await busy.read(10, None)  # keeps one entry pending
    await redis_client.xgroup_createconsumer(KEYS.events, KEYS.group, "old-replica")
    me = EventStream(redis_client, KEYS, "me")
    assert await me.prune_consumers(min_idle_ms=60_000) == []
    assert await me.prune_consumers(min_idle_ms=-1) == ["old-replica"]
    names = {
        c["name"].decode() for c in await redis_client.xinfo_consumers(KEYS.events, KEYS.group)
    }
    assert names == {"busy-replica"}


async def test_touch_keeps_entries_in_work_from_being_reclaimed(
    redis_client: redis_asyncio.Redis,
) -> None:
    me = EventStream(redis_client, KEYS, "me")
    await me.ensure_group()
    ids = await add(redis_client, 3)
    await me.read(10, None)
    # pretend they have waited 100 s (for a slot, a split, a retry)
    await redis_client.xclaim(KEYS.events, KEYS.group, "me", 0, ids, idle=100_000, justid=True)
    other = EventStream(redis_client, KEYS, "other")
    await me.touch(ids[:2], chunk=1)
    claimed = await other.reclaim(min_idle_ms=50_000, count=10)
    assert [e.id for e, _ in claimed] == [ids[2]]  # only the one not touched
    counts = await me.delivery_counts(ids)
    assert counts == {ids[0]: 1, ids[1]: 1, ids[2]: 2}  # touching is no delivery; a claim is
