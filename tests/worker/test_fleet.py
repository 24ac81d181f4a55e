"""Shard ownership in one process: leases taken, shared, lost, handed back (fleet.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.settings import worker_settings
from tests.support.turns import ticks
from tests.support.waiting import until

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.concurrency import DeliverySlots
from metricrelay.relay.fleet import Fleet
from metricrelay.relay.service import open_worker

pytestmark = pytest.mark.integration

KEYS = Keys("metricrelay", 4)


def fragment(execution: str, step: int) -> bytes:
    return orjson.dumps(
        {"executionId": execution, "metrics": [{"name": "loss", "value": 1.0, "step": step}]}
    )


async def xadd_steps(client: redis_asyncio.Redis, executions: list[str], steps: range) -> None:
    pipe = client.pipeline(transaction=False)
    for step in steps:
        for execution in executions:
            pipe.xadd(
                KEYS.route("default", execution).events, {"resource": fragment(execution, step)}
            )
    await pipe.execute()


async def xadd_one_stream(client: redis_asyncio.Redis, execution: str, steps: range) -> None:
    """Steps of ``execution`` into the one stream of an unsharded layout (ONE)."""
    pipe = client.pipeline(transaction=False)
    for step in steps:
        pipe.xadd(ONE.events, {"resource": fragment(execution, step)})
    await pipe.execute()


@contextlib.asynccontextmanager
async def running_fleet(
    redis_server: RedisServer, api_url: str, name: str, **overrides: Any
) -> AsyncIterator[Fleet]:
    settings = worker_settings(
        redis_server.url, api_url, shards=4, lease_ttl=1.0, consumer_name=name, **overrides
    )
    async with AsyncExitStack() as stack:
        fleet = await open_worker(settings, stack)
        assert isinstance(fleet, Fleet)
        stop = asyncio.Event()
        task = asyncio.create_task(fleet.run(stop))
        try:
            yield fleet
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def steps_by_execution(api: Any) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for document in api.accepted:
        seen.setdefault(document["executionId"], []).extend(
            m["step"] for m in document.get("metrics", [])
        )
    return seen


async def test_two_fleets_share_the_shards_and_hand_them_back_on_stop(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    executions = [f"exec-{n:03d}" for n in range(12)]

    async def owners() -> dict[str, bytes | None]:
        return {s.name: await redis_client.get(s.lease) for s in KEYS.all_shards()}

    async with running_fleet(redis_server, scripted_api.url, "fleet-a") as a:
        await until(lambda: _owned_by(owners, {b"fleet-a": 4}))
        async with running_fleet(redis_server, scripted_api.url, "fleet-b") as b:
            # b joins: a hands two shards back (after draining them), b takes them
            await until(lambda: _owned_by(owners, {b"fleet-a": 2, b"fleet-b": 2}))
            # two workers deliver to the one API: each paces its probes as half of one
            await until(lambda: _sharing(2, a, b))
            await xadd_steps(redis_client, executions, range(50))
            await until(lambda: _delivered(scripted_api, 600))
            # the API holds the points before the worker acknowledges them: wait for the acks;
            # each fleet's two shards hold six of the twelve executions
            await until(lambda: _acked(a, b, want=(300, 300)))
            b_workers = [weakref.ref(owned.worker) for owned in b.owned.values()]
        # b stopped: it released its shards, and a takes them back
        assert b.stats["entries_acked"] == 300  # its finished shard workers still count
        assert not b.owned
        gc.collect()
        assert [ref() for ref in b_workers] == [None, None]  # not kept once finished
        await until(lambda: _owned_by(owners, {b"fleet-a": 4}))
        await until(lambda: _sharing(1, a))
        await xadd_steps(redis_client, executions, range(50, 60))
        await until(lambda: _delivered(scripted_api, 720))
    assert await owners() == dict.fromkeys(owners_names(), None)  # all released on stop
    for execution, steps in steps_by_execution(scripted_api).items():
        assert steps == sorted(steps), f"{execution} out of order"
        assert sorted(steps) == list(range(60))
    assert not await redis_client.zrange(KEYS.workers, 0, -1)  # both left the registry


def sharers(fleet: Fleet) -> int:
    """How many delivering workers the fleet's delivery slots were last told of."""
    slots = getattr(fleet.on_workers, "__self__", None)
    assert isinstance(slots, DeliverySlots) and slots.aimd is not None
    return slots.aimd.sharers


async def _sharing(count: int, *fleets: Fleet) -> bool:
    return all(sharers(fleet) == count for fleet in fleets)


async def _acked(*fleets: Fleet, want: tuple[int, ...]) -> bool:
    return tuple(f.stats.get("entries_acked", 0) for f in fleets) == want


def owners_names() -> list[str]:
    return [s.name for s in KEYS.all_shards()]


async def _owned_by(
    owners: Callable[[], Awaitable[dict[str, bytes | None]]], want: dict[bytes, int]
) -> bool:
    counts: dict[bytes, int] = {}
    for owner in (await owners()).values():
        if owner is None:
            return False
        counts[owner] = counts.get(owner, 0) + 1
    return counts == want


