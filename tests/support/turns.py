"""Waiting for a fleet's loop to turn: the one clock of the fleet tests that is not a sleep."""

from __future__ import annotations

from tests.support.waiting import until

from metricrelay.relay.fleet import Fleet

__all__ = ["ticks"]


async def ticks(fleet: Fleet, count: int) -> None:
    """Wait until ``count`` more turns of the fleet's loop have run to their end: whatever a
    turn would do (take a shard back, take one more) has had that many chances. Each turn
    starts with one beat (``leases.beat``); the turn a beat starts has ended by the next."""
    beats = 0
    beat = fleet.leases.beat

    async def counted() -> int:
        nonlocal beats
        beats += 1
        return await beat()

    async def turned() -> bool:
        return beats > count

    fleet.leases.beat = counted  # type: ignore[method-assign]
    try:
        await until(turned)
    finally:
        fleet.leases.beat = beat  # type: ignore[method-assign]
