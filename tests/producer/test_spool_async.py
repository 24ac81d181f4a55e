"""The AsyncEmitter through a Redis outage (issue 18): log calls keep returning, the spool takes
the fragments off the event loop, every point arrives in step order; closed in an outage it
leaves the spool, which a later emitter of the execution sends before its own points."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.streams import stream_steps
from tests.support.waiting import until

from metricrelay.devtools.embedded import RedisServer
from metricrelay.producer.async_emitter import AsyncEmitter
from metricrelay.producer.emitter import SpoolPending

pytestmark = pytest.mark.integration


class Training:
    """Steps of an asyncio training loop: one ``log_metrics`` each, then the step's own work."""

    def __init__(self, run: AsyncEmitter) -> None:
        self.run = run
        self.step = 0
        self.slowest = 0.0

    async def steps(self, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            self.run.log_metrics({"loss": 1.0 / (self.step + 1), "lr": 0.1}, step=self.step)
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.step += 1
            await asyncio.sleep(0.001)  # the step's own work, during which the writer runs


def threads_of(target: Any, name: str) -> set[int]:
    """Record the thread each call of ``target.name`` runs in."""
    seen: set[int] = set()
    method = getattr(target, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.add(threading.get_ident())
        return method(*args, **kwargs)

    setattr(target, name, recorded)
    return seen


async def test_an_outage_spools_off_the_event_loop_and_every_point_arrives_in_order(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    with RedisServer(tmp_path / "redis", appendonly="always") as server:
        run = AsyncEmitter(
            "exec-async-outage", redis_url=server.url, spool_dir=str(spool), flush_interval=0.02
        )
        delivering = threads_of(run._diverter, "deliver")
        draining = threads_of(run._diverter, "drain")
        async with run:
            training = Training(run)
            await training.steps(200)
            await asyncio.to_thread(server.stop)  # Redis goes away
            await training.steps(300)
            await until(lambda: run.spooled > 0, timeout=10, what="the emitter spools")
            with pytest.raises(SpoolPending):  # safe on disk, not in Redis: says so
                await run.flush(timeout=0.5)
            with pytest.raises(SpoolPending):  # the barrier waits for the spool first
                await run.flush(timeout=0.5, wait_delivered=True)
            await asyncio.to_thread(server.start)  # back, on the same port
            await training.steps(200)
            await run.flush(timeout=60)  # everything in Redis: the spool replayed
            assert run.spooled == 0
        got = stream_steps(server.url, "exec-async-outage")
    assert training.slowest < 0.5  # no log call waited on Redis or the disk
    assert got == [s for s in range(700) for _ in (0, 1)]  # loss and lr of every step, in order
    assert delivering and draining  # the writer did its work in threads ...
    assert threading.get_ident() not in delivering | draining  # ... never in the event loop
    assert not list(spool.glob("*.spool"))  # replayed: deleted


async def test_close_in_an_outage_leaves_the_spool_and_a_later_emitter_sends_it_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    server = RedisServer(tmp_path / "redis", appendonly="always").start()
    try:
        url = server.url
        server.stop()  # Redis is away for the whole first run
        options: dict[str, Any] = {"redis_url": url, "spool_dir": str(spool)}
        with caplog.at_level(logging.INFO, logger="metricrelay.producer"):
            async with AsyncEmitter("exec-async-close", flush_interval=0.02, **options) as run:
                training = Training(run)
                await training.steps(300)
                closing = time.monotonic()
            closed_in = time.monotonic() - closing
        assert closed_in < 10  # close() did not wait out its 30 s timeout
        assert "fragments left in the spool" in caplog.text and str(spool) in caplog.text
        assert list(spool.glob("exec-async-close@*.spool"))

        server.start()  # the same port: the later emitter's Redis
        async with AsyncEmitter("exec-async-close", flush_interval=0.02, **options) as later:
            later.log_metrics({"loss": 0.5, "lr": 0.1}, step=300)
            await later.flush(timeout=60)
        got = stream_steps(url, "exec-async-close")
    finally:
        server.stop()
    assert got == [s for s in range(301) for _ in (0, 1)]  # the leftover first, then its own
    assert not list(spool.glob("*.spool"))