async def _delivered(api: Any, points: int) -> bool:
    return sum(len(d.get("metrics", [])) for d in api.accepted) >= points


async def test_a_lost_lease_stops_work_on_that_shard_at_once(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    shard = KEYS.shard(0)
    async with running_fleet(redis_server, scripted_api.url, "fleet-a") as fleet:
        await until(lambda: _has(fleet, shard.events, True))
        await redis_client.set(shard.lease, "intruder", px=60_000)  # another worker has it now
        await until(lambda: _has(fleet, shard.events, False), timeout=5)
        execution = next(
            f"exec-{n}" for n in range(100) if KEYS.route("default", f"exec-{n}") == shard
        )
        await xadd_steps(redis_client, [execution], range(5))
        await ticks(fleet, 4)  # the fleet must not take the shard back, tick after tick
        assert shard.events not in fleet.owned
        assert await redis_client.get(shard.lease) == b"intruder"
    assert not scripted_api.accepted  # nothing of the shard was delivered by the old owner
    assert await redis_client.get(shard.lease) == b"intruder"  # and its lease was not deleted


async def _has(fleet: Fleet, events: str, wanted: bool) -> bool:
    return (events in fleet.owned) == wanted


@pytest.mark.parametrize("previous", ["crashed", "fleet-a"])
async def test_a_new_owner_finishes_what_the_last_one_left_before_reading_on(
    redis_server: RedisServer,
    redis_client: redis_asyncio.Redis,
    scripted_api: Any,
    previous: str,
) -> None:
    """A crashed owner's pending entries come first, then the newer ones: order kept. Also when
    the previous owner had the same consumer name (a container restarted in its pod)."""
    shard = KEYS.shard(1)
    execution = next(f"exec-{n}" for n in range(100) if KEYS.route("default", f"exec-{n}") == shard)
    await redis_client.xgroup_create(shard.events, shard.group, id="0", mkstream=True)
    await xadd_steps(redis_client, [execution], range(10))
    # a worker read them and died: they are pending for a consumer that is gone
    await redis_client.xreadgroup(shard.group, previous, {shard.events: ">"}, count=100)
    await xadd_steps(redis_client, [execution], range(10, 20))
    # the reclaim time is linger + retry budget + 2 request timeouts + 5 s: about 6 s here
    async with running_fleet(
        redis_server, scripted_api.url, "fleet-a", retry_budget=0.2, request_timeout=0.2
    ):
        await until(lambda: _delivered(scripted_api, 20), timeout=30)
    assert steps_by_execution(scripted_api)[execution] == list(range(20))
    summary = await redis_client.xpending(shard.events, shard.group)
    assert summary["pending"] == 0


async def test_only_shards_limits_what_a_fleet_takes(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    async with running_fleet(redis_server, scripted_api.url, "pool-a", only_shards="1,3") as a:
        await until(lambda: _has(a, KEYS.shard(3).events, True))
        await ticks(a, 2)  # a few more turns: nothing else is taken
        assert sorted(a.owned) == [KEYS.shard(1).events, KEYS.shard(3).events]
        assert a.metrics is not None
        assert a.metrics.registry.get_sample_value("metricrelay_shards_owned") == 2
        assert await redis_client.get(KEYS.shard(0).lease) is None


async def test_pools_of_workers_share_only_their_own_shards(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    """A pool of one worker for shards 0-2 and a pool of three for shard 3: the lone worker
    takes all three of its shards, as its share counts only the workers of its own pool."""
    pools = (("p1", "0-2"), ("p2-a", "3"), ("p2-b", "3"), ("p2-c", "3"))
    async with contextlib.AsyncExitStack() as stack:
        fleets = [
            await stack.enter_async_context(
                running_fleet(redis_server, scripted_api.url, name, only_shards=spec)
            )
            for name, spec in pools
        ]

        async def balanced() -> bool:
            owned = [fleet.shards_owned for fleet in fleets]
            return owned[0] == 3 and sum(owned[1:]) == 1

        await until(balanced)
    assert not await redis_client.keys("metricrelay:workers*")


async def test_a_fleet_rides_out_a_redis_restart_longer_than_its_leases(
    scripted_api: Any,
) -> None:
    """Redis away for longer than the lease TTL: the fleet stops working on its shards (its
    leases may be another's by then), takes them again once Redis is back, and loses nothing."""
    executions = [f"exec-{n:03d}" for n in range(8)]
    with RedisServer(appendonly="always") as server:
        client = redis_asyncio.Redis.from_url(server.url)
        try:
            await xadd_steps(client, executions, range(20))
            async with running_fleet(server, scripted_api.url, "fleet-r") as fleet:
                await until(lambda: _delivered(scripted_api, 160))
                await asyncio.to_thread(server.stop)
                # it gives up its shards while it cannot renew (the lease TTL is 1 s)
                await until(lambda: _shards_owned(fleet, 0), timeout=10)
                await asyncio.to_thread(server.restart)
                await client.aclose()  # its connection died with the server
                client = redis_asyncio.Redis.from_url(server.url)
                await xadd_steps(client, executions, range(20, 40))
                await until(lambda: _delivered(scripted_api, 320), timeout=30)
                await until(lambda: _shards_owned(fleet, 4))
        finally:
            await client.aclose()
    for execution, steps in steps_by_execution(scripted_api).items():
        assert steps == list(range(40)), f"{execution}: {steps}"


async def _shards_owned(fleet: Fleet, count: int) -> bool:
    return fleet.shards_owned == count


async def test_an_entry_in_the_wrong_shard_is_delivered_and_counted(
    redis_server: RedisServer,
    redis_client: redis_asyncio.Redis,
    scripted_api: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    home = KEYS.route("default", "exec-stray")
    wrong = KEYS.shard((home.index + 1) % 4)
    await redis_client.xadd(wrong.events, {"resource": fragment("exec-stray", 1)})
    await redis_client.xadd(home.events, {"resource": fragment("exec-stray", 2)})
    async with running_fleet(redis_server, scripted_api.url, "fleet-m") as fleet:
        await until(lambda: _delivered(scripted_api, 2))
        assert fleet.stats.get("entries_misrouted") == 1
        assert fleet.metrics is not None
        registry = fleet.metrics.registry
        assert registry.get_sample_value("metricrelay_events_misrouted_total") == 1
    assert any("does not follow the routing rule" in r.getMessage() for r in caplog.records)


ONE = Keys()  # the default layout: one stream


async def test_one_stream_has_one_owner_and_the_others_stand_by(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    """Issue 14: three replicas on the default configuration deliver an execution's bodies in
    stream order, because only the lease holder reads the one stream."""
    scripted_api.delay = 0.002
    executions = [f"exec-{i:04d}" for i in range(6)]
    pipe = redis_client.pipeline(transaction=False)
    for step in range(200):
        for execution in executions:
            pipe.xadd(ONE.events, {"resource": fragment(execution, step)})
    await pipe.execute()
    async with AsyncExitStack() as stack:
        fleets, tasks, stop = [], [], asyncio.Event()
        for n in range(3):
            settings = worker_settings(
                redis_server.url, scripted_api.url, lease_ttl=1.0, consumer_name=f"replica-{n}"
            )
            fleet = await open_worker(settings, stack)
            fleets.append(fleet)
            tasks.append(asyncio.create_task(fleet.run(stop)))

        async def delivered() -> bool:
            return sum(len(d["metrics"]) for d in scripted_api.accepted) >= 1200

        await until(delivered, timeout=60)
        assert sorted(f.shards_owned for f in fleets) == [0, 0, 1]
        assert [sharers(f) for f in fleets] == [1, 1, 1]  # one stream: one delivers
        owner = await redis_client.get(ONE.shard(0).lease)
        assert owner is not None and owner.decode().startswith("replica-")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for execution, steps in steps_by_execution(scripted_api).items():
        assert steps == sorted(steps), f"{execution} out of order"
        assert len(steps) == 200


async def test_a_shard_worker_that_crashes_is_started_again(
    redis_server: RedisServer,
    redis_client: redis_asyncio.Redis,
    scripted_api: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from metricrelay.relay.stream import EventStream  # noqa: PLC0415

    real_trim = EventStream.trim
    crashes = []

    async def trim_once_broken(self: EventStream) -> int:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("a bug in trimming")
        return await real_trim(self)

    monkeypatch.setattr(EventStream, "trim", trim_once_broken)
    await xadd_one_stream(redis_client, "exec-0001", range(50))
    settings = worker_settings(redis_server.url, scripted_api.url, lease_ttl=1.0)
    async with AsyncExitStack() as stack:
        fleet = await open_worker(settings, stack)
        await asyncio.wait_for(fleet.run(asyncio.Event(), burst=True), 90)
    assert crashes and fleet.stats["crashes"] == 1
    assert sorted(steps_by_execution(scripted_api)["exec-0001"]) == list(range(50))
    assert fleet.held_bytes == 0


async def test_a_burst_fleet_ends_with_its_last_shard_not_a_tick_later(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    """The fleet's loop turns as soon as a shard worker ends, not at its next tick (a quarter of
    the lease TTL): the lease is released and a burst run ends with its work. The tick here is
    150 s; the run is given 60."""
    await xadd_one_stream(redis_client, "exec-0001", range(50))
    settings = worker_settings(redis_server.url, scripted_api.url, lease_ttl=600.0)
    async with AsyncExitStack() as stack:
        fleet = await open_worker(settings, stack)
        assert isinstance(fleet, Fleet) and fleet.tick == 150.0
        await asyncio.wait_for(fleet.run(asyncio.Event(), burst=True), 60)
    assert steps_by_execution(scripted_api)["exec-0001"] == list(range(50))
    assert not fleet.owned and fleet.held_bytes == 0
