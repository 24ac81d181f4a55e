"""/metrics of a worker in process, parsed with prometheus-client, against known activity."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable
from contextlib import AsyncExitStack

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.observed import open_observed_worker, scrape
from tests.support.settings import worker_settings
from tests.support.waiting import until

from metricrelay.api import ApiConfig, FaultConfig
from metricrelay.api.server import start_server
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.endpoints import Endpoints

pytestmark = pytest.mark.integration

KEYS = Keys()


def resource(execution: str, metrics: list[dict[str, object]]) -> dict[str, bytes]:
    return {"resource": orjson.dumps({"executionId": execution, "metrics": metrics})}


async def write_known_activity(client: redis_asyncio.Redis) -> None:
    """Five entries: a 400 to isolate, a 413 to split, two broken entries, one bad point."""
    a = [{"name": "loss", "value": 1.0, "step": s} for s in range(10)]
    a[6] = {"name": "forbidden_loss", "value": 1.0, "step": 6}  # the server refuses this name
    await client.xadd(KEYS.events, resource("exec-a", a))
    b = [{"name": "loss", "value": 1.0, "step": s} for s in range(500)]  # the server takes 300
    await client.xadd(KEYS.events, resource("exec-b", b))
    await client.xadd(KEYS.events, {"resource": b"not json"})
    await client.xadd(KEYS.events, {"other": b"no resource field"})
    c = [{"name": "loss", "value": 1.0, "step": s} for s in range(3)]
    c.append({"name": "loss", "value": "high", "step": 3})  # invalid on its own
    await client.xadd(KEYS.events, resource("exec-c", c))


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_exactly_what_the_worker_did(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis
) -> None:
    await write_known_activity(redis_client)
    api = await start_server(
        ApiConfig(
            port=0,
            client_id="relay",
            client_secret="relay-secret",
            faults=FaultConfig(max_metrics_per_request=300, reject_names=re.compile("forbidden")),
        )
    )
    settings = worker_settings(
        redis_server.url,
        api.base_url,
        token=None,  # client credentials: OAuth
        auth_url=api.auth_url,
        client_id="relay",
        client_secret="relay-secret",
    )
    try:
        async with AsyncExitStack() as stack:
            worker, endpoints = await open_observed_worker(settings, stack, group_interval=0.02)
            await asyncio.wait_for(worker.run(asyncio.Event(), burst=True), 60)
            samples = await scrape(endpoints)
            await check_lag_and_pending(endpoints, redis_client)
    finally:
        await api.close()

    def v(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    assert v("metricrelay_events_read_total") == 5
    assert v("metricrelay_events_acked_total") == 5
    assert v("metricrelay_points_sent_total") == 9 + 500 + 3
    bodies = {k[1][0][1]: n for k, n in samples.items() if k[0] == "metricrelay_bodies_total"}
    assert sum(bodies.values()) == 3  # one body per execution
    assert set(bodies) >= {"metrics", "bytes", "linger", "flush"}  # every reason from the start
    # exec-a's 10 items: 400 → halves [0-4] 204, [5-9] 400 → [5,6] 400, [7-9] 204 → [5] 204,
    # [6] 400 isolated. exec-b: 413 → 250 + 250, both 204. exec-c: one 204.
    assert v("metricrelay_requests_total", status="204") == 3 + 2 + 1
    assert v("metricrelay_requests_total", status="400") == 4
    assert v("metricrelay_requests_total", status="413") == 1
    assert v("metricrelay_splits_total", status="400") == 3
    assert v("metricrelay_splits_total", status="413") == 1
    assert v("metricrelay_isolated_items_total") == 1
    assert v("metricrelay_retries_total") == 0
    assert v("metricrelay_dead_letters_total", reason="rejected") == 1
    assert v("metricrelay_dead_letters_total", reason="invalid") == 3  # 2 entries + 1 point
    assert v("metricrelay_dead_letters_total", reason="too_large") == 0
    assert v("metricrelay_token_refreshes_total") == 1
    assert v("metricrelay_token_failures_total") == 0
    assert v("metricrelay_request_duration_seconds_count") == 11
    assert v("metricrelay_request_duration_seconds_bucket", le="+Inf") == 11
    assert 0 < v("metricrelay_request_duration_seconds_sum") < 60
    assert v("metricrelay_requests_in_flight") == 0
    assert v("metricrelay_deliveries_in_flight") == 0
    assert v("metricrelay_bodies_queued") == 0
    assert v("metricrelay_buffered_bytes") == 0
    assert v("metricrelay_memory_budget_bytes") == settings.worker.memory_budget_bytes
    assert v("metricrelay_api_failing_seconds") == 0
    # the worker's own tally and the metrics agree
    assert worker.stats["points_sent"] == 512 and worker.stats["requests"] == 11


async def check_lag_and_pending(endpoints: Endpoints, client: redis_asyncio.Redis) -> None:
    """The group gauges follow Redis: 0/0 when drained; then 3 new entries; then 1 taken."""

    def group(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
        return (
            value(samples, "metricrelay_consumer_group_lag"),
            value(samples, "metricrelay_consumer_group_pending"),
        )

    async def shows(expected: tuple[float, float]) -> bool:
        return group(await scrape(endpoints)) == expected

    await until(lambda: shows((0, 0)), what="drained group")
    for step in range(3):
        await client.xadd(KEYS.events, resource("exec-d", [{"name": "x", "value": step}]))
    await until(lambda: shows((3, 0)), what="lag of three new entries")
    await client.xreadgroup(KEYS.group, "another-consumer", {KEYS.events: ">"}, count=1)
    await until(lambda: shows((2, 1)), what="one entry taken by another consumer")


async def test_group_gauges_are_nan_while_the_group_is_missing(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis
) -> None:
    settings = worker_settings(redis_server.url, api_url="http://127.0.0.1:9/v2", token="t")

    async def lag() -> float:
        return value(await scrape(endpoints), "metricrelay_consumer_group_lag")

    async with AsyncExitStack() as stack:
        worker, endpoints = await open_observed_worker(settings, stack, group_interval=0.02)
        await worker.stream.ensure_group()
        await until(lambda: _is(lag(), 0.0), what="lag of an empty group")
        await redis_client.delete(KEYS.events)  # the stream and its group are gone
        await until(lambda: _is(lag(), math.nan), what="unknown lag")
        samples = await scrape(endpoints)
    assert math.isnan(value(samples, "metricrelay_consumer_group_pending"))


async def _is(reading: Awaitable[float], expected: float) -> bool:
    got = await reading
    return math.isnan(got) if math.isnan(expected) else got == expected


async def test_entries_in_streams_of_another_layout_show_in_a_gauge(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers on one stream, a producer on four shards: its entries wait where nobody reads."""
    settings = worker_settings(
        redis_server.url, api_url="http://127.0.0.1:9/v2", token="t", stray_interval=0.05
    )
    four = Keys(shards=4)

    async def stray() -> float:
        return value(await scrape(endpoints), "metricrelay_stray_stream_entries")

    async with AsyncExitStack() as stack:
        _, endpoints = await open_observed_worker(settings, stack)
        await until(lambda: _is(stray(), 0.0), what="nothing stray")
        await redis_client.xadd(KEYS.events, resource("exec-s", []))  # in play: not counted
        await redis_client.xadd(four.shard(1).dead, {"resource": b"{}"})  # dead letters: not
        for _ in range(2):
            await redis_client.xadd(four.shard(1).events, resource("exec-s", []))
        await until(lambda: _is(stray(), 2.0), what="two stray entries")
        await redis_client.xadd(four.shard(3).events, resource("exec-t", []))
        await until(lambda: _is(stray(), 3.0), what="three stray entries")
        await redis_client.delete(four.shard(1).events, four.shard(3).events)
        await until(lambda: _is(stray(), 0.0), what="none left")
    warnings = [r.getMessage() for r in caplog.records if "no worker reads" in r.getMessage()]
    assert warnings[0].endswith("metricrelay:events:{1of4} (2)")
    assert warnings[-1].endswith("metricrelay:events:{1of4} (2), metricrelay:events:{3of4} (1)")


async def test_looking_for_stray_streams_can_be_turned_off(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis
) -> None:
    await redis_client.xadd(Keys(shards=4).shard(2).events, resource("exec-s", []))
    settings = worker_settings(
        redis_server.url, api_url="http://127.0.0.1:9/v2", token="t", stray_interval=0
    )
    async with AsyncExitStack() as stack:
        worker, endpoints = await open_observed_worker(settings, stack, group_interval=0.02)
        await worker.stream.ensure_group()
        await until(lambda: _is(lag(endpoints), 0.0), what="the group poller has run")
        samples = await scrape(endpoints)
    assert math.isnan(value(samples, "metricrelay_stray_stream_entries"))  # never looked


async def lag(endpoints: Endpoints) -> float:
    return value(await scrape(endpoints), "metricrelay_consumer_group_lag")
