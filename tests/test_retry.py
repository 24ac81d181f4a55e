"""The backoff policy and retry loop, with recorded sleeps and a fake clock: nothing waits."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.fake_time import FakeTime

from metricrelay.errors import (
    AuthError,
    AuthUnavailable,
    BadRequest,
    MetricRelayError,
    NetworkError,
    RetriableDelivery,
    RetriesExhausted,
)
from metricrelay.retry import RetryPolicy, call_with_retry, parse_retry_after

POLICY = RetryPolicy(base=0.5, cap=30.0, budget=300.0, retry_after_cap=120.0)
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


class TopRng(random.Random):
    """Always draws the top of the jitter window, to make delays exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Flaky:
    """Fails with the given errors in turn, then answers ``result``."""

    def __init__(self, *errors: BaseException, result: str = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


# --------------------------------------------------------------------------- the policy


def test_delay_stays_within_the_full_jitter_window_and_grows() -> None:
    rng = random.Random(7)
    means = []
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        samples = [POLICY.delay(attempt, rng) for _ in range(2000)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.9 * ceiling  # the whole window is used, not just its bottom
        means.append(sum(samples) / len(samples))
    assert means[:6] == sorted(means[:6])  # doubles until the cap ...
    assert means[1] > 1.6 * means[0]
    assert all(abs(m - 15.0) < 1.0 for m in means[7:])  # ... then averages cap / 2


def test_same_seed_same_delays() -> None:
    first = [POLICY.delay(a, random.Random(42)) for a in range(5)]
    assert first == [POLICY.delay(a, random.Random(42)) for a in range(5)]


def test_absurd_attempt_numbers_do_not_overflow() -> None:
    assert POLICY.ceiling(10_000) == 30.0
    assert 0.0 <= POLICY.delay(10**9, random.Random(1)) <= 30.0


@given(
    base=st.floats(0.001, 10),
    factor=st.floats(1, 100),
    attempt=st.integers(0, 200),
    seed=st.integers(0, 2**32),
)
def test_delay_never_leaves_its_window(base: float, factor: float, attempt: int, seed: int) -> None:
    policy = RetryPolicy(base, base * factor, 60.0, 60.0)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(policy.cap, base * 2.0 ** min(attempt, 64))


@pytest.mark.parametrize(
    ("base", "cap", "budget", "retry_after_cap"),
    [(0, 1, 1, 1), (-1, 1, 1, 1), (2, 1, 1, 1), (1, 2, -1, 1), (1, 2, 1, -1)],
)
def test_nonsense_policies_are_refused(
    base: float, cap: float, budget: float, retry_after_cap: float
) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base, cap, budget, retry_after_cap)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError):
        POLICY.delay(-1, random.Random())


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("1.5", 1.5), ("-5", 0.0), ("-0.5", 0.0)],
)
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    header = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, NOW) == 30.0


def test_retry_after_http_date_in_the_past_means_now() -> None:
    header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert parse_retry_after(header, NOW) == 0.0


def test_retry_after_obsolete_date_forms_and_naive_now() -> None:
    # RFC 850 form, which HTTP still asks recipients to accept; and a naive "now" taken as UTC
    header = "Monday, 23-Nov-26 12:01:00 GMT"
    assert parse_retry_after(header, NOW.replace(tzinfo=None)) == 60.0


