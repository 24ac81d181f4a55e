"""/healthz and /readyz: the event loop watchdog, Redis going away and coming back, the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.observed import get, open_observed_worker, scrape
from tests.support.settings import worker_settings
from tests.support.waiting import until

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.endpoints import Endpoints, ProbeConfig
from metricrelay.relay.observability import WorkerMetrics
from metricrelay.relay.stream import EventStream

pytestmark = pytest.mark.integration

KEYS = Keys()
DUMMY_API = "http://127.0.0.1:9/v2"  # nobody listens: these workers send nothing


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and restart; AOF keeps the group across."""
    with RedisServer(appendonly="always") as server:
        yield server


async def readiness(endpoints: Endpoints) -> tuple[int, dict[str, object]]:
    status, content_type, text = await get(endpoints, "/readyz")
    assert content_type.startswith("application/json")
    return status, orjson.loads(text)


async def test_readyz_follows_redis_away_and_back_and_the_group(own_redis: RedisServer) -> None:
    settings = worker_settings(own_redis.url, DUMMY_API, token="probe-token")
    async with AsyncExitStack() as stack:
        worker, endpoints = await open_observed_worker(settings, stack, group_interval=0.02)

        status, body = await readiness(endpoints)  # the worker has not created its group yet
        assert (status, body["failed"], body["group"]) == (503, ["group"], "missing")
        await worker.stream.ensure_group()
        status, body = await readiness(endpoints)
        assert (status, body["status"], body["failed"]) == (200, "ready", [])

        await asyncio.to_thread(own_redis.stop)
        status, body = await readiness(endpoints)
        assert (status, body["failed"], body["group"]) == (503, ["redis"], "not checked")
        assert str(body["redis"]).startswith(("unreachable", "timeout"))
        assert "redis://" not in orjson.dumps(body).decode()  # no URL (it may hold a password)
        assert (await get(endpoints, "/metrics"))[0] == 200  # metrics are served all the same
        assert (await get(endpoints, "/healthz"))[0] == 200  # alive: only not ready

        await asyncio.to_thread(own_redis.restart)

        async def ready() -> bool:
            return (await readiness(endpoints))[0] == 200

        await until(ready, what="ready again after Redis came back")

        client = redis_asyncio.Redis.from_url(own_redis.url)
        await client.delete(KEYS.events)  # the stream (and its group) deleted under the worker
        await client.aclose()
        status, body = await readiness(endpoints)
        assert (status, body["failed"]) == (503, ["group"])


async def test_readyz_fails_only_after_the_api_failed_longer_than_the_threshold(
    redis_client: redis_asyncio.Redis,
) -> None:
    now = [1000.0]
    metrics = WorkerMetrics(clock=lambda: now[0])
    stream = EventStream(redis_client, KEYS, "probe")
    await stream.ensure_group()
    endpoints = Endpoints(metrics, stream, ProbeConfig(ready_api_failure_seconds=60))
    await endpoints.start()
    try:

        def request(result: int | str) -> None:
            metrics.request_started()
            metrics.request_finished(result, 0.01)

        request(503)
        now[0] += 59
        request("error")  # still the same outage
        assert (await readiness(endpoints))[0] == 200
        now[0] += 2
        status, body = await readiness(endpoints)
        assert (status, body["failed"], body["api"]) == (503, ["api"], "failing for 61s")
        assert (await scrape(endpoints))[("metricrelay_api_failing_seconds", ())] == 61
        request("cancelled")  # our own shutdown says nothing about the API
        assert (await readiness(endpoints))[0] == 503
        request(400)  # an answer about a body's content: the API works
        assert (await readiness(endpoints))[0] == 200
        request(429)
        now[0] += 61
        assert (await readiness(endpoints))[0] == 503
        request(204)
        assert (await readiness(endpoints))[0] == 200
    finally:
        await endpoints.close()


async def test_healthz_watches_the_event_loop(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis
) -> None:
    settings = worker_settings(redis_server.url, DUMMY_API, token="probe-token")
    async with AsyncExitStack() as stack:
        _, endpoints = await open_observed_worker(settings, stack, tick=0.02)
        status, _, text = await get(endpoints, "/healthz")
        assert status == 200 and orjson.loads(text)["status"] == "ok"

        time.sleep(0.3)  # not waiting for anything: this blocking call *is* the stalled loop

        async def stall_seen() -> bool:
            samples = await scrape(endpoints)
            late = samples[("metricrelay_event_loop_lag_seconds_bucket", (("le", "+Inf"),))]
            on_time = samples[("metricrelay_event_loop_lag_seconds_bucket", (("le", "0.25"),))]
            return late - on_time >= 1

        await until(stall_seen, what="a tick more than 0.25 s late")
        endpoints._tasks[0].cancel()  # the watchdog gone: nothing vouches for the loop
        await asyncio.gather(endpoints._tasks[0], return_exceptions=True)
        status, _, text = await get(endpoints, "/healthz")
        assert status == 503 and orjson.loads(text)["status"] == "stalled"
