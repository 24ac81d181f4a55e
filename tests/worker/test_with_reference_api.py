"""The worker against a real redis-server and the reference AI API over HTTP (issue 4's proof)."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.settings import worker_settings

from metricrelay.api import ApiConfig, FaultConfig
from metricrelay.api.server import RunningServer, start_server
from metricrelay.deadletter import Reason, read_dead_letters
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.service import open_shard_worker
from metricrelay.relay.worker import Worker

pytestmark = pytest.mark.integration  # a real redis-server and the reference server

KEYS = Keys()
TOKEN = "reference-static-token"


async def reference_api(**faults: Any) -> RunningServer:
    config = ApiConfig(port=0, static_token=TOKEN, faults=FaultConfig(seed=11, **faults))
    return await start_server(config)


async def run_worker_burst(
    redis_server: RedisServer, api: RunningServer, **overrides: Any
) -> Worker:
    settings = worker_settings(
        redis_server.url,
        api.base_url,
        token=TOKEN,
        retry_after_cap=0.05,  # the server asks for 1 s; keep the test quick
        retry_budget=30.0,
        request_timeout=10.0,
        **overrides,
    )
    async with AsyncExitStack() as stack:
        worker = await open_shard_worker(settings, stack)
        await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 240)
        return worker


async def stats(api: RunningServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{api.url}/_stats") as reply:
        result: dict[str, Any] = await reply.json()
        return result


async def stored_steps(api: RunningServer, executions: list[str]) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "AI-Resource-Group": "default"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, len(executions), 10):
            ids = ",".join(executions[start : start + 10])
            params = {"executionIds": ids, "$select": "metrics"}
            async with session.get(f"{api.base_url}/lm/metrics", params=params) as reply:
                assert reply.status == 200, await reply.text()
                for resource in (await reply.json())["resources"]:
                    steps[resource["executionId"]] = [m["step"] for m in resource["metrics"]]
    return steps


async def write_run(
    client: redis_asyncio.Redis, executions: int, points: int, seed: int
) -> dict[str, int]:
    """``points`` in all over ``executions``, as many small and some large plain-XADD entries."""
    rng = random.Random(seed)
    per_execution = points // executions
    written: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    for e in range(executions):
        execution, step = f"exec-{e:03d}", 0
        while step < per_execution:
            size = min(
                per_execution - step, 1200 if rng.random() < 0.05 else rng.choice([1, 3, 10, 40])
            )
            metrics = [
                {
                    "name": "loss",
                    "value": 1.0 / (s + 1),
                    "step": s,
                    "labels": [{"name": "rank", "value": str(s % 4)}],
                }
                for s in range(step, step + size)
            ]
            pipe.xadd(
                KEYS.events,
                {"resource": orjson.dumps({"executionId": execution, "metrics": metrics})},
            )
            step += size
        written[execution] = step
    await pipe.execute()
    return written


@pytest.fixture
async def clean_redis(redis_client: redis_asyncio.Redis) -> AsyncIterator[redis_asyncio.Redis]:
    yield redis_client


async def test_100k_points_from_50_executions_all_arrive_within_every_limit(
    redis_server: RedisServer, clean_redis: redis_asyncio.Redis
) -> None:
    written = await write_run(clean_redis, executions=50, points=100_000, seed=5)
    api = await reference_api()
    try:
        worker = await run_worker_burst(redis_server, api)
        counters = await stats(api)
        steps = await stored_steps(api, sorted(written))
    finally:
        await api.close()
    assert sum(written.values()) == 100_000
    assert {e: len(s) for e, s in steps.items()} == written
    for execution, stored in steps.items():
        assert sorted(stored) == list(range(written[execution])), execution
    assert "413" not in counters["responses"] and "400" not in counters["responses"]
    assert counters["storage"]["points_stored"] == 100_000
    assert (await clean_redis.xpending(KEYS.events, KEYS.group))["pending"] == 0
    assert await clean_redis.xlen(KEYS.dead) == 0
    assert worker.stats["points_sent"] == 100_000


async def test_faults_503_429_resets_and_a_low_metric_limit_lose_nothing(
    redis_server: RedisServer, clean_redis: redis_asyncio.Redis
) -> None:
    written = await write_run(clean_redis, executions=10, points=20_000, seed=9)
    api = await reference_api(
        fail_rate=0.05,
        throttle_rate=0.05,
        reset_rate=0.03,
        reset_when="after",  # the answer is lost after storing: the worker repeats the body
        max_metrics_per_request=300,
    )
    try:
        worker = await run_worker_burst(redis_server, api)
        counters = await stats(api)
        steps = await stored_steps(api, sorted(written))
    finally:
        await api.close()
    assert {e: len(set(s)) for e, s in steps.items()} == written
    responses = counters["responses"]
    assert (
        responses.get("503", 0) > 0 and responses.get("429", 0) > 0 and responses.get("413", 0) > 0
    )
    assert worker.stats["splits"] > 0 and worker.stats["retries"] > 0
    assert await clean_redis.xlen(KEYS.dead) == 0  # nothing valid was dead-lettered
    assert (await clean_redis.xpending(KEYS.events, KEYS.group))["pending"] == 0
    duplicates = counters["storage"]["points_duplicate"]
    assert duplicates > 0  # resets after storing made the worker repeat bodies: at-least-once
    print(
        f"faults: responses {responses}, {worker.stats['retries']} retries, "
        f"{worker.stats['splits']} splits, {duplicates} repeated points deduplicated by the server"
    )


async def test_a_server_rejected_name_is_isolated_from_its_thousand(
    redis_server: RedisServer, clean_redis: redis_asyncio.Redis
) -> None:
    metrics = [{"name": "loss", "value": 1.0, "step": s} for s in range(1000)]
    metrics[321] = {"name": "forbidden_metric", "value": 1.0, "step": 321}
    await clean_redis.xadd(
        KEYS.events, {"resource": orjson.dumps({"executionId": "exec-1", "metrics": metrics})}
    )
    api = await reference_api(reject_names=re.compile("forbidden"))
    try:
        await run_worker_burst(redis_server, api)
        steps = await stored_steps(api, ["exec-1"])
    finally:
        await api.close()
    assert sorted(steps["exec-1"]) == [s for s in range(1000) if s != 321]
    [(_, letter)] = await read_dead_letters(clean_redis, KEYS)
    assert letter.reason is Reason.REJECTED and letter.status == 400
    assert orjson.loads(letter.error)["error"]["code"]  # the server's own error body
