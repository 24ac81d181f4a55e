"""The worker rides out a Redis restart: it keeps what it holds and goes on by itself."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from typing import Any

import orjson
import redis.asyncio as redis_asyncio

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.service import open_shard_worker
from metricrelay.settings import Settings

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


async def until(condition: Any, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_worker_survives_a_redis_restart_and_loses_nothing(scripted_api: Any) -> None:
    with RedisServer(appendonly="always") as server:
        await write(server.url, 0, 300)
        settings = Settings.from_sources(
            {
                "redis_url": server.url,
                "api_url": scripted_api.url.removesuffix("/lm/metrics"),
                "token": "t",
                "consumer_name": f"outage-{random.randrange(10**6)}",
                "linger": 0.02,
                "block_ms": 20,
            },
            env={},
        )
        steps = lambda: {m["step"] for d in scripted_api.accepted for m in d["metrics"]}  # noqa: E731
        stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            worker = await open_shard_worker(settings, stack)
            task = asyncio.create_task(worker.run(stop))
            await until(lambda: len(steps()) == 300)
            server.restart()  # an outage: every connection of the worker breaks
            await write(server.url, 300, 300)
            await until(lambda: len(steps()) == 600)
            stop.set()
            await asyncio.wait_for(task, 30)
        client = redis_asyncio.Redis.from_url(server.url)
        assert (await client.xpending(KEYS.events, KEYS.group))["pending"] == 0
        await client.aclose()
    assert steps() == set(range(600))
