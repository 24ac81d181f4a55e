"""The scheduler with shared delivery slots, and bodies that fill while they wait for one."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from metricrelay.codec import EncodedFragment
from metricrelay.relay.batching import Body, Coalescer, Limits
from metricrelay.relay.concurrency import ConcurrencyConfig, DeliverySlots
from metricrelay.relay.filling import Filler
from metricrelay.relay.scheduler import KeyedScheduler

FIXED = ConcurrencyConfig(adaptive=False)


def bodies(coalescer: Coalescer, execution: str, steps: range, per_body: int = 1) -> list[Body]:
    """Bodies of ``per_body`` points each, as a short linger closes them."""
    out = []
    for first in range(steps.start, steps.stop, per_body):
        metrics = [
            orjson.dumps({"name": "m", "value": float(s), "step": s})
            for s in range(first, min(first + per_body, steps.stop))
        ]
        coalescer.add(f"{first}-{execution}", EncodedFragment("g", execution, metrics), now=0.0)
        out += coalescer.flush()
    return out


class Recorder:
    """A delivery that waits for its gate; records each body's steps as it starts."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list[int]]] = []
        self.bodies: list[Body] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.running = 0
        self.peak = 0

    async def run(self, body: Body) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        steps = [m["step"] for m in orjson.loads(body.encode())["metrics"]]
        self.started.append((body.execution_id, steps))
        self.bodies.append(body)
        try:
            await self.gates.setdefault(body.execution_id, asyncio.Event()).wait()
        finally:
            self.running -= 1

    def open(self, *executions: str) -> None:
        for execution in executions:
            self.gates.setdefault(execution, asyncio.Event()).set()

    async def until_started(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.started) < count:
                await asyncio.sleep(0)


async def test_bodies_queued_behind_one_in_flight_merge_up_to_the_limits_in_order() -> None:
    coalescer = Coalescer(Limits(max_metrics=10))
    recorder = Recorder()
    scheduler = KeyedScheduler(4, recorder.run, fill=Filler(coalescer))
    for body in bodies(coalescer, "a", range(0, 26), per_body=3):
        scheduler.submit(body)
    await recorder.until_started(1)
    assert scheduler.queued == 3  # steps 3-12 and 13-22 (full), 23-25
    recorder.open("a")
    assert await scheduler.wait_idle(5)
    assert recorder.started == [
        ("a", [0, 1, 2]),
        ("a", list(range(3, 13))),
        ("a", list(range(13, 23))),
        ("a", list(range(23, 26))),
    ]
    done = [i for body in recorder.bodies for i in coalescer.complete(body)]
    assert done == [f"{first}-a" for first in range(0, 26, 3)]  # one hold each: none leaked


async def test_without_fill_or_with_fill_off_every_body_goes_alone() -> None:
    for fill_queued in (True, False):
        coalescer = Coalescer()
        recorder = Recorder()
        slots = DeliverySlots(4, ConcurrencyConfig(adaptive=False, fill_queued=fill_queued))
        scheduler = KeyedScheduler(4, recorder.run, slots, fill=Filler(coalescer))
        for body in bodies(coalescer, "a", range(4)):
            scheduler.submit(body)
        recorder.open("a")
        assert await scheduler.wait_idle(5)
        assert len(recorder.started) == (2 if fill_queued else 4)


async def test_schedulers_sharing_slots_keep_the_global_limit_and_all_finish() -> None:
    slots = DeliverySlots(3, FIXED)
    recorder = Recorder()
    coalescer = Coalescer()
    schedulers = [KeyedScheduler(16, recorder.run, slots) for _ in range(2)]
    for number, execution in enumerate("abcdefgh"):
        for body in bodies(coalescer, execution, range(2)):
            schedulers[number % 2].submit(body)
    await recorder.until_started(3)
    assert recorder.peak == 3 and slots.in_use == 3
    recorder.open(*"abcdefgh")
    for scheduler in schedulers:
        assert await scheduler.wait_idle(5)
    assert recorder.peak == 3 and len(recorder.started) == 16 and slots.in_use == 0


