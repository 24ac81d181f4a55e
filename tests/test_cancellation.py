"""Background loops stop when cancelled, whatever they are awaiting at that moment.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when the outer
task is cancelled just as the inner awaitable completes (CPython gh-86296, fixed in 3.12): a
polling loop built on it can swallow its cancellation and run on, and whoever awaits it after
cancelling (a worker shutting down its /metrics listener) waits for ever. The code uses
``asyncio.timeout`` instead. But redis-py sends every command through ``wait_for`` once a socket
timeout is set (redis-py 8.1 sets 5 s by default), which kept the observability tests'
intermittent hang alive: the stray poller, cancelled as its SCAN went out, slept on for a
minute. The clients connection.py builds send under ``asyncio.timeout``; the Redis tests below
hold them to it.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from metricrelay.connection import async_client
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.relay.endpoints import Endpoints, ProbeConfig
from metricrelay.relay.observability import WorkerMetrics
from metricrelay.relay.stream import GroupInfo

SOURCE = Path(__file__).resolve().parents[1] / "src" / "metricrelay"


def test_no_source_module_uses_wait_for() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                offenders.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert offenders == [], "use asyncio.timeout (see this module's docstring)"


class QuickSource:
    """A group source whose answer takes one turn of the loop, like a fast Redis reply."""

    redis: Any = None

    async def group_info(self) -> GroupInfo | None:
        await asyncio.sleep(0)
        return GroupInfo(pending=0, lag=0)


@pytest.mark.parametrize("turns", range(12))
async def test_the_group_poller_stops_when_cancelled_at_any_moment(turns: int) -> None:
    """Cancelled after ``turns`` turns of the loop: before, during and just after a reply."""
    config = ProbeConfig(group_interval=0.001, stray_interval=0)
    endpoints = Endpoints(WorkerMetrics(), QuickSource(), config)
    task = asyncio.create_task(endpoints._poll_group())
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done, "the poller swallowed its cancellation and runs on"
    assert task.cancelled()


# --------------------------------------------------------------------------- with a real Redis

# Turns of the event loop after which a task is cancelled: enough to land before, during and
# after the connection's set-up and a few commands (a lost cancellation was about one in two
# with redis-py's wait_for; see the module docstring).
REDIS_TURNS = range(40)


async def cancel_after(turns: int, task: asyncio.Task[Any]) -> bool:
    """Cancel ``task`` after ``turns`` turns of the loop; True when it then stopped."""
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1)
    while not task.done():  # it lost the cancellation: stop it, so that the test can go on
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    return bool(done) and task.cancelled()


@pytest.mark.integration
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "connecting"])
async def test_a_task_cancelled_during_a_redis_command_stops(
    redis_server: RedisServer, connected: bool
) -> None:
    client = async_client(redis_server.url)

    async def ping_for_ever() -> None:
        while True:
            await client.ping()

    try:
        ran_on = []
        for turns in REDIS_TURNS:
            if not connected:
                await client.connection_pool.disconnect()  # the next command connects first
            if not await cancel_after(turns, asyncio.create_task(ping_for_ever())):
                ran_on.append(turns)
        assert ran_on == [], "cancelled after these turns of the loop, the task ran on"
    finally:
        await client.aclose()


class RedisSource:
    redis: Any

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def group_info(self) -> GroupInfo | None:
        return None


@pytest.mark.integration
async def test_the_stray_poller_stops_when_cancelled_during_its_scan(
    redis_server: RedisServer,
) -> None:
    """The observability tests' hang, as it was seen: a worker's stray poller, cancelled by
    ``Endpoints.close()`` while its SCAN was on its way, went on to sleep."""
    keys = Keys("cancel-test")
    client = async_client(redis_server.url)
    await client.xadd(keys.events, {"resource": b"{}"})
    await client.xadd(keys.dead, {"resource": b"{}"})
    config = ProbeConfig(group_interval=60, stray_interval=0.001, prefix=keys.prefix)
    endpoints = Endpoints(WorkerMetrics(), RedisSource(client), config)
    try:
        ran_on = [
            turns
            for turns in REDIS_TURNS
            if not await cancel_after(turns, asyncio.create_task(endpoints._poll_stray()))
        ]
        assert ran_on == [], "cancelled after these turns of the loop, the poller ran on"
    finally:
        await client.delete(keys.events, keys.dead)
        await client.aclose()
