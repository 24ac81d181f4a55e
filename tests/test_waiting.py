"""tests.support.waiting: the one way tests wait for a condition, and how it fails."""

from __future__ import annotations

import itertools

import pytest
from tests.support.waiting import until, until_sync


def test_until_sync_returns_the_first_truthy_result() -> None:
    results = iter([None, 0, "", "done"])
    assert until_sync(lambda: next(results), interval=0) == "done"


async def test_until_awaits_a_coroutine_condition_and_takes_a_plain_one() -> None:
    calls = itertools.count(1)

    async def third() -> int | None:
        n = next(calls)
        return n if n >= 3 else None

    assert await until(third, interval=0) == 3
    assert await until(lambda: [1], interval=0) == [1]


async def test_a_condition_never_met_fails_naming_what_was_awaited() -> None:
    pending = ["entry"]
    with pytest.raises(TimeoutError, match=r"^nothing pending: not met within 0s \(last result"):
        await until(lambda: not pending, timeout=0, what="nothing pending")
    with pytest.raises(TimeoutError, match=r"until_sync\(lambda: False, timeout=0\)"):
        until_sync(lambda: False, timeout=0)  # a lambda is named by its source


def test_an_error_in_the_condition_ends_the_wait_at_once() -> None:
    def broken() -> bool:
        raise RuntimeError("the peer died")

    with pytest.raises(RuntimeError, match="the peer died"):
        until_sync(broken, timeout=60)
