"""The worker rides out a Redis restart: it keeps what it holds and goes on by itself."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.settings import worker_settings
from tests.support.waiting import until

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.service import open_shard_worker

pytestmark = pytest.mark.integration

KEYS = Keys()


async def write(url: str, start: int, count: int) -> None:
    client = redis_asyncio.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for step in range(start, start + count):
        metrics = [{"name": "loss", "value": 1.0, "step": step}]
        pipe.xadd(
            KEYS.events,
            {"resource": orjson.dumps({"executionId": "exec-outage", "metrics": metrics})},
        )
    await pipe.execute()
    await client.aclose()


async def test_worker_survives_a_redis_restart_and_loses_nothing(scripted_api: Any) -> None:
    with RedisServer(appendonly="always") as server:
        await write(server.url, 0, 300)
        settings = worker_settings(server.url, scripted_api.url, linger=0.02, block_ms=20)
        steps = lambda: {m["step"] for d in scripted_api.accepted for m in d["metrics"]}  # noqa: E731
        stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            worker = await open_shard_worker(settings, stack)
            task = asyncio.create_task(worker.run(stop))
            await until(lambda: len(steps()) == 300, timeout=60)
            server.restart()  # an outage: every connection of the worker breaks
            await write(server.url, 300, 300)
            await until(lambda: len(steps()) == 600, timeout=60)
            stop.set()
            await asyncio.wait_for(task, 30)
        client = redis_asyncio.Redis.from_url(server.url)
        assert (await client.xpending(KEYS.events, KEYS.group))["pending"] == 0
        await client.aclose()
    assert steps() == set(range(600))