async def test_slots_come_back_from_failed_and_cancelled_deliveries() -> None:
    slots = DeliverySlots(2, FIXED)
    errors: list[BaseException] = []
    coalescer = Coalescer()

    async def fail(body: Body) -> None:
        raise RuntimeError("boom")

    failing = KeyedScheduler(4, fail, slots, errors.append)
    for body in bodies(coalescer, "a", range(1)):
        failing.submit(body)
    assert await failing.wait_idle(5)
    assert [str(e) for e in errors] == ["boom"] and slots.in_use == 0
    recorder = Recorder()
    hanging = KeyedScheduler(4, recorder.run, slots)
    for execution in "bcd":
        for body in bodies(coalescer, execution, range(1)):
            hanging.submit(body)
    await recorder.until_started(2)
    await hanging.cancel()
    assert slots.in_use == 0 and hanging.in_flight == 0


async def test_saturated_counts_only_bodies_that_cannot_grow() -> None:
    coalescer = Coalescer(Limits(max_metrics=2))
    recorder = Recorder()
    slots = DeliverySlots(1, FIXED)
    scheduler = KeyedScheduler(2, recorder.run, slots, fill=Filler(coalescer))
    for body in bodies(coalescer, "a", range(1)):  # takes the one slot
        scheduler.submit(body)
    await recorder.until_started(1)
    for body in bodies(coalescer, "b", range(1)) + bodies(coalescer, "c", range(1)):
        scheduler.submit(body)  # two queued bodies that may still grow
    assert scheduler.queued == 2 and not scheduler.saturated()
    for body in bodies(coalescer, "b", range(1, 4)) + bodies(coalescer, "c", range(1, 4)):
        scheduler.submit(body)  # now b and c each have a full body queued, and one growing
    assert scheduler.queued == 4 and scheduler.saturated()
    recorder.open("a", "b", "c")
    assert await scheduler.wait_idle(5)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (ConcurrencyConfig(), 4),  # adaptive starts where the fixed limit was
        (ConcurrencyConfig(initial=1), 1),  # or lower, as Vector's ARC does
        (FIXED, 4),
    ],
)
async def test_the_limit_in_flight_at_start(config: ConcurrencyConfig, expected: int) -> None:
    slots = DeliverySlots(8, config)
    recorder = Recorder()
    scheduler = KeyedScheduler(8, recorder.run, slots)
    coalescer = Coalescer()
    for execution in "abcd":
        for body in bodies(coalescer, execution, range(1)):
            scheduler.submit(body)
    await recorder.until_started(expected)
    assert scheduler.in_flight == expected and scheduler.queued == 4 - expected
    recorder.open(*"abcd")
    assert await scheduler.wait_idle(5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("fill_queued", "waited", "expected"),
    [
        (True, 0.0, ["x", "b", "a"]),  # b's body is full: it goes before a's, which may grow
        (True, 5.0, ["x", "a", "b"]),  # a's waited fill_wait: no longer
        (False, 0.0, ["x", "a", "b"]),  # no filling: in turn, as before
    ],
)
async def test_full_bodies_go_first_when_slots_are_scarce(
    fill_queued: bool, waited: float, expected: list[str]
) -> None:
    coalescer = Coalescer(Limits(max_metrics=2))
    clock = Clock()
    recorder = Recorder()
    slots = DeliverySlots(1, ConcurrencyConfig(adaptive=False, fill_queued=fill_queued))
    scheduler = KeyedScheduler(4, recorder.run, slots, fill=Filler(coalescer), clock=clock)
    for body in bodies(coalescer, "x", range(1)):
        scheduler.submit(body)  # takes the one slot
    await recorder.until_started(1)
    for body in bodies(coalescer, "a", range(1)) + bodies(coalescer, "b", range(2), 2):
        scheduler.submit(body)
    clock.now = waited
    recorder.open("x", "a", "b")
    assert await scheduler.wait_idle(5)
    assert [execution for execution, _ in recorder.started] == expected


