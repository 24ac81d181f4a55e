"""One body in flight per execution, a global limit, and no execution stalling the others."""

from __future__ import annotations

import asyncio

import orjson

from metricrelay.codec import EncodedFragment
from metricrelay.relay.batching import Body, Coalescer
from metricrelay.relay.scheduler import KeyedScheduler


def body(execution: str, n: int) -> Body:
    coalescer = Coalescer()
    metric = orjson.dumps({"name": "m", "value": float(n)})
    coalescer.add(f"{n}-0", EncodedFragment("g", execution, [metric]), now=0.0)
    [made] = coalescer.flush()
    return made


async def test_per_execution_order_and_global_limit() -> None:
    running: dict[str, int] = {}
    peak = {"global": 0}
    order: list[tuple[str, float]] = []
    gates = {e: asyncio.Event() for e in ("slow", "a", "b", "c")}
    others_done = asyncio.Event()

    async def run(made: Body) -> None:
        key = made.execution_id
        running[key] = running.get(key, 0) + 1
        assert running[key] == 1, "two bodies of one execution in flight"
        peak["global"] = max(peak["global"], sum(running.values()))
        if key == "slow":
            await gates["slow"].wait()
        else:
            await asyncio.sleep(0)
        order.append((key, orjson.loads(made.encode())["metrics"][0]["value"]))
        running[key] -= 1
        if sum(k != "slow" for k, _ in order) == 9:
            others_done.set()

    scheduler = KeyedScheduler(2, run)
    for n in range(3):
        for execution in ("slow", "a", "b", "c"):
            scheduler.submit(body(execution, n))
    # the slow execution holds one slot; the others all finish through the other one
    await asyncio.wait_for(others_done.wait(), 5)
    finished = [key for key, _ in order]
    assert finished.count("a") == finished.count("b") == finished.count("c") == 3
    assert "slow" not in finished
    gates["slow"].set()
    assert await scheduler.wait_idle(5)
    assert peak["global"] <= 2
    for execution in ("slow", "a", "b", "c"):
        assert [v for k, v in order if k == execution] == [0.0, 1.0, 2.0]


async def test_cancel_leaves_nothing_running() -> None:
    started = asyncio.Event()

    async def run(made: Body) -> None:
        started.set()
        await asyncio.Event().wait()

    scheduler = KeyedScheduler(4, run)
    scheduler.submit(body("a", 0))
    scheduler.submit(body("a", 1))
    await started.wait()
    await scheduler.cancel()
    assert scheduler.in_flight == 0 and scheduler.queued == 0
    assert await scheduler.wait_idle(0)
