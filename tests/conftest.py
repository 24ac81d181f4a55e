"""Shared fixtures: a private redis-server for the session (never the machine's own on 6379)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_asyncio

from metricrelay.connection import async_client
from metricrelay.devtools.embedded import RedisServer


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
