"""Cancelling tasks so that they really end; waiting for the first of several events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["cancel_until_done", "wait_any"]

_CHECK_S: Final = 0.5


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again those that go on:
    Python 3.11's ``asyncio.timeout`` and ``wait_for`` (inside aiohttp and redis-py) can swallow
    a cancellation that lands just as their own deadline or operation ends."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_CHECK_S)


async def wait_any(events: Iterable[asyncio.Event], timeout: float) -> bool:
    """Wait until one of ``events`` is set, at most ``timeout`` seconds; True if one was."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
