"""Delivery at its edges: a gateway's unusual 5xx, a token renewal that fails while the token
in hand is still good, and a Retry-After too long for a float."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from tests.support.dispatching import FakeTokens, body_of
from tests.support.fake_time import FakeTime
from tests.support.scripted_api import ScriptedApi

from metricrelay.errors import AuthUnavailable, RetriableDelivery
from metricrelay.keys import Keys
from metricrelay.relay.auth import OAuthClientCredentials
from metricrelay.relay.dispatch import Dispatcher
from metricrelay.retry import RetryPolicy, call_with_retry, parse_retry_after

KEYS = Keys()
POLICY = RetryPolicy(base=0.5, cap=8.0, budget=60.0, retry_after_cap=30.0)


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- 1. unlisted 5xx


@pytest.mark.parametrize("status", [507, 520, 522, 524])
async def test_a_gateway_5xx_is_retried_not_dead_lettered_as_rejected(
    session: aiohttp.ClientSession, scripted_api: ScriptedApi, status: int
) -> None:
    """CONTRACT: 408/429/5xx/network → jittered backoff; `rejected` is for other 4xx only. A
    5xx a gateway answers (507, Cloudflare's 520-524, …) is retried (only 500/502/503/504
    once were, and the others dead-lettered the whole body at once as `rejected`)."""
    answers = iter([(status, {}, b"gateway trouble"), (204, {}, b"")])
    scripted_api.answer = lambda doc, headers: next(answers)
    fake = FakeTime()
    dispatcher = Dispatcher(
        session,
        scripted_api.url,
        FakeTokens(),
        POLICY,
        timeout=5.0,
        sleep=fake.sleep,
        clock=fake.clock,
        rng=random.Random(7),
    )
    delivery = await dispatcher.deliver(body_of(3))
    assert [(f.reason, f.status) for f in delivery.failures] == []
    assert len(scripted_api.accepted) == 1


# --------------------------------------------------------------------------- 2. early refresh


class FlakyTokenService:
    """Issues tokens valid ``expires_in`` seconds; answers 503 while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.issued = 0
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.post()
        if self.down:
            return web.Response(status=503, text="maintenance")
        self.issued += 1
        return web.json_response({"access_token": f"tok-{self.issued}", "expires_in": 100})


@pytest.fixture
async def token_service() -> AsyncIterator[tuple[FlakyTokenService, str]]:
    service = FlakyTokenService()
    app = web.Application()
    app.router.add_post("/oauth/token", service.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield service, str(server.make_url("/oauth/token"))


@pytest.mark.integration  # a token service on a loopback port
async def test_a_failed_early_refresh_keeps_the_token_that_is_still_valid(
    session: aiohttp.ClientSession, token_service: tuple[FlakyTokenService, str]
) -> None:
    """The token is renewed after 80 % of its lifetime so that renewal can fail without an
    outage: while it fails, the token in hand is used (up to 95 % of its life), renewal tried
    again every few seconds, not on every call. (A failed renewal once stalled every delivery
    with a token good for 2.4 more hours of an XSUAA token's life.)"""
    service, url = token_service
    now = [1000.0]
    oauth = OAuthClientCredentials(
        session, url, "client", SecretStr("secret"), clock=lambda: now[0], timeout=5.0
    )
    assert await oauth.headers() == {"Authorization": "Bearer tok-1"}  # valid until 1100
    now[0] = 1085.0  # past the renewal point (1080), 15 s before the token expires
    service.down = True
    assert await oauth.headers() == {"Authorization": "Bearer tok-1"}
    assert service.requests == 2  # a renewal was attempted
    assert await oauth.headers() == {"Authorization": "Bearer tok-1"}
    assert service.requests == 2  # and not again at once
    now[0] = 1091.0  # later: tried again, still down, the token still in use
    assert await oauth.headers() == {"Authorization": "Bearer tok-1"}
    assert service.requests == 3
    now[0] = 1096.0  # past 95 % of its life: no token to fall back on
    with pytest.raises(AuthUnavailable):
        await oauth.headers()
    service.down = False
    now[0] = 1102.0
    assert await oauth.headers() == {"Authorization": "Bearer tok-2"}


# --------------------------------------------------------------------------- 4. huge Retry-After


async def test_a_huge_retry_after_is_capped_not_ignored() -> None:
    """A delay-seconds Retry-After too large for a float (inf) is capped by retry_after_cap
    like any long one (it was once dropped, and the retry came after the short backoff)."""
    retry_after = parse_retry_after("9" * 400, datetime.now(UTC))
    fake = FakeTime()
    answers = [RetriableDelivery("HTTP 503", status=503, retry_after=retry_after)]

    async def operation() -> str:
        if answers:
            raise answers.pop()
        return "ok"

    await call_with_retry(
        operation, POLICY, sleep=fake.sleep, clock=fake.clock, rng=random.Random(1)
    )
    assert fake.delays == [POLICY.retry_after_cap]
