"""Shared fixtures: a private redis-server for the session (never the machine's own on 6379).

Also the rule behind the ``integration`` marker: a test that uses a fixture starting a
redis-server or an HTTP server is marked, whether or not its module says so, so that
``pytest -m "not integration"`` runs without either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_asyncio

from metricrelay.connection import async_client
from metricrelay.devtools.embedded import RedisServer

# Fixtures that start a redis-server or an HTTP server; a fixture built on one of them (such as
# redis_client) is in a test's fixture closure too.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",  # here; redis_client, sync_redis, cli, clean_redis use it
        "private_redis",  # tests/producer
        "own_redis",  # tests/observability/test_probes.py
        "server",  # tests/test_faultproxy.py
        "stack",  # tests/reliability
        "cluster_stack",  # tests/cluster
        "scripted_api",  # tests/worker
        "start_api",  # tests/api (and api, which uses it)
        "background",  # tests/api
        "api",  # tests/producer
        "service",  # tests/test_auth.py
    }
)


@pytest.fixture(autouse=True)
def _private_spool(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test (and every process it starts) spools into a folder of its own: never the
    user's cache, where a spool left by one test would be replayed into a later test's Redis."""
    monkeypatch.setenv("METRICRELAY_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration"):
            continue
        uses_server = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses_server:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis_asyncio.Redis]:
    client: redis_asyncio.Redis = async_client(redis_server.url)  # with timeouts
    await client.flushdb()
    yield client
    await client.aclose()