@pytest.mark.parametrize("value", [None, "", "soon", "1e3", "nan", "inf", "12s", "Mon, 99 Foo"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# --------------------------------------------------------------------------- the loop


async def test_success_at_once_does_not_sleep() -> None:
    fake = FakeTime(now=100.0)
    result = await call_with_retry(Flaky(), POLICY, sleep=fake.sleep, clock=fake.clock)
    assert result == ("ok", 1)
    assert fake.delays == []


async def test_retriable_errors_are_retried_with_recorded_delays() -> None:
    fake = FakeTime(now=100.0)
    seen: list[tuple[MetricRelayError, int, float]] = []
    errors = [
        RetriableDelivery("HTTP 503", status=503),
        NetworkError("reset"),
        AuthUnavailable("x"),
    ]
    operation = Flaky(*errors, result="done")

    result = await call_with_retry(
        operation,
        POLICY,
        sleep=fake.sleep,
        clock=fake.clock,
        rng=random.Random(3),
        on_retry=lambda error, attempt, delay: seen.append((error, attempt, delay)),
    )

    assert result == ("done", 4)
    assert operation.calls == 4
    assert [attempt for _, attempt, _ in seen] == [1, 2, 3]
    assert [error for error, _, _ in seen] == errors
    assert fake.delays == [delay for _, _, delay in seen]
    for attempt, delay in enumerate(fake.delays):
        assert 0.0 <= delay <= POLICY.ceiling(attempt)


async def test_top_of_window_delays_double_up_to_the_cap() -> None:
    fake = FakeTime(now=100.0)
    operation = Flaky(*[NetworkError("down") for _ in range(9)])
    await call_with_retry(operation, POLICY, sleep=fake.sleep, clock=fake.clock, rng=TopRng())
    assert fake.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


async def test_retry_after_beats_a_shorter_backoff() -> None:
    fake = FakeTime(now=100.0)
    error = RetriableDelivery("HTTP 429", status=429, retry_after=10.0)
    await call_with_retry(Flaky(error), POLICY, sleep=fake.sleep, clock=fake.clock, rng=TopRng())
    assert fake.delays == [10.0]


async def test_backoff_beats_a_shorter_retry_after() -> None:
    fake = FakeTime(now=100.0)
    errors = [RetriableDelivery("HTTP 503", status=503, retry_after=0.0) for _ in range(4)]
    await call_with_retry(Flaky(*errors), POLICY, sleep=fake.sleep, clock=fake.clock, rng=TopRng())
    assert fake.delays == [0.5, 1.0, 2.0, 4.0]


async def test_retry_after_is_capped() -> None:
    fake = FakeTime(now=100.0)
    error = RetriableDelivery("HTTP 429", status=429, retry_after=3600.0)
    await call_with_retry(Flaky(error), POLICY, sleep=fake.sleep, clock=fake.clock, rng=TopRng())
    assert fake.delays == [120.0]


async def test_budget_exhaustion_raises_with_attempts_and_last_error() -> None:
    fake = FakeTime(now=100.0)
    policy = RetryPolicy(base=1.0, cap=8.0, budget=20.0, retry_after_cap=120.0)
    errors = [RetriableDelivery(f"HTTP 503 #{i}", status=503) for i in range(100)]
    operation = Flaky(*errors)

    with pytest.raises(RetriesExhausted) as caught:
        await call_with_retry(operation, policy, sleep=fake.sleep, clock=fake.clock, rng=TopRng())

    # top-of-window delays 1, 2, 4, 8 (15 s); 15 + 8 > 20, so attempt 5 is the last
    assert fake.delays == [1.0, 2.0, 4.0, 8.0]
    assert caught.value.attempts == 5 == operation.calls
    assert caught.value.last is errors[4]
    assert caught.value.__cause__ is errors[4]
    assert "5 attempt(s)" in str(caught.value)


async def test_time_spent_in_attempts_counts_against_the_budget() -> None:
    fake = FakeTime(now=100.0)
    policy = RetryPolicy(base=1.0, cap=1.0, budget=10.0, retry_after_cap=1.0)

    async def slow_failure() -> None:
        fake.now += 6.0  # e.g. a request that ran into its timeout
        raise NetworkError("timeout")

    with pytest.raises(RetriesExhausted) as caught:
        await call_with_retry(
            slow_failure, policy, sleep=fake.sleep, clock=fake.clock, rng=TopRng()
        )
    assert caught.value.attempts == 2  # 6 + 1 + 6 = 13 s: no third attempt fits
    assert fake.delays == [1.0]


async def test_a_retry_after_beyond_the_budget_exhausts_at_once() -> None:
    fake = FakeTime(now=100.0)
    policy = RetryPolicy(base=0.5, cap=30.0, budget=60.0, retry_after_cap=120.0)
    error = RetriableDelivery("HTTP 429", status=429, retry_after=90.0)
    with pytest.raises(RetriesExhausted) as caught:
        await call_with_retry(Flaky(error), policy, sleep=fake.sleep, clock=fake.clock)
    assert caught.value.attempts == 1
    assert fake.delays == []


async def test_zero_budget_means_one_attempt() -> None:
    fake = FakeTime(now=100.0)
    policy = RetryPolicy(base=0.5, cap=1.0, budget=0.0, retry_after_cap=1.0)
    with pytest.raises(RetriesExhausted):
        await call_with_retry(
            Flaky(NetworkError("x")), policy, sleep=fake.sleep, clock=fake.clock, rng=TopRng()
        )


@pytest.mark.parametrize(
    "error",
    [BadRequest("HTTP 400", status=400), AuthError("bad credentials"), ValueError("a bug")],
)
async def test_non_retriable_errors_pass_through_unchanged(error: Exception) -> None:
    fake = FakeTime(now=100.0)
    operation = Flaky(error)
    with pytest.raises(type(error)) as caught:
        await call_with_retry(operation, POLICY, sleep=fake.sleep, clock=fake.clock)
    assert caught.value is error
    assert operation.calls == 1
    assert fake.delays == []


async def test_a_non_retriable_error_after_retries_passes_through() -> None:
    fake = FakeTime(now=100.0)
    error = BadRequest("HTTP 400", status=400)
    with pytest.raises(BadRequest) as caught:
        await call_with_retry(
            Flaky(NetworkError("x"), error), POLICY, sleep=fake.sleep, clock=fake.clock
        )
    assert caught.value is error
    assert len(fake.delays) == 1


async def test_cancellation_inside_the_operation_propagates() -> None:
    fake = FakeTime(now=100.0)
    with pytest.raises(asyncio.CancelledError):
        await call_with_retry(
            Flaky(asyncio.CancelledError()), POLICY, sleep=fake.sleep, clock=fake.clock
        )
    assert fake.delays == []


async def test_cancellation_while_backing_off_propagates() -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        started.set()
        await never.wait()

    task = asyncio.create_task(
        call_with_retry(Flaky(NetworkError("x")), POLICY, sleep=blocking_sleep)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------ Redis writes (until_done)


def _redis_errors() -> list[Exception]:
    from redis import exceptions as e  # noqa: PLC0415

    return [
        e.ConnectionError("reset"),
        e.TimeoutError("timed out"),
        e.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        e.BusyLoadingError("Redis is loading the dataset in memory"),
        e.ReadOnlyError("You can't write against a read only replica."),
        e.TryAgainError("Multiple keys request during rehashing of slot"),
        e.ResponseError("CLUSTERDOWN The cluster is down"),
        e.ResponseError("MASTERDOWN Link with MASTER is down"),
        e.ResponseError("BUSY Redis is busy running a script."),
    ]


async def test_until_done_retries_every_transient_redis_error_with_backoff() -> None:
    from metricrelay.retry import redis_full, until_done  # noqa: PLC0415

    errors = _redis_errors()
    calls, slept, seen = [], [], []

    async def operation() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result = await until_done(
        operation, "testing", on_error=seen.append, sleep=sleep, rng=random.Random(1)
    )
    assert result == "done" and len(calls) == len(errors) + 1
    assert seen == errors and len(slept) == len(errors)
    assert all(0 <= s <= 5.0 for s in slept)
    assert [redis_full(e) for e in errors].count(True) == 1


async def test_until_done_raises_what_is_not_transient_at_once() -> None:
    from redis import exceptions  # noqa: PLC0415

    from metricrelay.retry import until_done  # noqa: PLC0415

    async def operation() -> None:
        raise exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(exceptions.ResponseError, match="WRONGTYPE"):
        await until_done(operation, "testing")


def test_until_done_sync_retries_until_it_succeeds_or_is_told_to_stop() -> None:
    from metricrelay.retry import until_done_sync  # noqa: PLC0415

    errors = _redis_errors()[:3]
    slept: list[float] = []

    def flaky() -> int:
        if errors:
            raise errors.pop(0)
        return 7

    assert until_done_sync(flaky, "testing", sleep=slept.append, rng=random.Random(2)) == 7
    assert len(slept) == 3

    def down() -> int:
        raise ConnectionError("refused")

    stopping = iter([False, False, True])
    result = until_done_sync(
        down, "testing", retry_on=lambda e: True, stop=lambda: next(stopping), sleep=slept.append
    )
    assert result is None and len(slept) == 5
