"""The dispatcher against a scripted HTTP peer: statuses, retries, 413 halving, 400 bisection."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import orjson
import pytest
from tests.support.dispatching import FakeTokens, body_of
from tests.support.fake_time import FakeTime
from tests.support.scripted_api import ScriptedApi

from metricrelay.deadletter import Reason
from metricrelay.relay.batching import Body
from metricrelay.relay.dispatch import Dispatcher
from metricrelay.retry import RetryPolicy

pytestmark = pytest.mark.integration  # a scripted HTTP server on a loopback port

ERROR = orjson.dumps({"error": {"code": "x", "message": "bad", "requestId": "r", "target": "/"}})


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def dispatcher(
    session: aiohttp.ClientSession, api: ScriptedApi, fake_time: FakeTime, **kwargs: Any
) -> Dispatcher:
    return Dispatcher(
        session,
        api.url,
        kwargs.pop("tokens", FakeTokens()),
        RetryPolicy(base=0.5, cap=8.0, budget=60.0, retry_after_cap=30.0),
        timeout=5.0,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        rng=random.Random(7),
        **kwargs,
    )


async def test_accepted_body_sends_headers_and_exact_bytes(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    body = body_of(3, tags=1)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body)
    assert delivery.failures == []
    assert delivery.requests == 1
    [(document, headers)] = scripted_api.requests
    assert document == orjson.loads(body.encode())
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["AI-Resource-Group"] == "team-a"
    assert headers["Authorization"] == "Bearer token-1"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 0])
async def test_transient_failures_are_retried_with_backoff(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime, status: int
) -> None:
    answers = iter([(status, {}, b"busy"), (status, {}, b"busy"), (204, {}, b"")])
    scripted_api.answer = lambda doc, headers: next(answers)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(2))
    assert delivery.failures == []
    assert delivery.retries == 2
    assert len(scripted_api.accepted) == 1
    assert len(fake_time.delays) == 2
    assert 0 <= fake_time.delays[0] <= 0.5 and 0 <= fake_time.delays[1] <= 1.0  # full jitter


async def test_retry_after_is_honoured_and_capped(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    answers = iter(
        [(429, {"Retry-After": "7"}, b""), (503, {"Retry-After": "600"}, b""), (204, {}, b"")]
    )
    scripted_api.answer = lambda doc, headers: next(answers)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(1))
    assert delivery.failures == []
    assert fake_time.delays[0] >= 7
    assert fake_time.delays[1] == 30.0  # capped at retry_after_cap


async def test_budget_spent_means_exhausted(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (503, {}, ERROR)
    body = body_of(4)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body)
    [failure] = delivery.failures
    assert failure.reason is Reason.EXHAUSTED
    assert failure.status == 503
    assert failure.body is body
    assert failure.attempts == delivery.requests > 3
    assert fake_time.now - 1000.0 <= 60.0  # never slept past the budget
    assert scripted_api.accepted == []


async def test_413_splits_in_halves_and_learns(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (
        (413, {}, ERROR) if len(doc.get("metrics", [])) > 3 else (204, {}, b"")
    )
    learned: list[Body] = []
    body = body_of(10)
    delivery = await dispatcher(
        session, scripted_api, fake_time, on_too_large=learned.append
    ).deliver(body)
    assert delivery.failures == []
    sent = [m["name"] for doc in scripted_api.accepted for m in doc["metrics"]]
    assert sent == [f"m{i}" for i in range(10)]  # every metric once, in order
    assert all(len(doc["metrics"]) <= 3 for doc in scripted_api.accepted)
    assert delivery.splits == 3  # 10 → 5+5 → (2+3)+(2+3)
    assert learned and learned[0] is body


async def test_a_single_item_still_too_large_is_dead_lettered(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (
        (413, {}, ERROR)
        if any(m["name"] == "m2" for m in doc.get("metrics", []))
        else (204, {}, b"")
    )
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(4))
    [failure] = delivery.failures
    assert failure.reason is Reason.TOO_LARGE
    assert failure.status == 413
    assert [orjson.loads(m)["name"] for m, _ in failure.body.metrics] == ["m2"]
    sent = sorted(m["name"] for doc in scripted_api.accepted for m in doc["metrics"])
    assert sent == ["m0", "m1", "m3"]


async def test_400_bisects_to_the_poisoned_metric(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (
        (400, {}, ERROR)
        if any(m["name"] == "m613" for m in doc.get("metrics", []))
        else (204, {}, b"")
    )
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(1000))
    [failure] = delivery.failures
    assert failure.reason is Reason.REJECTED
    assert failure.status == 400
    assert failure.error == ERROR.decode()
    assert [orjson.loads(m)["name"] for m, _ in failure.body.metrics] == ["m613"]
    sent = [m["name"] for doc in scripted_api.accepted for m in doc["metrics"]]
    assert len(sent) == 999 and "m613" not in sent
    assert delivery.requests <= 2 * 10 + 1  # bisection, not one request per metric


async def test_401_refreshes_the_token_once(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (
        (204, {}, b"") if headers["Authorization"] == "Bearer token-2" else (401, {}, ERROR)
    )
    tokens = FakeTokens()
    delivery = await dispatcher(session, scripted_api, fake_time, tokens=tokens).deliver(body_of(1))
    assert delivery.failures == []
    assert tokens.invalidated == [{"Authorization": "Bearer token-1"}]


async def test_401_after_refresh_is_rejected(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    scripted_api.answer = lambda doc, headers: (401, {}, ERROR)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(1))
    [failure] = delivery.failures
    assert (failure.reason, failure.status, delivery.requests) == (Reason.REJECTED, 401, 2)


@pytest.mark.parametrize("status", [403, 404, 409, 422])
async def test_other_4xx_is_rejected_without_retry(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime, status: int
) -> None:
    scripted_api.answer = lambda doc, headers: (status, {}, ERROR)
    delivery = await dispatcher(session, scripted_api, fake_time).deliver(body_of(5))
    [failure] = delivery.failures
    assert (failure.reason, failure.status, delivery.requests) == (Reason.REJECTED, status, 1)
    assert len(failure.body.metrics) == 5


class PacingLimiter:
    """A limiter that gives every PATCH a turn 0.25 s away; records what it is told."""

    def __init__(self) -> None:
        self.events: list[int | str] = []

    def start_delay(self) -> float:
        self.events.append("turn")
        return 0.25

    def request_started(self) -> None:
        self.events.append("started")

    def request_finished(self, result: int | str, seconds: float) -> None:
        self.events.append(result)


async def test_paced_every_patch_retries_included_first_waits_its_turn(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, fake_time: FakeTime
) -> None:
    answers = iter([(429, {"Retry-After": "1"}, b""), (204, {}, b"")])
    scripted_api.answer = lambda doc, headers: next(answers)
    limiter = PacingLimiter()
    delivery = await dispatcher(session, scripted_api, fake_time, limiter=limiter).deliver(
        body_of(2)
    )
    assert delivery.failures == [] and delivery.retries == 1
    assert limiter.events == ["turn", "started", 429, "turn", "started", 204]
    assert fake_time.delays[0] == 0.25 and fake_time.delays[2] == 0.25  # turn, retry, turn
    assert fake_time.delays[1] >= 1.0  # the Retry-After between them
