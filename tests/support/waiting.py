"""Waiting for a condition with a deadline: the one way tests (and benchmarks) wait for a peer.

A sleep before an assertion is a guess at how long the peer takes (DESIGN.md, rule 11); these
poll the condition until it holds and fail with what was awaited once the deadline has passed.
``until`` is for coroutines (the condition may be a coroutine function), ``until_sync`` for
blocking code; both share the deadline and the failure message.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["until", "until_sync"]

T = TypeVar("T")

TIMEOUT_S = 30.0  # a failure bound only: a condition that holds ends the wait at once
INTERVAL_S = 0.02


class _Deadline:
    def __init__(self, condition: Callable[..., object], timeout: float, what: str | None) -> None:
        self.condition = condition
        self.timeout = timeout
        self.what = what
        self.ends = time.monotonic() + timeout

    def check(self, result: object) -> None:
        """Raise TimeoutError, naming what was awaited, once the deadline has passed."""
        if time.monotonic() >= self.ends:
            raise TimeoutError(
                f"{self.what or _describe(self.condition)}: not met within {self.timeout:g}s "
                f"(last result: {result!r})"
            )


def _describe(condition: Callable[..., object]) -> str:
    """The condition's source line for a lambda, else its name."""
    name = getattr(condition, "__qualname__", repr(condition))
    if name.endswith("<lambda>"):
        try:
            return " ".join(inspect.getsource(condition).split())
        except (OSError, TypeError):
            pass
    return name


async def until(
    condition: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str | None = None,
) -> T:
    """Await until ``condition()`` (awaited if it returns an awaitable) is truthy; return it.

    An exception the condition raises ends the wait at once (so a condition may assert that
    the peer is still alive). Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = _Deadline(condition, timeout, what)
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        deadline.check(result)
        await asyncio.sleep(interval)  # polling: Redis and other processes give no event


def until_sync(
    condition: Callable[[], T | None],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str | None = None,
) -> T:
    """:func:`until` for blocking code: the thread sleeps between polls."""
    deadline = _Deadline(condition, timeout, what)
    while True:
        result = condition()
        if result:
            return result
        deadline.check(result)
        time.sleep(interval)  # polling with a deadline
