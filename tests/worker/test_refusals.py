"""429s shared through Redis (relay/refusals.py): each worker counts its own, reads the others'."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from tests.support.waiting import until

from metricrelay.relay.concurrency import DeliverySlots
from metricrelay.relay.refusals import SharedRefusals

KEY = "test:refusals"
RTT = 0.125


def settled() -> DeliverySlots:
    """Slots whose adaptive limit has a round-trip baseline (one quick answer)."""
    slots = DeliverySlots(16)
    slots.request_started()
    slots.request_finished(204, RTT)
    return slots


Pair = tuple[DeliverySlots, DeliverySlots, list[SharedRefusals]]


@pytest.fixture
async def pair(redis_client: redis_asyncio.Redis) -> AsyncIterator[Pair]:
    first, second = settled(), settled()
    sharing = [SharedRefusals(redis_client, KEY, slots, poll=0.01) for slots in (first, second)]
    for refusals in sharing:
        refusals.start()
    await until(lambda: _accounted(0, sharing))  # both read the counter once: history is old
    yield first, second, sharing
    for refusals in sharing:
        await refusals.stop()


async def _accounted(value: int, sharing: list[SharedRefusals]) -> bool:
    """Every one of them has accounted for the counter up to ``value``."""
    return all(refusals._seen == value for refusals in sharing)


def refuse(slots: DeliverySlots, times: int) -> None:
    for _ in range(times):
        slots.request_started()
        slots.request_finished(429, RTT)


async def test_a_429_answered_to_one_worker_is_back_pressure_for_the_other(
    pair: Pair, redis_client: redis_asyncio.Redis
) -> None:
    first, second, sharing = pair
    refuse(first, 3)
    await until(lambda: _accounted(3, sharing))
    assert (first.peer_refusals, second.peer_refusals) == (0, 3)  # its own are not news
    assert second.throttled()  # its own limit now holds bodies to fill, as after its own 429
    refuse(second, 2)
    await until(lambda: _accounted(5, sharing))
    assert (first.peer_refusals, second.peer_refusals) == (2, 3)  # each counted once
    assert int(await redis_client.get(KEY) or 0) == 5


async def test_the_counter_read_first_is_history_and_a_reset_starts_again(
    redis_client: redis_asyncio.Redis,
) -> None:
    await redis_client.set(KEY, 40)  # 429s of workers long gone
    slots = settled()
    refusals = SharedRefusals(redis_client, KEY, slots)
    refusals.caught_up(40)
    assert slots.peer_refusals == 0
    refusals.caught_up(43)
    assert slots.peer_refusals == 3
    refusals.caught_up(2)  # the key was deleted and counted again from zero
    refusals.caught_up(4)
    assert slots.peer_refusals == 5


async def test_without_redis_the_worker_learns_from_its_own_answers_alone() -> None:
    broken = redis_asyncio.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens there
    slots = settled()
    refusals = SharedRefusals(broken, KEY, slots, poll=0.01)
    refusals.start()
    refuse(slots, 2)  # counted here; the INCRs fail quietly
    await until(lambda: _counted(refusals))
    assert refusals._poller is not None and not refusals._poller.done()  # still reading
    await refusals.stop()
    assert slots.peer_refusals == 0 and slots.throttled()
    await broken.aclose()


async def _counted(refusals: SharedRefusals) -> bool:
    return not refusals._tasks and not refusals._counting
