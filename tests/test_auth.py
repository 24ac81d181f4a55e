"""Token providers against a tiny local token service: caching, single flight, 401s, secrecy."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from metricrelay.errors import AuthError, AuthUnavailable, ConfigError
from metricrelay.relay.auth import (
    DEFAULT_LIFETIME_S,
    REFRESH_FRACTION,
    FixedToken,
    NoAuth,
    OAuthClientCredentials,
    TokenProvider,
    build_token_provider,
)
from metricrelay.retry import RetryPolicy, call_with_retry
from metricrelay.settings import Settings

pytestmark = pytest.mark.integration  # a scripted token service on a loopback port

SECRET = "very-secret-client-secret"
CLIENT = "sb-client!b42"

Answer = tuple[int, Any]  # (status, JSON body, or bytes sent as is); status 0 drops the connection


class TokenService:
    """Answers POST /oauth/token; records every form it receives."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.content_types: list[str] = []
        self.answers: deque[Answer] = deque()
        self.expires_in: object = 3600
        self.issued = 0
        self.gate: asyncio.Event | None = None  # when set, answers wait for it
        self.retry_after: str | None = None  # sent with every scripted answer when set
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.forms.append({key: str(value) for key, value in form.items()})
        self.content_types.append(request.content_type)
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.answers:
            status, body = self.answers.popleft()
            if status == 0:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            if isinstance(body, bytes):
                return web.Response(status=status, body=body, headers=headers)
            headers["Location"] = "http://else/"
            return web.json_response(body, status=status, headers=headers)
        self.issued += 1
        answer: dict[str, object] = {"access_token": f"tok-SENSITIVE-{self.issued}"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service() -> AsyncIterator[tuple[TokenService, str]]:
    tokens = TokenService()
    app = web.Application()
    app.router.add_post("/oauth/token", tokens.handle)
    async with TestServer(app, host="127.0.0.1") as server:  # a free port, chosen by the OS
        yield tokens, str(server.make_url("/oauth/token"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def provider(
    session: aiohttp.ClientSession,
    url: str,
    clock: Clock | None = None,
    timeout: float = 5.0,
    retry_after_cap: float = 120.0,
) -> OAuthClientCredentials:
    return OAuthClientCredentials(
        session,
        url,
        CLIENT,
        SecretStr(SECRET),
        clock=clock or Clock(),
        timeout=timeout,
        retry_after_cap=retry_after_cap,
    )


# --------------------------------------------------------------------------- OAuth: the happy path


async def test_client_credentials_are_posted_as_a_form(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    oauth = provider(session, url)
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-1"}
    assert tokens.forms == [
        {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}
    ]
    assert tokens.content_types == ["application/x-www-form-urlencoded"]
    assert oauth.refreshes == 1


async def test_the_token_is_cached_until_the_proportional_margin(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.expires_in = 100
    clock = Clock()
    oauth = provider(session, url, clock)
    first = await oauth.headers()
    clock.now += REFRESH_FRACTION * 100 - 0.001  # just before 80 % of the lifetime
    assert await oauth.headers() == first
    assert len(tokens.forms) == 1
    clock.now += 0.001  # 80 % reached: renewed although 20 s of validity are left
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-2"}
    assert oauth.refreshes == 2


async def test_the_margin_scales_with_the_lifetime(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.expires_in = 43199  # XSUAA's usual answer
    clock = Clock()
    oauth = provider(session, url, clock)
    await oauth.headers()
    clock.now += 9 * 3600  # 9 h in: still cached (a fixed one-hour margin would not matter here)
    await oauth.headers()
    assert oauth.refreshes == 1
    clock.now += 0.7 * 3600  # 9.7 h > 0.8 * 43199 s
    await oauth.headers()
    assert oauth.refreshes == 2


@pytest.mark.parametrize(("expires_in", "lifetime"), [("60", 60.0), (None, DEFAULT_LIFETIME_S)])
async def test_odd_or_missing_expires_in(
    service: tuple[TokenService, str],
    session: aiohttp.ClientSession,
    expires_in: object,
    lifetime: float,
) -> None:
    tokens, url = service
    tokens.expires_in = expires_in
    clock = Clock()
    oauth = provider(session, url, clock)
    await oauth.headers()
    clock.now += REFRESH_FRACTION * lifetime - 0.01
    await oauth.headers()
    assert oauth.refreshes == 1
    clock.now += 0.01
    await oauth.headers()
    assert oauth.refreshes == 2


async def test_twenty_concurrent_callers_cause_one_request(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.gate = asyncio.Event()
    oauth = provider(session, url)
    callers = [asyncio.create_task(oauth.headers()) for _ in range(20)]
    await tokens.arrived.wait()  # the first caller's request is at the server, held there
    tokens.gate.set()
    results = await asyncio.gather(*callers)
    assert results == [{"Authorization": "Bearer tok-SENSITIVE-1"}] * 20
    assert len(tokens.forms) == 1 and oauth.refreshes == 1


# --------------------------------------------------------------------------- OAuth: after a 401


async def test_invalidate_forces_a_new_token(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    oauth = provider(session, url)
    refused = await oauth.headers()
    await oauth.invalidate(refused)
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-2"}
    assert len(tokens.forms) == 2


async def test_many_401s_for_the_same_token_cause_one_refresh(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    oauth = provider(session, url)
    refused = await oauth.headers()

    async def on_401() -> dict[str, str]:
        await oauth.invalidate(refused)
        return await oauth.headers()

    results = await asyncio.gather(*(on_401() for _ in range(20)))
    assert results == [{"Authorization": "Bearer tok-SENSITIVE-2"}] * 20
    assert len(tokens.forms) == 2


async def test_a_late_401_for_an_old_token_keeps_the_new_one(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    oauth = provider(session, url)
    old = await oauth.headers()
    await oauth.invalidate(old)
    new = await oauth.headers()
    await oauth.invalidate(old)  # a request sent with the old token answered late
    assert await oauth.headers() == new
    await oauth.invalidate({})  # a request sent without a token at all
    assert await oauth.headers() == new
    assert len(tokens.forms) == 2


# --------------------------------------------------------------------------- OAuth: failures


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_bad_credentials_are_an_auth_error(
    service: tuple[TokenService, str], session: aiohttp.ClientSession, status: int
) -> None:
    tokens, url = service
    tokens.answers.append(
        (status, {"error": "unauthorized", "error_description": f"Bad credentials {SECRET}"})
    )
    oauth = provider(session, url)
    with pytest.raises(AuthError) as caught:
        await oauth.headers()
    assert type(caught.value) is AuthError and not caught.value.retriable
    message = str(caught.value)
    assert f"HTTP {status}" in message and CLIENT in message and "Bad credentials" in message
    assert SECRET not in message  # even though the server echoed it
    assert (oauth.refreshes, oauth.failures) == (0, 1)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
async def test_a_busy_token_service_is_unavailable(
    service: tuple[TokenService, str], session: aiohttp.ClientSession, status: int
) -> None:
    tokens, url = service
    tokens.answers.append((status, b"<html>busy</html>"))
    oauth = provider(session, url)
    with pytest.raises(AuthUnavailable) as caught:
        await oauth.headers()
    assert caught.value.retriable and f"HTTP {status}" in str(caught.value)
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-1"}  # recovers


async def test_a_busy_token_services_retry_after_holds_every_caller_back(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.answers.append((429, {"error": "slow_down"}))
    tokens.retry_after = "30"
    clock = Clock()
    oauth = provider(session, url, clock)
    with pytest.raises(AuthUnavailable, match="retry after 30s") as caught:
        await oauth.headers()
    assert caught.value.retry_after == 30
    clock.now += 10
    with pytest.raises(AuthUnavailable) as caught:  # not asked again before its time
        await oauth.headers()
    assert caught.value.retry_after == 20
    assert len(tokens.forms) == 1
    clock.now += 21
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-1"}
    assert len(tokens.forms) == 2


async def test_a_token_services_retry_after_is_capped(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.answers.append((503, b""))
    tokens.retry_after = "86400"
    clock = Clock()
    oauth = provider(session, url, clock, retry_after_cap=60)
    with pytest.raises(AuthUnavailable) as caught:
        await oauth.headers()
    assert caught.value.retry_after == 86400  # as said: the retry loop caps its own wait
    clock.now += 61
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-1"}


async def test_the_retry_loop_waits_as_long_as_the_token_service_asks(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    """What the dispatcher does around every attempt (``call_with_retry`` of an attempt that
    starts with ``headers()``): sleep the token service's Retry-After, then one more request."""
    tokens, url = service
    tokens.answers.append((503, b"busy"))
    tokens.retry_after = "7"
    clock = Clock()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        clock.now += delay

    oauth = provider(session, url, clock)
    policy = RetryPolicy(base=0.5, cap=8.0, budget=60.0, retry_after_cap=30.0)
    headers, attempts = await call_with_retry(oauth.headers, policy, sleep=sleep, clock=clock)
    assert headers == {"Authorization": "Bearer tok-SENSITIVE-1"}
    assert attempts == 2 and len(tokens.forms) == 2
    assert slept[0] >= 7  # not the 0-0.5 s of the first backoff step


async def test_a_dropped_connection_is_unavailable(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.answers.append((0, None))
    with pytest.raises(AuthUnavailable, match="unreachable"):
        await provider(session, url).headers()


async def test_a_refused_connection_is_unavailable(session: aiohttp.ClientSession) -> None:
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/oauth/token"))
    await server.close()  # nothing listens there any more
    with pytest.raises(AuthUnavailable, match="unreachable"):
        await provider(session, url).headers()


async def test_a_timeout_is_unavailable(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.gate = asyncio.Event()  # never set: the answer never comes
    with pytest.raises(AuthUnavailable, match="TimeoutError"):
        await provider(session, url, timeout=0.05).headers()
    tokens.gate.set()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((200, {"token_type": "bearer", "expires_in": 60}), "without an access_token"),
        ((200, {"access_token": "", "expires_in": 60}), "without an access_token"),
        ((200, ["tok"]), "without an access_token"),
        ((200, b"not json"), "without a JSON body"),
        ((302, {}), "HTTP 302"),
        ((404, {}), "HTTP 404"),
    ],
)
async def test_unusable_answers_are_auth_errors(
    service: tuple[TokenService, str],
    session: aiohttp.ClientSession,
    answer: Answer,
    expected: str,
) -> None:
    tokens, url = service
    tokens.answers.append(answer)
    with pytest.raises(AuthError, match=expected) as caught:
        await provider(session, url).headers()
    assert type(caught.value) is AuthError
    assert len(tokens.forms) == 1  # a redirect is not followed with the secret


async def test_waiters_share_a_failed_refresh(
    service: tuple[TokenService, str], session: aiohttp.ClientSession
) -> None:
    tokens, url = service
    tokens.gate = asyncio.Event()
    tokens.answers.append((503, b""))
    oauth = provider(session, url)
    callers = [asyncio.create_task(oauth.headers()) for _ in range(10)]
    await tokens.arrived.wait()
    tokens.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, AuthUnavailable) for result in results)
    assert len(tokens.forms) == 1  # not one request per waiting caller
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-1"}  # next call tries


# --------------------------------------------------------------------------- secrecy


async def test_neither_secret_nor_token_is_ever_logged(
    service: tuple[TokenService, str],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens, url = service
    caplog.set_level(logging.DEBUG)
    tokens.expires_in = None  # also exercises the warning about a missing expires_in
    oauth = provider(session, url)
    first = await oauth.headers()
    await oauth.invalidate(first)
    tokens.answers.append((401, {"error": "invalid_client", "error_description": SECRET}))
    with pytest.raises(AuthError):
        await oauth.headers()
    tokens.answers.append((503, {"error": f"echo {SECRET} {first['Authorization']}"}))
    with pytest.raises(AuthUnavailable) as caught:
        await oauth.headers()
    assert await oauth.headers() == {"Authorization": "Bearer tok-SENSITIVE-2"}

    assert caplog.records  # something was logged, and none of it is sensitive
    for text in (caplog.text, repr(oauth), str(caught.value)):
        assert SECRET not in text and "tok-SENSITIVE" not in text
    fixed = FixedToken(SecretStr("tok-SENSITIVE-fixed"))
    await fixed.invalidate(await fixed.headers())
    assert "tok-SENSITIVE" not in caplog.text + repr(fixed)


# --------------------------------------------------------------------------- the simple providers


async def test_no_auth_sends_an_empty_authorization_header(
    session: aiohttp.ClientSession,
) -> None:
    seen: list[str | None] = []

    async def metrics(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_patch("/api/v1/metrics", metrics)
    no_auth = NoAuth()
    async with TestServer(app, host="127.0.0.1") as server:
        headers = await no_auth.headers()
        async with session.patch(server.make_url("/api/v1/metrics"), headers=headers) as answer:
            assert answer.status == 204
    assert seen == [""]  # present and empty, as SAP's SDK sends it in-cluster
    await no_auth.invalidate(headers)
    assert await no_auth.headers() == {"Authorization": ""}


@pytest.mark.parametrize("value", ["abc.def", "Bearer abc.def", "  bearer abc.def "])
async def test_fixed_token(value: str) -> None:
    fixed = FixedToken(SecretStr(value))
    headers = await fixed.headers()
    assert headers == {"Authorization": "Bearer abc.def"}
    await fixed.invalidate(headers)
    assert await fixed.headers() == headers  # nothing to renew


@pytest.mark.parametrize("value", ["", "   ", "Bearer "])
def test_an_empty_fixed_token_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError):
        FixedToken(SecretStr(value))


async def test_build_token_provider_follows_the_auth_mode(session: aiohttp.ClientSession) -> None:
    api = {"METRICRELAY_API_URL": "https://api.example.com/v2"}
    oauth_env = {
        **api,
        "AICORE_AUTH_URL": "https://auth.example.com",
        "AICORE_CLIENT_ID": CLIENT,
        "AICORE_CLIENT_SECRET": SECRET,
    }
    cases: list[tuple[dict[str, str], type[TokenProvider]]] = [
        ({"AICORE_TRACKING_ENDPOINT": "http://t:1", "AICORE_EXECUTION_ID": "exec-1"}, NoAuth),
        ({**api, "METRICRELAY_TOKEN": "t"}, FixedToken),
        (oauth_env, OAuthClientCredentials),
    ]
    for env, kind in cases:
        assert type(build_token_provider(Settings.from_sources(env=env), session)) is kind
    built = build_token_provider(Settings.from_sources(env=oauth_env), session)
    assert isinstance(built, OAuthClientCredentials)
    assert built.token_url == "https://auth.example.com/oauth/token"
    with pytest.raises(ConfigError):
        build_token_provider(Settings.from_sources(env=api), session)
