"""A crawling API (5 s latency spikes) while producers write fast: the worker's memory stays
within its budget, the backlog waits in Redis, and it drains once the API recovers (scenario 6)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from tests.support.settings import worker_settings
from tests.support.waiting import until

from metricrelay.devtools.demo_stack import DEMO_TOKEN
from metricrelay.devtools.embedded import free_port
from metricrelay.keys import Keys
from metricrelay.relay.service import open_shard_worker

pytestmark = pytest.mark.integration  # a real redis-server and the reference API

KEYS = Keys()
BUDGET = 256 * 1024


async def test_slow_api_backlog_stays_in_redis_and_drains(stack: Any) -> None:
    port = free_port()
    stack.api_args = ("--port", str(port), "--latency-ms", "5000")
    stack.start_api()
    settings = worker_settings(
        stack.redis.url,
        f"{stack.api_url}/v2",
        token=DEMO_TOKEN,
        read_count=100,
        concurrency=4,
        max_body_bytes=64 * 1024,
        memory_budget_bytes=BUDGET,
        request_timeout=30,
        retry_budget=300,  # the API restarts mid-run: no body may run out of retries
    )
    executions = [f"bp-{i}" for i in range(8)]
    written: set[Any] = set()
    peak, lag_seen = 0, 0
    stop = asyncio.Event()
    async with AsyncExitStack() as resources:
        worker = await open_shard_worker(settings, resources)
        task = asyncio.create_task(worker.run(stop))
        for execution in executions:  # fast producers: 16k single-point entries
            written |= stack.xadd_points(execution, range(2000), per_entry=1)
        client = stack.client()

        async def backlog_built() -> bool:
            nonlocal peak, lag_seen
            peak = max(peak, worker.held_bytes)
            groups = client.xinfo_groups(KEYS.events)
            lag_seen = max(lag_seen, int(groups[0]["lag"] or 0) if groups else 0)
            # a slow request finished (5 s of crawl) while most of the backlog is still in Redis
            return worker.stats.get("requests", 0) > 0 and lag_seen > 5000

        await until(backlog_built, timeout=120, interval=0.05)
        stack.api.stop()  # the API recovers: same port and data, no more latency
        stack.api_args = ("--port", str(port))
        stack.start_api()

        async def drained() -> bool:
            nonlocal peak
            peak = max(peak, worker.held_bytes)
            groups = client.xinfo_groups(KEYS.events)
            return int(groups[0]["lag"] or 0) == 0 and int(groups[0]["pending"]) == 0

        await until(drained, timeout=180, interval=0.05)
        stop.set()
        await asyncio.wait_for(task, 60)
    entry_size = 200
    assert lag_seen > 5000  # the backlog waited in Redis …
    assert peak <= BUDGET + settings.worker.read_count * entry_size  # … not in the worker
    audit = stack.audit(written, executions)
    audit.assert_balanced()
    assert audit.dead == {}
