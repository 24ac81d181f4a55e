"""The worker in process against a real redis-server and a scripted HTTP peer."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.settings import worker_settings

from metricrelay.deadletter import Reason, read_dead_letters
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.entries import MemoryBudget
from metricrelay.relay.service import open_shard_worker
from metricrelay.relay.worker import Worker
from metricrelay.settings import Settings

pytestmark = pytest.mark.integration

KEYS = Keys()
LIMITS = {"metrics": 1000, "tags": 100, "customInfo": 100}


async def run_burst(settings: Settings, timeout: float = 60.0, **config: Any) -> Worker:
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        worker.config = dataclasses.replace(worker.config, **config)
        await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), timeout)
        return worker


def limit_checking(api: Any) -> None:
    def answer(
        document: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        for section, limit in LIMITS.items():
            assert len(document.get(section, [])) <= limit, f"{section} over the limit"
        return (204, {}, b"")

    api.answer = answer


async def xadd_all(client: redis_asyncio.Redis, documents: list[Any]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for document in documents:
        raw = document if isinstance(document, bytes) else orjson.dumps(document)
        pipe.xadd(KEYS.events, {"resource": raw})
    return [i.decode() for i in await pipe.execute()]


def point(execution: int, step: int) -> dict[str, Any]:
    return {
        "name": "loss",
        "value": step / 10,
        "step": step,
        "labels": [{"name": "rank", "value": "0"}],
    }


async def test_every_point_arrives_in_order_and_the_stream_is_acknowledged(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    limit_checking(scripted_api)
    rng = random.Random(3)
    documents, written = [], {}
    for execution in range(50):
        step = 0
        for _ in range(rng.randrange(5, 40)):
            size = rng.choice([1, 2, 5, 50]) if rng.random() > 0.05 else 1500
            metrics = [point(execution, step + i) for i in range(size)]
            step += size
            documents.append({"executionId": f"exec-{execution:03d}", "metrics": metrics})
        written[f"exec-{execution:03d}"] = step
    await xadd_all(redis_client, documents)
    worker = await run_burst(worker_settings(redis_server.url, scripted_api.url, concurrency=8))
    received: dict[str, list[int]] = {}
    for document in scripted_api.accepted:
        received.setdefault(document["executionId"], []).extend(
            m["step"] for m in document["metrics"]
        )
    assert {e: len(steps) for e, steps in received.items()} == written
    for steps in received.values():
        assert steps == sorted(steps)  # one request in flight per execution: stream order kept
    assert await redis_client.xpending(KEYS.events, KEYS.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    assert worker.stats["entries_acked"] == len(documents)
    assert await redis_client.xlen(KEYS.dead) == 0


async def test_bad_entries_are_dead_lettered_with_their_reason_and_the_rest_flows(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    good = {"executionId": "exec-good", "metrics": [point(0, 1)]}
    too_many_labels = point(0, 2) | {"labels": [{"name": f"l{i}", "value": "v"} for i in range(21)]}
    bad = [
        b"not json",
        b'["wrong", "shape"]',
        b'{"executionId":"exec-1","metrics":[{"name":"loss","value":NaN}]}',
        {"executionId": "exec-1", "metrics": [too_many_labels]},
        {"executionId": "exec-1", "metrics": [{"name": "x" * 257, "value": 1}]},
        {"executionId": "exec-1", "customInfo": [{"name": "big", "value": "x" * 5_000_001}]},
    ]
    ids = await xadd_all(redis_client, [good, *bad, good])
    no_field = await redis_client.xadd(KEYS.events, {"other": b"x"})
    await run_burst(worker_settings(redis_server.url, scripted_api.url))
    letters = await read_dead_letters(redis_client, KEYS)
    assert [letter.source_ids for _, letter in letters] == [[i] for i in ids[1:-1]] + [
        [no_field.decode()]
    ]
    assert all(letter.reason is Reason.INVALID for _, letter in letters)
    errors = [letter.error for _, letter in letters]
    assert "invalid JSON" in errors[0]
    assert "input should be an object" in errors[1]
    assert "metrics[0].value: must be a finite number" in errors[2]
    assert "metrics[0].labels: list should have at most 20 items" in errors[3]
    assert "metrics[0].name: string should have at most 256 characters" in errors[4]
    assert "all customInfo of one resource may take at most 5000000" in errors[5]
    assert "no 'resource' field" in errors[6]
    assert letters[0][1].resource == b"not json"
    assert len(scripted_api.accepted) >= 1
    assert sum(len(d["metrics"]) for d in scripted_api.accepted) == 2
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0


async def test_one_rejected_metric_of_a_thousand_is_dead_lettered_alone(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    scripted_api.answer = lambda doc, headers: (
        (400, {}, b'{"error":{"code":"x","message":"poison"}}')
        if any(m["name"] == "poison" for m in doc.get("metrics", []))
        else (204, {}, b"")
    )
    metrics = [point(0, i) for i in range(1000)]
    metrics[437] = {"name": "poison", "value": 1.0, "step": 437}
    [entry_id] = await xadd_all(redis_client, [{"executionId": "exec-1", "metrics": metrics}])
    await run_burst(worker_settings(redis_server.url, scripted_api.url))
    [(_, letter)] = await read_dead_letters(redis_client, KEYS)
    assert letter.reason is Reason.REJECTED
    assert letter.status == 400
    assert "poison" in letter.error
    assert letter.source_ids == [entry_id]
    assert [m["step"] for m in orjson.loads(letter.resource)["metrics"]] == [437]
    sent = [m["step"] for d in scripted_api.accepted for m in d["metrics"]]
    assert sorted(sent) == [i for i in range(1000) if i != 437]


async def test_entries_delivered_too_often_become_poison(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    await redis_client.xgroup_create(KEYS.events, KEYS.group, id="0", mkstream=True)
    [entry_id] = await xadd_all(redis_client, [{"executionId": "exec-1", "metrics": [point(0, 1)]}])
    await redis_client.xreadgroup(KEYS.group, "crashed-worker", {KEYS.events: ">"})
    await redis_client.execute_command(
        "XCLAIM", KEYS.events, KEYS.group, "crashed-worker", 0, entry_id, "RETRYCOUNT", 5
    )
    # the entry was last delivered moments ago: reclaim at once instead of after a batch's life
    worker = await run_burst(worker_settings(redis_server.url, scripted_api.url), reclaim_idle_ms=0)
    [(_, letter)] = await read_dead_letters(redis_client, KEYS)
    assert letter.reason is Reason.POISON
    assert letter.attempts == 6
    assert letter.source_ids == [entry_id]
    assert scripted_api.accepted == []
    assert worker.stats["dead_letters_poison"] == 1


async def test_memory_is_bounded_the_stream_is_the_buffer(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    scripted_api.delay = 0.002  # a slow API: the backlog must stay in Redis, not in the worker
    documents = [
        {"executionId": f"exec-{n % 20:03d}", "metrics": [point(0, n)]} for n in range(3000)
    ]
    await xadd_all(redis_client, documents)
    entry_size = max(len(orjson.dumps(d)) for d in documents) + len(b"resource")
    budget, read_count = 20_000, 50
    peak = 0
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(worker_settings(redis_server.url, scripted_api.url), stack)
        assert isinstance(worker, Worker)
        worker.config = dataclasses.replace(
            worker.config, memory_budget_bytes=budget, read_count=read_count
        )
        worker.book.budget = MemoryBudget(budget)
        ingest = worker.ingest

        async def watched(entries: Any) -> None:
            nonlocal peak
            await ingest(entries)
            peak = max(peak, worker.held_bytes)

        worker.ingest = watched  # type: ignore[method-assign]
        await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 120)
    assert peak <= budget + read_count * entry_size
    assert worker.held_bytes == 0
    assert sum(len(d["metrics"]) for d in scripted_api.accepted) == 3000
