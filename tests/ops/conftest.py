"""Fixtures for the operator commands: a flushed sync client and a CLI runner on the test Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from metricrelay.cli import main
from metricrelay.devtools.embedded import RedisServer


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def cli(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli("status", "--json")`` → (exit code, stdout, stderr), against the test Redis."""

    def run(command: str, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        parts = command.split()
        code = main([*parts, "--redis-url", redis_server.url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
