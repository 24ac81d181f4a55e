"""Issue 14's seven failure modes, each against a real redis-server: every one failed before."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.scripted_api import ScriptedApi
from tests.support.settings import worker_settings
from tests.support.waiting import until

from metricrelay.deadletter import Reason, read_dead_letters
from metricrelay.devtools.embedded import RedisServer
from metricrelay.errors import AuthError
from metricrelay.keys import Keys
from metricrelay.progress import ack_with_progress
from metricrelay.relay.service import open_shard_worker
from metricrelay.relay.stream import EventStream

pytestmark = pytest.mark.integration

KEYS = Keys()


async def in_flight(worker: Any, deliveries: int) -> None:
    """Until the worker has that many deliveries under way (the API holds them)."""

    async def busy() -> bool:
        return bool(worker.in_flight == deliveries)

    await until(busy)


def point(execution: str, step: int, **extra: Any) -> bytes:
    metric = {"name": "loss", "value": 0.5, "step": step}
    return orjson.dumps({"executionId": execution, "metrics": [metric], **extra})


async def xadd(client: redis_asyncio.Redis, resources: list[bytes]) -> list[str]:
    return [(await client.xadd(KEYS.events, {"resource": r})).decode() for r in resources]


# 1 ------------------------------------------------------------------------------------------


async def test_1_a_lost_lease_gives_every_held_byte_back_to_the_budget(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    scripted_api.delay = 30.0  # deliveries hang in flight
    await xadd(redis_client, [point(f"exec-{i:04d}", 1) for i in range(8)])
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(worker_settings(redis_server.url, scripted_api.url), stack)
        run = asyncio.create_task(worker.run(asyncio.Event()))

        await in_flight(worker, 8)
        assert worker.held_bytes > 0
        await worker.abandon()  # the fleet lost the lease
        assert worker.held_bytes == 0 and worker.budget.room.is_set()
        assert len(worker.book) == 0
        # the run ends by the cancellation, or on its own if it saw the stop first
        with contextlib.suppress(asyncio.CancelledError):
            await run
        assert run.done()
    pending = await redis_client.xpending(KEYS.events, KEYS.group)
    assert pending["pending"] == 8  # left for the next owner


# 2 ------------------------------------------------------------------------------------------


async def test_2_trim_survives_the_last_pending_entry_being_acked_in_between(
    redis_client: redis_asyncio.Redis,
) -> None:
    stream = EventStream(redis_client, KEYS, "me")
    await stream.ensure_group()
    ids = await xadd(redis_client, [point("exec-0001", s) for s in range(3)])
    await stream.read(10, None)
    stale = await redis_client.xinfo_groups(KEYS.events)  # still says 3 pending
    await stream.ack(ids)
    real = redis_client.xinfo_groups

    async def stale_groups(name: str) -> Any:
        redis_client.xinfo_groups = real  # type: ignore[method-assign]
        return stale

    redis_client.xinfo_groups = stale_groups  # type: ignore[method-assign]
    assert await stream.trim() == 2  # all but the last delivered one (the MINID kept)


async def test_2_an_unexpected_error_stops_deliveries_and_lets_go_before_it_escapes(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    scripted_api.delay = 30.0
    await xadd(redis_client, [point(f"exec-{i:04d}", 1) for i in range(4)])
    settings = worker_settings(redis_server.url, scripted_api.url, trim_interval=0.05)
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        run = asyncio.create_task(worker.run(asyncio.Event()))

        await in_flight(worker, 4)

        async def broken(*args: Any, **kwargs: Any) -> int:
            raise RuntimeError("a bug in housekeeping")

        worker.stream.trim = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="a bug in housekeeping"):
            await asyncio.wait_for(run, 30)
        assert worker.in_flight == 0 and worker.held_bytes == 0 and len(worker.book) == 0
        assert worker.stats["crashes"] == 1
        assert scripted_api.accepted == []  # no orphan delivery goes on


# 3 ------------------------------------------------------------------------------------------


class RefusedOnce:
    """The token service refuses the first request, then issues tokens (credentials fixed)."""

    def __init__(self) -> None:
        self.asked = 0

    async def headers(self) -> dict[str, str]:
        self.asked += 1
        if self.asked == 1:
            raise AuthError("401 from the token service: invalid client")
        return {"Authorization": "Bearer fixed-token"}

    async def invalidate(self, rejected: dict[str, str]) -> None:
        return None


async def test_3_a_refused_token_sends_nothing_after_the_body_it_held_back(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    # each entry its own body (three long labels and a small byte budget), one execution
    labels = [{"name": f"l{n}", "value": "v" * 250} for n in range(3)]
    entries = [
        orjson.dumps(
            {"executionId": "exec-0001", "metrics": [{"name": "x", "value": 1, "labels": labels}]}
        )
        for _ in range(6)
    ]
    await xadd(redis_client, entries)
    settings = worker_settings(redis_server.url, scripted_api.url, max_body_bytes=1024)
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        worker.dispatcher.tokens = RefusedOnce()
        with pytest.raises(AuthError):
            await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 30)
        assert worker.held_bytes == 0
    assert scripted_api.requests == []  # step 0 waits for the credentials: so does step 1…
    pending = await redis_client.xpending(KEYS.events, KEYS.group)
    assert pending["pending"] == 6


# 5 ------------------------------------------------------------------------------------------


async def test_5_a_worker_started_while_redis_is_full_waits_reports_and_goes_on(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    stream = EventStream(redis_client, KEYS, "earlier-worker")
    await stream.ensure_group()  # a previous worker made the group
    bad = orjson.dumps({"executionId": "exec-0001", "metrics": [{"name": "x", "value": "NaN"}]})
    await xadd(redis_client, [point("exec-0001", s) for s in range(5)] + [bad])
    await redis_client.config_set("maxmemory-policy", "noeviction")
    await redis_client.config_set("maxmemory", 1)  # full: every deny-oom write is refused
    try:
        async with AsyncExitStack() as stack:
            worker = await open_shard_worker(
                worker_settings(redis_server.url, scripted_api.url), stack
            )
            run = asyncio.create_task(worker.run(asyncio.Event(), burst=True))

            async def reported() -> bool:
                return worker.redis_full_since is not None

            await until(reported)  # the dead letter (XADD) is refused: it waits and says so
            assert not run.done()
            assert worker.metrics is not None and worker.metrics.redis_is_full()  # /readyz
            await redis_client.config_set("maxmemory", 0)  # an operator frees memory
            await asyncio.wait_for(run, 60)
    finally:
        await redis_client.config_set("maxmemory", 0)
    assert worker.redis_full_since is None
    assert sum(len(d["metrics"]) for d in scripted_api.accepted) == 5
    [(_, letter)] = await read_dead_letters(redis_client, KEYS)
    assert letter.reason is Reason.INVALID
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0


# 6 ------------------------------------------------------------------------------------------


async def test_6_delivery_counts_are_exact_per_id(redis_client: redis_asyncio.Redis) -> None:
    me = EventStream(redis_client, KEYS, "me")
    await me.ensure_group()
    ids = await xadd(redis_client, [point("exec-0001", s) for s in range(10)])
    await me.read(10, None)
    # the first and the last belong to a dead consumer, the first delivered 11 times already
    dead = {ids[0]: 11, ids[9]: 2}
    for entry_id, count in dead.items():
        await redis_client.xclaim(
            KEYS.events, KEYS.group, "dead", 0, [entry_id], idle=600_000, retrycount=count
        )
    claimed = await me.reclaim(min_idle_ms=300_000, count=10)
    assert {e.id: n for e, n in claimed} == {ids[0]: 12, ids[9]: 3}


async def test_6_letting_go_does_not_count_as_a_delivery(
    redis_client: redis_asyncio.Redis,
) -> None:
    ids = await xadd(redis_client, [point("exec-0001", s) for s in range(3)])
    owners = [EventStream(redis_client, KEYS, f"owner-{n}") for n in range(8)]
    await owners[0].ensure_group()
    await owners[0].read(10, None)
    counts = dict.fromkeys(ids, 1)
    for previous, owner in itertools.pairwise(owners):  # seven hand-overs
        assert await previous.let_go(counts) == 3
        claimed = await owner.reclaim(min_idle_ms=0, count=10)
        counts = {e.id: n for e, n in claimed}
        assert counts == dict.fromkeys(ids, 1)  # never poison (max_deliveries 5)
    # a let-go never touches entries another consumer has claimed meanwhile
    assert await owners[0].let_go(dict.fromkeys(ids, 1)) == 0


# 7 ------------------------------------------------------------------------------------------


async def test_7_progress_is_counted_once_when_the_script_runs_twice(
    redis_client: redis_asyncio.Redis,
) -> None:
    stream = EventStream(redis_client, KEYS, "me")
    await stream.ensure_group()
    ids = await xadd(redis_client, [point("exec-0001", s) for s in range(2)])
    await stream.read(10, None)
    counts = {("default", "exec-0001"): {"points_accepted": 2}}
    assert await ack_with_progress(redis_client, KEYS, ids, counts) == 2
    assert await ack_with_progress(redis_client, KEYS, ids, counts) == 0  # its reply was lost
    progress = await redis_client.hgetall(KEYS.progress("default", "exec-0001"))
    assert progress == {b"points_accepted": b"2"}


# the fault harness's finding: a dead letter written twice ---------------------------------------


async def test_a_dead_letter_written_again_is_not_appended_twice(
    redis_client: redis_asyncio.Redis,
) -> None:
    from metricrelay.deadletter import DeadLetter, write_dead_letters  # noqa: PLC0415

    def invalid(path: str) -> DeadLetter:
        return DeadLetter(b'{"name":"x","value":"NaN"}', Reason.INVALID, f"{path}: bad", ["1-0"])

    letters = [invalid("metrics[0].value"), invalid("metrics[1].value")]  # same bytes, 2 items
    assert await write_dead_letters(redis_client, KEYS, letters) == 2
    # the reply was lost, or a new owner redoes the entry: the same letters again
    assert await write_dead_letters(redis_client, KEYS, [letters[1], letters[0]]) == 0
    poison = DeadLetter(b"{}", Reason.POISON, "delivered 6 times", ["2-0"], attempts=6)
    again = DeadLetter(b"{}", Reason.POISON, "delivered 7 times", ["2-0"], attempts=7)
    assert await write_dead_letters(redis_client, KEYS, [poison]) == 1
    assert await write_dead_letters(redis_client, KEYS, [again]) == 0
    assert len(await read_dead_letters(redis_client, KEYS)) == 3


async def test_entries_whose_read_reply_was_lost_are_taken_back_before_newer_ones(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: ScriptedApi
) -> None:
    """The fault harness's finding (seed 11): a read applied by Redis whose reply never came
    left an entry pending under the owner, unknown to it; it went on with newer entries and the
    lost one was delivered minutes later, its older tag last."""
    stream = EventStream(redis_client, KEYS, "me")
    await stream.ensure_group()
    tags = [{"name": "last", "value": "1"}], [{"name": "last", "value": "2"}]
    await xadd(redis_client, [point("exec-0001", 0, tags=tags[0])])
    await stream.read(10, None)  # applied by Redis; the worker never saw the reply
    await xadd(redis_client, [point("exec-0001", 1, tags=tags[1])])
    settings = worker_settings(redis_server.url, scripted_api.url, consumer_name="me")
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 30)
    sent = [(m["step"], d.get("tags")) for d in scripted_api.accepted for m in d["metrics"]]
    assert [step for step, _ in sent] == [0, 1]
    assert scripted_api.accepted[-1]["tags"] == tags[1]
    counts = await redis_client.xpending_range(KEYS.events, KEYS.group, "-", "+", 10)
    assert counts == []  # all acknowledged
