"""The one backoff policy and its retry loops; sleep, clock and randomness are injected.

:func:`call_with_retry` retries an operation on the API within a time budget; :func:`until_done`
retries a Redis write for as long as Redis is away or refuses it for a passing reason (full,
loading, read-only during a failover, a cluster re-electing): giving up would leave entries held
and nothing could progress anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, TypeVar

from redis import exceptions as redis_errors

from metricrelay.connection import REDIS_UNAVAILABLE
from metricrelay.errors import MetricRelayError, RetriesExhausted

__all__ = [
    "REDIS_BACKOFF",
    "FullWatch",
    "RetryPolicy",
    "call_with_retry",
    "parse_retry_after",
    "redis_full",
    "redis_transient",
    "until_done",
    "until_done_sync",
]

log = logging.getLogger(__name__)
# The jitter of every backoff that is given no generator of its own: one per process, since a
# fresh random.Random() seeds itself from os.urandom (tens of µs, once per body and per ack).
_JITTER: Final = random.Random()

T = TypeVar("T")

# Beyond 2**64 times the base every sane cap has long been reached; clamping the exponent keeps
# `base * 2**attempt` from overflowing a float on absurd attempt counts.
_MAX_EXPONENT: Final = 64
_SECONDS = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Full-jitter exponential backoff with a total time budget.

    ``base`` and ``cap`` bound the backoff (seconds), ``budget`` is the longest a caller keeps
    retrying one operation, measured from its first attempt, and ``retry_after_cap`` bounds how
    long a server's ``Retry-After`` can make us wait.
    """

    base: float
    cap: float
    budget: float
    retry_after_cap: float

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"retry base must be positive, got {self.base}")
        if not self.cap >= self.base:
            raise ValueError(f"retry cap ({self.cap}) must not be below the base ({self.base})")
        if not self.budget >= 0:
            raise ValueError(f"retry budget must not be negative, got {self.budget}")
        if not self.retry_after_cap >= 0:
            raise ValueError(f"retry_after_cap must not be negative, got {self.retry_after_cap}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number ``attempt + 1``."""
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, got {attempt}")
        return min(self.cap, math.ldexp(self.base, min(attempt, _MAX_EXPONENT)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]; ``attempt`` counts from 0.

        Full jitter (rather than equal or decorrelated jitter) spreads the replicas that failed
        together over the whole window, which is what un-synchronises a thundering herd.
        """
        return rng.uniform(0.0, self.ceiling(attempt))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    Decimal seconds are tolerated although RFC 9110 only allows integers; a negative number or a
    date in the past means "now" (0). Anything unparsable gives None, and the caller falls back
    to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without a zone claim (RFC 5322)
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _wait_before_retry(
    error: MetricRelayError, failures: int, policy: RetryPolicy, rng: random.Random
) -> float:
    backoff = policy.delay(failures - 1, rng)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float) and not math.isnan(retry_after):
        # The server knows better than our backoff, but never let it park a batch for long
        # (an infinite one, a number too long for a float, is capped as well).
        return max(backoff, min(float(retry_after), policy.retry_after_cap))
    return backoff


async def call_with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[MetricRelayError, int, float], None] | None = None,
) -> tuple[T, int]:
    """Await ``operation()`` until it succeeds; answer its result and the attempts it took.

    Only a :class:`MetricRelayError` whose class says ``retriable`` is retried; anything else
    (including cancellation) propagates at once, unchanged. Before each retry ``on_retry`` gets
    the error, the number of the attempt that failed (from 1) and the delay about to be slept.
    When the next attempt could not start within ``policy.budget`` seconds of the first one,
    :class:`RetriesExhausted` is raised instead, wrapping the last error.
    """
    rng = rng if rng is not None else _JITTER
    start = clock()
    attempts = 0
    while True:
        attempts += 1
        try:
            return await operation(), attempts
        except MetricRelayError as error:
            if not error.retriable:
                raise
            delay = _wait_before_retry(error, attempts, policy, rng)
            if clock() - start + delay > policy.budget:
                raise RetriesExhausted(error, attempts) from error
            if on_retry is not None:
                on_retry(error, attempts, delay)
        await sleep(delay)


# Answers of a Redis that will serve again by itself: full (maxmemory with noeviction: OOM),
# loading its data after a restart, a replica during a failover, a cluster re-electing a master
# or migrating a slot, a script running too long.
_TRANSIENT_CLASSES: Final = (
    redis_errors.OutOfMemoryError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
_TRANSIENT_PREFIXES: Final = (
    "OOM",
    "LOADING",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "BUSY ",
    "NOREPLICAS",
)
REDIS_BACKOFF: Final = RetryPolicy(base=0.1, cap=5.0, budget=math.inf, retry_after_cap=0.0)


def redis_transient(error: BaseException) -> bool:
    """Whether a Redis call that raised ``error`` is worth retrying as it is."""
    if isinstance(error, (*REDIS_UNAVAILABLE, *_TRANSIENT_CLASSES)):
        return True
    return isinstance(error, redis_errors.ResponseError) and str(error).startswith(
        _TRANSIENT_PREFIXES
    )


def redis_full(error: BaseException) -> bool:
    """Redis refused a write because it reached ``maxmemory`` (with ``noeviction``)."""
    return isinstance(error, redis_errors.OutOfMemoryError) or str(error).startswith("OOM")


def _describe(error: BaseException) -> str:
    if redis_full(error):
        return "full (maxmemory reached)"
    return "unavailable" if redis_transient(error) else "failing"


async def until_done(
    operation: Callable[[], Awaitable[T]],
    what: str,
    *,
    on_error: Callable[[BaseException], None] | None = None,
    retry_on: Callable[[BaseException], bool] = redis_transient,
    policy: RetryPolicy = REDIS_BACKOFF,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Await ``operation()`` until it succeeds, retrying with backoff what ``retry_on`` says
    (transient Redis errors); anything else (cancellation included) propagates. ``on_error``
    sees every retried error."""
    rng = rng if rng is not None else _JITTER
    failures = 0
    while True:
        try:
            return await operation()
        except Exception as error:
            if not retry_on(error):
                raise
            delay = policy.delay(failures, rng)
            failures += 1
            if on_error is not None:
                on_error(error)
            log.warning(
                "redis %s while %s (%s); retrying in %.1fs", _describe(error), what, error, delay
            )
        await sleep(delay)


def until_done_sync(
    operation: Callable[[], T],
    what: str,
    *,
    retry_on: Callable[[BaseException], bool] = redis_transient,
    stop: Callable[[], bool] = lambda: False,
    policy: RetryPolicy = REDIS_BACKOFF,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random | None = None,
) -> T | None:
    """:func:`until_done` for a thread: the same backoff and logging; None when ``stop()`` is
    true after a failure (the caller gave up waiting)."""
    rng = rng if rng is not None else _JITTER
    failures = 0
    while True:
        try:
            return operation()
        except Exception as error:
            if not retry_on(error):
                raise
            if stop():
                return None
            delay = policy.delay(failures, rng)
            failures += 1
            log.warning(
                "redis %s while %s (%s); retrying in %.1fs", _describe(error), what, error, delay
            )
        sleep(delay)


class FullWatch:
    """Since when Redis refuses writes for lack of memory (None: it does not), for ``/readyz``
    and ``status``; says so once in the log when it starts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.since: float | None = None

    def failed(self, error: BaseException, what: str) -> None:
        """A Redis call failed: full if ``error`` says so, else not known to be full."""
        if not redis_full(error):
            self.since = None
        elif self.since is None:
            self.since = self.clock()
            log.error(
                "redis is full (maxmemory reached) while %s: nothing can be acknowledged or "
                "dead-lettered until memory is freed; retrying",
                what,
            )

    def ok(self) -> None:
        """A Redis write went through."""
        self.since = None