async def test_a_body_that_fills_up_while_waiting_joins_the_full_ones() -> None:
    coalescer = Coalescer(Limits(max_metrics=2))
    recorder = Recorder()
    slots = DeliverySlots(1, FIXED)
    scheduler = KeyedScheduler(4, recorder.run, slots, fill=Filler(coalescer), clock=Clock())
    for body in bodies(coalescer, "x", range(1)):
        scheduler.submit(body)
    await recorder.until_started(1)
    for body in bodies(coalescer, "a", range(1)) + bodies(coalescer, "b", range(1)):
        scheduler.submit(body)  # both may grow: a waits longer
    for body in bodies(coalescer, "b", range(1, 2)):
        scheduler.submit(body)  # b's body is full now
    recorder.open("x", "a", "b")
    assert await scheduler.wait_idle(5)
    assert recorder.started == [("x", [0]), ("b", [0, 1]), ("a", [0])]


def lingered(coalescer: Coalescer, execution: str, step: int, now: float = 0.0) -> list[Body]:
    """A one-point body as its linger closes it (it may take in more while it waits)."""
    metric = orjson.dumps({"name": "m", "value": float(step), "step": step})
    coalescer.add(f"{step}-{execution}", EncodedFragment("g", execution, [metric]), now=now)
    return coalescer.poll(now=now)


async def test_while_the_api_throttles_a_growing_body_waits_to_fill_even_with_slots_free() -> None:
    coalescer = Coalescer(Limits(max_metrics=2), linger=0.0)
    clock = Clock()
    recorder = Recorder()
    slots = DeliverySlots(8, ConcurrencyConfig(fill_wait=0.05), clock=clock)
    scheduler = KeyedScheduler(8, recorder.run, slots, fill=Filler(coalescer), clock=clock)
    slots.request_started()
    slots.request_finished(429, 0.1)  # a 429: requests are scarcer than slots now
    assert slots.throttled()
    for body in lingered(coalescer, "a", 0) + lingered(coalescer, "b", 0):
        scheduler.submit(body)
    assert scheduler.in_flight == 0 and slots.in_use == 0  # both held to fill
    for body in lingered(coalescer, "b", 1):
        scheduler.submit(body)  # b's body is full: it goes at once
    assert scheduler.in_flight == 1
    clock.now = 0.05  # a's has waited fill_wait: it goes, partly filled (its timer pumps)
    await recorder.until_started(2)
    assert recorder.started == [("b", [0, 1]), ("a", [0])]
    for body in bodies(coalescer, "d", range(1)):
        scheduler.submit(body)  # flushed (a drain, a burst's end): not held, nothing will come
    assert scheduler.in_flight == 3
    for body in lingered(coalescer, "e", 0, now=clock.now):
        scheduler.submit(body)
    assert scheduler.in_flight == 3  # held to fill
    scheduler.more_coming(False)  # a read found nothing: there is nothing to fill it with
    assert scheduler.in_flight == 4
    scheduler.more_coming(True)
    clock.now = 11.0  # ten seconds without a 429: no longer throttled, nothing is held
    assert not slots.throttled()
    for body in lingered(coalescer, "c", 0):
        scheduler.submit(body)
    assert scheduler.in_flight == 5
    recorder.open("a", "b", "c", "d", "e")
    assert await scheduler.wait_idle(5)


async def test_fixed_slots_never_hold_a_body_to_fill() -> None:
    clock = Clock()
    slots = DeliverySlots(4, FIXED, clock=clock)
    slots.request_started()
    slots.request_finished(429, 0.1)
    assert not slots.throttled()  # the fixed limit (and fill_while_throttled off) as before
    off = DeliverySlots(4, ConcurrencyConfig(fill_while_throttled=False), clock=clock)
    off.request_started()
    off.request_finished(429, 0.1)
    assert not off.throttled()
