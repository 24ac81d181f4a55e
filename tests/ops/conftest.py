"""Fixtures for the operator commands: a flushed sync client and a CLI runner on the test Redis."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis

from metricrelay.cli import main
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

KEYS = Keys()


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


def fragment(execution: str, metrics: int = 1, *, group: str | None = "default") -> bytes:
    """A stream fragment with ``metrics`` points (names m0, m1, … and steps 0, 1, …)."""
    document: dict[str, Any] = {"executionId": execution}
    if group is not None:
        document["resourceGroup"] = group
    document["metrics"] = [
        {"name": f"m{i}", "value": float(i), "step": i, "timestamp": "2026-11-23T12:00:00.000000Z"}
        for i in range(metrics)
    ]
    return orjson.dumps(document)


def letter(resource: bytes, reason: Reason, *, sources: tuple[str, ...] = ("1-0",)) -> DeadLetter:
    return DeadLetter(resource, reason, f"{reason.value} for the test", list(sources))


def add_dead(client: redis.Redis, dead: DeadLetter, entry_id: str) -> str:
    """Append a dead letter with a chosen id (its time is what --since/--until compare)."""
    return client.xadd(KEYS.dead, dead.fields(), id=entry_id).decode()  # type: ignore[union-attr]


@pytest.fixture
def ops() -> SimpleNamespace:
    """The helpers above, for test modules (importlib mode: conftest is not importable)."""
    return SimpleNamespace(keys=KEYS, fragment=fragment, letter=letter, add_dead=add_dead)
